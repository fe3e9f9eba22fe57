//! Crash test: a child process writes chunks, records and volume blocks concurrently and reports every
//! acknowledged write; it is killed with SIGKILL at a random moment, and the parent reopens the
//! disk and checks every acknowledged write survived byte for byte. Repeated on the same
//! directory, so each round also recovers from the previous round's crash.
//!
//! The child is this test binary re-executed with `STRATA_DISK_CRASH_CHILD` set, running only
//! `crash_child_writer`.

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use strata_disk::{Disk, DiskConfig, DiskError, Record, Tally};
use strata_types::{ChunkId, CHUNK_SIZE_BYTES_MAX};

const CHILD_ENV: &str = "STRATA_DISK_CRASH_CHILD";
const ROUNDS: u64 = 15;
const TASKS: u64 = 8;
const CHUNK_IDS: u64 = 240;
const RECORD_KEYS: u64 = 80;
const CAPACITY: u64 = 256 << 20;
/// Volume blocks each task owns (tasks never share a block, so one op per block is in flight).
const BLOCKS_PER_TASK: u64 = 32;
const VOLUME: u64 = 42;

fn chunk_id(n: u64) -> ChunkId {
    let mut h = blake3::Hasher::new();
    h.update(b"crash-test-chunk").update(&n.to_le_bytes());
    ChunkId(*h.finalize().as_bytes())
}

/// Deterministic content of version `ver` of chunk `n`.
fn content(n: u64, ver: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(&n.to_le_bytes())
        .update(&ver.to_le_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

fn record_key(k: u64) -> Vec<u8> {
    format!("rec/{k:04}").into_bytes()
}

/// Record `k` as written at `ts`: live ones count in the tally group `rec/`, weighing a
/// number derived from `k` and `ts`.
fn record(k: u64, ts: u64, tombstone: bool) -> Record {
    if tombstone {
        return Record::tombstone(ts);
    }
    Record {
        timestamp: ts,
        value: Some(format!("value of {k} at {ts}").into_bytes()),
        tally: Some(Tally {
            group_len: TALLY_GROUP.len() as u32,
            weight: record_weight(k, ts),
        }),
    }
}

const TALLY_GROUP: &[u8] = b"rec/";

fn record_weight(k: u64, ts: u64) -> u64 {
    (k * 7919 + ts) % 100_000
}

/// Deterministic content of volume block `b` as written at `stamp`.
fn block_content(b: u64, stamp: u64) -> Vec<u8> {
    content(b | 1 << 63, stamp, 4096)
}

fn config(dir: &Path, round: u64) -> DiskConfig {
    DiskConfig {
        dir: dir.to_path_buf(),
        device: None,
        capacity_bytes: CAPACITY,
        // Odd rounds crash the pread/pwrite backend, even rounds io_uring.
        force_syscall_io: round & 1 == 1,
        read_cache_bytes: strata_disk::READ_CACHE_BYTES_DEFAULT,
        straighten_idle_ms: strata_disk::STRAIGHTEN_IDLE_MS_DEFAULT,
    }
}

fn pick_len(rng: &mut impl Rng) -> usize {
    match rng.gen_range(0..100) {
        0..=29 => rng.gen_range(0..=4096),
        30..=59 => rng.gen_range(4097..65_536),
        60..=84 => rng.gen_range(65_536..262_144),
        85..=96 => rng.gen_range(262_144..=(1 << 20) + 3),
        _ => CHUNK_SIZE_BYTES_MAX,
    }
}

/// Writer mode: only does something when started by `crash_survives_sigkill`.
#[test]
fn crash_child_writer() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (dir, round) = spec.rsplit_once('|').expect("spec");
    let round: u64 = round.parse().expect("round");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    let rt = rt.expect("runtime");
    rt.block_on(async move {
        let disk = Disk::open(config(Path::new(dir), round)).expect("open");
        let out = Arc::new(Mutex::new(std::io::stdout()));
        let say = {
            let out = out.clone();
            move |line: String| {
                let mut o = out.lock().unwrap_or_else(|p| p.into_inner());
                // One write per line, flushed before the next operation starts.
                let _ = o.write_all(format!("@{line} .\n").as_bytes());
                let _ = o.flush();
            }
        };
        say("READY".into());
        let mut tasks = Vec::new();
        for task in 0..TASKS {
            let disk = disk.clone();
            let say = say.clone();
            tasks.push(tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(round * 1000 + task);
                let mut counter = 0u64;
                loop {
                    counter += 1;
                    // Unique and increasing across rounds.
                    let stamp = (round + 1) * 1_000_000_000 + counter * TASKS + task;
                    let r = rng.gen_range(0..100);
                    if r < 55 {
                        let n = rng.gen_range(0..CHUNK_IDS / TASKS) * TASKS + task;
                        let len = pick_len(&mut rng);
                        say(format!("S C {n} {stamp} {len}"));
                        match disk
                            .put_chunk(chunk_id(n), Bytes::from(content(n, stamp, len)))
                            .await
                        {
                            Ok(()) => say(format!("A C {n} {stamp} {len}")),
                            Err(DiskError::Full { .. }) => say(format!("F C {n}")),
                            Err(e) => fail(&say, e),
                        }
                    } else if r < 68 {
                        let n = rng.gen_range(0..CHUNK_IDS / TASKS) * TASKS + task;
                        say(format!("S D {n}"));
                        match disk.delete_chunk(chunk_id(n)).await {
                            Ok(()) => say(format!("A D {n}")),
                            Err(e) => fail(&say, e),
                        }
                    } else if r < 85 {
                        let k = rng.gen_range(0..RECORD_KEYS / TASKS) * TASKS + task;
                        // Some writes carry a stale timestamp and must lose to newer ones.
                        let ts = if rng.gen_bool(0.2) {
                            stamp - 900_000_000
                        } else {
                            stamp
                        };
                        let tomb = rng.gen_bool(0.25);
                        let t = if tomb { "t" } else { "v" };
                        say(format!("S R {k} {ts} {t}"));
                        match disk.put_record(&record_key(k), record(k, ts, tomb)).await {
                            Ok(applied) => say(format!("A R {k} {ts} {t} {}", applied as u8)),
                            Err(e) => fail(&say, e),
                        }
                    } else if r < 90 {
                        let k = rng.gen_range(0..RECORD_KEYS / TASKS) * TASKS + task;
                        say(format!("S X {k}"));
                        match disk.remove_record(&record_key(k)).await {
                            Ok(()) => say(format!("A X {k}")),
                            Err(e) => fail(&say, e),
                        }
                    } else {
                        let base = task * BLOCKS_PER_TASK;
                        let first = base + rng.gen_range(0..BLOCKS_PER_TASK);
                        let len = rng.gen_range(1..=8).min(base + BLOCKS_PER_TASK - first);
                        let pick = rng.gen_range(0..100);
                        if pick < 15 {
                            // A read of the whole volume: scattered ranges it finds are
                            // relocated while the other tasks write and trim their blocks.
                            if let Err(e) =
                                disk.read_blocks(VOLUME, 0, TASKS * BLOCKS_PER_TASK).await
                            {
                                fail(&say, e);
                            }
                        } else if pick < 80 {
                            say(format!("S B {first} {len} {stamp}"));
                            let data: Vec<u8> = (first..first + len)
                                .flat_map(|b| block_content(b, stamp))
                                .collect();
                            match disk.write_blocks(VOLUME, first, Bytes::from(data)).await {
                                Ok(()) => say(format!("A B {first} {len} {stamp}")),
                                Err(DiskError::Full { .. }) => say(format!("F B {first} {len}")),
                                Err(e) => fail(&say, e),
                            }
                        } else {
                            say(format!("S T {first} {len}"));
                            match disk.trim_blocks(VOLUME, first, len).await {
                                Ok(()) => say(format!("A T {first} {len}")),
                                Err(e) => fail(&say, e),
                            }
                        }
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

fn fail(say: &impl Fn(String), e: DiskError) -> ! {
    say(format!("E {e}"));
    std::process::exit(3);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkState {
    Absent,
    Present { ver: u64, len: usize },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum RecState {
    Absent,
    Present { ts: u64, tombstone: bool },
}

#[derive(Clone, Copy, Debug)]
enum ChunkOp {
    Put { ver: u64, len: usize },
    Delete,
}

#[derive(Clone, Copy, Debug)]
enum RecOp {
    Put { ts: u64, tombstone: bool },
    Remove,
}

fn apply_rec(state: &RecState, op: RecOp) -> RecState {
    match op {
        RecOp::Remove => RecState::Absent,
        RecOp::Put { ts, tombstone } => match state {
            RecState::Present { ts: cur, .. } if *cur >= ts => state.clone(),
            _ => RecState::Present { ts, tombstone },
        },
    }
}

/// What the parent knows: the definite state of every id at the start of a round, plus the
/// round's acknowledged changes and the one operation per id that may have been in flight.
struct Model {
    /// Per volume block: the stamp of its content, or `None` for a hole.
    blocks: Vec<Option<u64>>,
    block_pending: Vec<Option<Option<u64>>>,
    chunks: Vec<ChunkState>,
    chunk_pending: Vec<Option<ChunkOp>>,
    records: Vec<RecState>,
    rec_pending: Vec<Option<RecOp>>,
    acked: u64,
}

impl Model {
    fn apply_line(&mut self, line: &str) {
        // libtest may print its own text before the first line on the same line.
        let Some(at) = line.find('@') else { return };
        let Some(body) = line[at + 1..].strip_suffix(" .") else {
            return;
        };
        let f: Vec<&str> = body.split(' ').collect();
        let num = |i: usize| -> u64 { f[i].parse().expect("number in child output") };
        match (f[0], f.get(1).copied().unwrap_or("")) {
            ("READY", _) => {}
            ("E", _) => panic!("child writer failed: {body}"),
            ("S", "C") => {
                self.chunk_pending[num(2) as usize] = Some(ChunkOp::Put {
                    ver: num(3),
                    len: num(4) as usize,
                })
            }
            ("S", "D") => self.chunk_pending[num(2) as usize] = Some(ChunkOp::Delete),
            ("A", "C") => {
                let n = num(2) as usize;
                self.chunks[n] = ChunkState::Present {
                    ver: num(3),
                    len: num(4) as usize,
                };
                self.chunk_pending[n] = None;
                self.acked += 1;
            }
            ("A", "D") => {
                let n = num(2) as usize;
                self.chunks[n] = ChunkState::Absent;
                self.chunk_pending[n] = None;
                self.acked += 1;
            }
            ("F", "C") => self.chunk_pending[num(2) as usize] = None,
            ("S", "B") | ("S", "T") | ("A", "B") | ("A", "T") | ("F", "B") => {
                let (first, len) = (num(2), num(3));
                let after = match f[1] {
                    "B" if f[0] != "F" => Some(num(4)),
                    _ => None,
                };
                for b in first..first + len {
                    let b = b as usize;
                    match f[0] {
                        "S" => self.block_pending[b] = Some(after),
                        "A" => {
                            self.blocks[b] = after;
                            self.block_pending[b] = None;
                        }
                        _ => self.block_pending[b] = None,
                    }
                }
                if f[0] == "A" {
                    self.acked += 1;
                }
            }
            ("S", "R") => {
                self.rec_pending[num(2) as usize] = Some(RecOp::Put {
                    ts: num(3),
                    tombstone: f[4] == "t",
                })
            }
            ("S", "X") => self.rec_pending[num(2) as usize] = Some(RecOp::Remove),
            ("A", "R") => {
                let k = num(2) as usize;
                let op = RecOp::Put {
                    ts: num(3),
                    tombstone: f[4] == "t",
                };
                let next = apply_rec(&self.records[k], op);
                let applied = f[5] == "1";
                assert_eq!(
                    applied,
                    next != self.records[k],
                    "LWW decision for key {k}: {body}"
                );
                self.records[k] = next;
                self.rec_pending[k] = None;
                self.acked += 1;
            }
            ("A", "X") => {
                let k = num(2) as usize;
                self.records[k] = RecState::Absent;
                self.rec_pending[k] = None;
                self.acked += 1;
            }
            _ => panic!("unexpected child output: {line}"),
        }
    }
}

async fn verify(dir: &Path, round: u64, model: &mut Model) {
    let disk = Disk::open(config(dir, round + 1)).expect("reopen after crash");
    let mut present = 0u64;
    let mut used_blocks = 0u64;
    for n in 0..CHUNK_IDS as usize {
        let got = disk
            .get_chunk(chunk_id(n as u64))
            .await
            .unwrap_or_else(|e| panic!("round {round}: chunk {n} unreadable: {e}"));
        let mut candidates = vec![model.chunks[n]];
        match model.chunk_pending[n].take() {
            Some(ChunkOp::Put { ver, len }) => candidates.push(ChunkState::Present { ver, len }),
            Some(ChunkOp::Delete) => candidates.push(ChunkState::Absent),
            None => {}
        }
        let actual = candidates.iter().copied().find(|c| match (c, &got) {
            (ChunkState::Absent, None) => true,
            (ChunkState::Present { ver, len }, Some(data)) => {
                data.len() == *len && data[..] == content(n as u64, *ver, *len)[..]
            }
            _ => false,
        });
        let Some(actual) = actual else {
            panic!(
                "round {round}: chunk {n} is {:?} bytes, expected one of {candidates:?}",
                got.map(|d| d.len())
            );
        };
        if let ChunkState::Present { len, .. } = actual {
            present += 1;
            used_blocks += len.div_ceil(4096) as u64;
        }
        model.chunks[n] = actual;
    }
    assert_eq!(
        disk.chunk_ids().unwrap().len() as u64,
        present,
        "round {round}: stray chunks"
    );
    // Taken before the volume is read: a scattered read starts a relocation, whose extent
    // is allocated until it commits.
    let usage = disk.usage();
    let slots = TASKS * BLOCKS_PER_TASK;
    let read = disk
        .read_blocks(VOLUME, 0, slots)
        .await
        .unwrap_or_else(|e| panic!("round {round}: volume blocks unreadable: {e}"));
    for b in 0..slots as usize {
        let got = &read.data[b * 4096..(b + 1) * 4096];
        let mut candidates = vec![model.blocks[b]];
        if let Some(after) = model.block_pending[b].take() {
            candidates.push(after);
        }
        let actual = candidates.iter().copied().find(|c| match c {
            None => !read.present[b],
            Some(stamp) => read.present[b] && got == block_content(b as u64, *stamp).as_slice(),
        });
        let Some(actual) = actual else {
            panic!("round {round}: volume block {b} matches none of {candidates:?}");
        };
        if actual.is_some() {
            used_blocks += 1;
        }
        model.blocks[b] = actual;
    }

    assert_eq!(usage.chunks, present);
    assert_eq!(
        usage.used_bytes,
        used_blocks * 4096,
        "round {round}: space accounting"
    );

    for k in 0..RECORD_KEYS as usize {
        let got = disk
            .get_record(&record_key(k as u64))
            .expect("record readable");
        let mut candidates = vec![model.records[k].clone()];
        if let Some(op) = model.rec_pending[k].take() {
            candidates.push(apply_rec(&model.records[k], op));
        }
        let actual = candidates.iter().find(|c| match (c, &got) {
            (RecState::Absent, None) => true,
            (RecState::Present { ts, tombstone }, Some(r)) => {
                *r == record(k as u64, *ts, *tombstone)
            }
            _ => false,
        });
        let Some(actual) = actual else {
            panic!("round {round}: record {k} is {got:?}, expected one of {candidates:?}");
        };
        model.records[k] = actual.clone();
    }
    // The tally moved with every record change in the same index write: it matches the
    // records that survived, whatever the kill interrupted.
    let (mut live, mut weight) = (0, 0);
    for (k, rec) in model.records.iter().enumerate() {
        if let RecState::Present {
            ts,
            tombstone: false,
        } = rec
        {
            live += 1;
            weight += record_weight(k as u64, *ts);
        }
    }
    let tally = disk.tally(TALLY_GROUP).expect("tally readable");
    assert_eq!(
        (tally.count, tally.weight),
        (live, weight),
        "round {round}: the tally of the records"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    );
    let mut model = Model {
        blocks: vec![None; (TASKS * BLOCKS_PER_TASK) as usize],
        block_pending: vec![None; (TASKS * BLOCKS_PER_TASK) as usize],
        chunks: vec![ChunkState::Absent; CHUNK_IDS as usize],
        chunk_pending: vec![None; CHUNK_IDS as usize],
        records: vec![RecState::Absent; RECORD_KEYS as usize],
        rec_pending: vec![None; RECORD_KEYS as usize],
        acked: 0,
    };
    let started = Instant::now();
    for round in 0..ROUNDS {
        let stderr_path = dir.path().join(format!("child-{round}.stderr"));
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_child_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(
                CHILD_ENV,
                format!("{}|{round}", dir.path().join("disk").display()),
            )
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut lines = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| {
                    let err = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                    panic!("round {round}: child never became ready; stderr:\n{err}")
                });
            let ready = line.contains("@READY .");
            lines.push(line);
            if ready {
                break;
            }
        }
        let run_for = Duration::from_millis(rng.gen_range(100..=600));
        std::thread::sleep(run_for);
        child.kill().unwrap();
        let status = child.wait().unwrap();
        reader.join().unwrap();
        lines.extend(rx.try_iter());
        if status.signal() != Some(libc::SIGKILL) {
            let err = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            panic!("round {round}: child exited on its own ({status}); stderr:\n{err}\n{lines:?}");
        }
        let before = model.acked;
        for line in &lines {
            model.apply_line(line);
        }
        let acked = model.acked - before;
        verify(&dir.path().join("disk"), round, &mut model).await;
        eprintln!(
            "round {round}: killed after {run_for:?}, {acked} acknowledged writes verified \
             ({} chunks present)",
            model
                .chunks
                .iter()
                .filter(|c| matches!(c, ChunkState::Present { .. }))
                .count()
        );
        assert!(
            acked > 0 || round > 0,
            "round {round}: the child acknowledged nothing"
        );
    }
    assert!(
        model.acked > 100,
        "only {} writes acknowledged in all rounds",
        model.acked
    );
    eprintln!("{ROUNDS} crash rounds in {:?}", started.elapsed());
}
