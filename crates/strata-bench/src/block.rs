//! Block workloads against any NBD export, driven by fio's `nbd` engine, or against a Ceph
//! rbd image through fio's `rbd` engine: 4 KiB random reads and writes at queue depths 1
//! and 32 (writes also with a FLUSH after every write), and 1 MiB sequential reads and
//! writes. The peers are qemu-nbd serving a raw file in the same filesystem
//! (`--cache=none --aio=io_uring`), a protocol ceiling (qemu-nbd over `null-co`, which
//! stores nothing), the raw disk (the read jobs and the sequential write on a file, fio's
//! `io_uring` engine with O_DIRECT) and, optionally, an rbd image on a one-node Ceph.
//!
//! The targets run side by side: each job runs on every target in turn before the next
//! job starts, so a ratio compares figures taken seconds apart on this shared machine,
//! not minutes.

use crate::peers::{free_port, ProcGuard};
use crate::procstat::{self, CpuSample};
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One fio job of the block plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockJob {
    pub name: &'static str,
    /// fio's `rw`.
    pub rw: &'static str,
    pub block_size: u64,
    pub iodepth: u32,
    /// A FLUSH after every write (fio `fsync=1`).
    pub flush: bool,
}

/// The plan, in order: reads come after the region was written once; the first sequential
/// read sees the prefill's layout, the second what the random writes left, the third what
/// the second left (Strata straightens scattered ranges as it reads them).
pub fn jobs() -> Vec<BlockJob> {
    let j = |name, rw, block_size, iodepth, flush| BlockJob {
        name,
        rw,
        block_size,
        iodepth,
        flush,
    };
    vec![
        j("seqread-1m-qd8-fresh", "read", 1 << 20, 8, false),
        j("randread-4k-qd1", "randread", 4096, 1, false),
        j("randread-4k-qd32", "randread", 4096, 32, false),
        j("randwrite-4k-qd1", "randwrite", 4096, 1, false),
        j("randwrite-4k-qd32", "randwrite", 4096, 32, false),
        j("randwrite-4k-qd1-flush", "randwrite", 4096, 1, true),
        j("randwrite-4k-qd32-flush", "randwrite", 4096, 32, true),
        j("seqread-1m-qd8", "read", 1 << 20, 8, false),
        j("seqread-1m-qd8-reread", "read", 1 << 20, 8, false),
        j("seqwrite-1m-qd8", "write", 1 << 20, 8, false),
    ]
}

/// What fio drives: an NBD export, or an rbd image (through librbd, in fio's process).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Device {
    /// `nbd://host:port/export`.
    Nbd(String),
    /// An image in a pool of the cluster that `conf` describes, as `client.admin`.
    Rbd {
        conf: PathBuf,
        pool: String,
        image: String,
    },
    /// A file, through fio's `io_uring` engine with O_DIRECT: the raw disk.
    File(PathBuf),
}

impl Device {
    /// fio's arguments that select the engine and the device.
    pub fn fio_args(&self) -> Vec<String> {
        match self {
            Device::Nbd(uri) => vec!["--ioengine=nbd".into(), format!("--uri={uri}")],
            Device::Rbd { pool, image, .. } => vec![
                "--ioengine=rbd".into(),
                "--clientname=admin".into(),
                format!("--pool={pool}"),
                format!("--rbdname={image}"),
            ],
            Device::File(path) => vec![
                "--ioengine=io_uring".into(),
                "--direct=1".into(),
                format!("--filename={}", path.display()),
            ],
        }
    }

    /// The environment fio needs (librbd finds the cluster through `CEPH_CONF`).
    pub fn fio_env(&self) -> Vec<(&'static str, String)> {
        match self {
            Device::Nbd(_) | Device::File(_) => Vec::new(),
            Device::Rbd { conf, .. } => vec![("CEPH_CONF", conf.display().to_string())],
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Nbd(uri) => f.write_str(uri),
            Device::Rbd { pool, image, .. } => write!(f, "rbd:{pool}/{image}"),
            Device::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

/// One job against one export.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BlockResult {
    /// `strata`, `qemu-nbd`, `null`, `ceph-rbd`.
    pub target: String,
    pub job: String,
    pub iops: f64,
    pub mib_per_s: f64,
    pub lat_p50_ms: f64,
    pub lat_p99_ms: f64,
    pub lat_p999_ms: f64,
    /// Server CPU (all its processes) per I/O, including what it spent settling.
    pub server_cpu_ms_per_op: Option<f64>,
    pub load_1m: f64,
    /// Seconds the server took after fio ended to go idle (writing back what the job
    /// left in a cache, say) before the next run started.
    #[serde(default)]
    pub settle_s: f64,
}

/// fio's figures for the side of the job that did the I/O.
fn parse(json: &str, rw: &str) -> Result<(f64, f64, f64, f64, f64, f64)> {
    let start = json
        .find('{')
        .ok_or_else(|| anyhow!("no JSON in fio output"))?;
    let v: serde_json::Value = serde_json::from_str(&json[start..])?;
    let side = &v["jobs"][0][if rw.contains("read") { "read" } else { "write" }];
    let bw = side["bw_bytes"]
        .as_f64()
        .ok_or_else(|| anyhow!("no bw_bytes in fio output"))?;
    let pct = |p: &str| side["clat_ns"]["percentile"][p].as_f64().unwrap_or(0.0) / 1e6;
    Ok((
        side["iops"].as_f64().unwrap_or(0.0),
        bw / (1024.0 * 1024.0),
        pct("50.000000"),
        pct("99.000000"),
        pct("99.900000"),
        side["total_ios"].as_f64().unwrap_or(0.0),
    ))
}

fn fio(dev: &Device, j: &BlockJob, size: u64, runtime: Option<Duration>) -> Result<String> {
    let BlockJob {
        name,
        rw,
        block_size: bs,
        iodepth: depth,
        flush,
    } = *j;
    let mut cmd = Command::new("fio");
    cmd.arg(format!("--name={name}"))
        .args(dev.fio_args())
        .envs(dev.fio_env())
        .arg(format!("--size={size}"))
        .arg(format!("--rw={rw}"))
        .arg(format!("--bs={bs}"))
        .arg(format!("--iodepth={depth}"))
        .arg("--randrepeat=0")
        .arg("--output-format=json");
    if let Some(t) = runtime {
        cmd.arg(format!("--runtime={}", t.as_secs().max(1)))
            .arg("--time_based");
    }
    if flush {
        cmd.arg("--fsync=1");
    }
    let o = cmd
        .stdin(Stdio::null())
        .output()
        .context("running fio (install it: apt-get install -y fio)")?;
    if !o.status.success() {
        bail!(
            "fio {name} against {dev} failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// One export (or file) the block plan runs against.
pub struct Target {
    /// `strata`, `qemu-nbd`, `null`, `raw`, `ceph-rbd`.
    pub name: String,
    pub dev: Device,
    /// The server's processes (none for a file): their CPU is charged per I/O.
    pub pids: Vec<u32>,
    /// Write the whole region once before the first job (reads must find data, not
    /// holes); the null device stores nothing and needs none.
    pub prefill: bool,
    /// Which jobs of the plan it runs.
    pub runs: Box<dyn Fn(&BlockJob) -> bool + Send>,
}

/// Every job of the plan.
pub fn every_job(_: &BlockJob) -> bool {
    true
}

/// What the null device runs: every job but the second and third sequential reads, which
/// on a device that stores nothing are the first one again.
pub fn null_job(j: &BlockJob) -> bool {
    !matches!(j.name, "seqread-1m-qd8" | "seqread-1m-qd8-reread")
}

/// What the raw disk is measured with: the reads at QD8 and QD32 and the sequential write
/// (random writes to a file go straight to the disk, where the NBD servers' caches differ).
pub fn raw_disk_job(j: &BlockJob) -> bool {
    j.rw != "randwrite" && j.iodepth > 1
}

/// A server is quiet over a window in which it used at most one clock tick of CPU (a tenth
/// of a core at 100 ticks a second)...
const QUIET_WINDOW: Duration = Duration::from_millis(100);
/// ...and idle after this many quiet windows in a row: work a server starts by itself
/// within about 200 ms of going quiet (writing back a cache, straightening what random
/// writes scattered) is waited for.
const QUIET_WINDOWS: u32 = 3;

/// Waits until the processes are idle (see [`QUIET_WINDOWS`]), at most `max`; returns how
/// long it waited.
pub fn settle(pids: &[u32], max: Duration) -> Duration {
    let t = Instant::now();
    if pids.is_empty() {
        return Duration::ZERO;
    }
    let tick = 1.0 / procstat::ticks_per_second();
    let mut quiet = 0;
    let mut a = CpuSample::take(pids);
    loop {
        std::thread::sleep(QUIET_WINDOW);
        let b = CpuSample::take(pids);
        if a.seconds_until(&b) <= tick + 1e-9 {
            quiet += 1;
        } else {
            quiet = 0;
        }
        if quiet >= QUIET_WINDOWS || t.elapsed() >= max {
            return t.elapsed();
        }
        a = b;
    }
}

/// Runs the plan against every target side by side (progress on stderr): each job runs on
/// every target in turn before the next job starts, and after each run the server settles (its CPU goes
/// idle, at most `settle_max`) before the next run starts; the CPU it spent settling is
/// charged to the job that left it busy. A target that fails leaves the plan; its error
/// comes back beside the results.
pub fn run_side_by_side(
    targets: &[Target],
    region: u64,
    runtime: Duration,
    settle_max: Duration,
) -> (Vec<BlockResult>, Vec<(String, anyhow::Error)>) {
    let mut out = Vec::new();
    let mut failed: Vec<(String, anyhow::Error)> = Vec::new();
    let fill = BlockJob {
        name: "prefill",
        rw: "write",
        block_size: 1 << 20,
        iodepth: 8,
        flush: false,
    };
    for t in targets.iter().filter(|t| t.prefill) {
        let started = Instant::now();
        match fio(&t.dev, &fill, region, None) {
            Ok(_) => {
                let waited = settle(&t.pids, settle_max);
                eprintln!(
                    "{:<8} prefilled {} MiB in {:.1} s (settled in {:.1} s)",
                    t.name,
                    region >> 20,
                    started.elapsed().as_secs_f64(),
                    waited.as_secs_f64()
                );
            }
            Err(e) => failed.push((t.name.clone(), e)),
        }
    }
    for j in jobs() {
        for t in targets {
            if !(t.runs)(&j) || failed.iter().any(|(n, _)| *n == t.name) {
                continue;
            }
            match run_job(t, &j, region, runtime, settle_max) {
                Ok(r) => out.push(r),
                Err(e) => failed.push((t.name.clone(), e)),
            }
        }
    }
    (out, failed)
}

/// One job against one target, then the settling.
fn run_job(
    t: &Target,
    j: &BlockJob,
    region: u64,
    runtime: Duration,
    settle_max: Duration,
) -> Result<BlockResult> {
    let before = CpuSample::take(&t.pids);
    let json = fio(&t.dev, j, region, Some(runtime))?;
    let load_1m = procstat::loadavg_1m();
    let waited = settle(&t.pids, settle_max);
    let after = CpuSample::take(&t.pids);
    let (iops, mib_per_s, p50, p99, p999, ios) = parse(&json, j.rw)?;
    let cpu = before.seconds_until(&after);
    let r = BlockResult {
        target: t.name.clone(),
        job: j.name.into(),
        iops,
        mib_per_s,
        lat_p50_ms: p50,
        lat_p99_ms: p99,
        lat_p999_ms: p999,
        server_cpu_ms_per_op: (!t.pids.is_empty() && ios > 0.0).then(|| cpu * 1000.0 / ios),
        load_1m,
        settle_s: waited.as_secs_f64(),
    };
    eprintln!(
        "{:<8} {:<24} {:>9} IOPS {:>8} MiB/s  p50 {:>7} p99 {:>7} p99.9 {:>7} ms  server CPU {} ms/op  settled {:.1} s",
        r.target,
        r.job,
        crate::report::fmt_num(r.iops),
        crate::report::fmt_num(r.mib_per_s),
        crate::report::fmt_num(r.lat_p50_ms),
        crate::report::fmt_num(r.lat_p99_ms),
        crate::report::fmt_num(r.lat_p999_ms),
        r.server_cpu_ms_per_op
            .map_or("-".into(), crate::report::fmt_num),
        r.settle_s,
    );
    Ok(r)
}

/// A started qemu-nbd: its export URI and its process.
pub struct QemuNbd {
    pub uri: String,
    pub guard: ProcGuard,
}

/// qemu-nbd serving `file` (created with `size` bytes) with O_DIRECT and io_uring, or the
/// `null-co` driver when `file` is None.
pub fn start_qemu_nbd(file: Option<&Path>, size: u64) -> Result<QemuNbd> {
    let port = free_port()?;
    let mut cmd = Command::new("qemu-nbd");
    cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--export-name", "bench", "--persistent", "--shared", "16"]);
    match file {
        Some(f) => {
            let fh = std::fs::File::create(f)?;
            fh.set_len(size)?;
            cmd.args([
                "--format",
                "raw",
                "--cache",
                "none",
                "--aio",
                "io_uring",
                "--discard",
                "unmap",
            ])
            .arg(f);
        }
        None => {
            cmd.arg("--image-opts")
                .arg(format!("driver=null-co,size={size},read-zeroes=on"));
        }
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-nbd (install qemu-utils)")?;
    let mut guard = ProcGuard::default();
    guard.push(child);
    // Ready when it accepts connections.
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("qemu-nbd did not listen on port {port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(QemuNbd {
        uri: format!("nbd://127.0.0.1:{port}/bench"),
        guard,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_covers_the_workloads() {
        let j = jobs();
        assert!(j.iter().any(|j| j.rw == "randread" && j.iodepth == 32));
        assert!(j
            .iter()
            .any(|j| j.rw == "randwrite" && j.iodepth == 32 && j.flush));
        assert!(j.iter().any(|j| j.rw == "read" && j.block_size == 1 << 20));
        assert!(j.iter().all(|j| j.iodepth == 1 || j.iodepth >= 8));
    }

    #[test]
    fn devices_select_fio_engines() {
        let nbd = Device::Nbd("nbd://127.0.0.1:10809/bench".into());
        assert_eq!(
            nbd.fio_args(),
            ["--ioengine=nbd", "--uri=nbd://127.0.0.1:10809/bench"]
        );
        assert!(nbd.fio_env().is_empty());
        let rbd = Device::Rbd {
            conf: "/w/ceph/ceph.conf".into(),
            pool: "bench-rbd".into(),
            image: "bench".into(),
        };
        assert_eq!(
            rbd.fio_args(),
            [
                "--ioengine=rbd",
                "--clientname=admin",
                "--pool=bench-rbd",
                "--rbdname=bench"
            ]
        );
        assert_eq!(
            rbd.fio_env(),
            [("CEPH_CONF", "/w/ceph/ceph.conf".to_string())]
        );
        assert_eq!(rbd.to_string(), "rbd:bench-rbd/bench");
        let file = Device::File("/w/raw.dat".into());
        assert_eq!(
            file.fio_args(),
            ["--ioengine=io_uring", "--direct=1", "--filename=/w/raw.dat"]
        );
        assert!(file.fio_env().is_empty());
    }

    #[test]
    fn the_raw_disk_runs_reads_and_the_sequential_write() {
        let raw: Vec<&str> = jobs()
            .into_iter()
            .filter(raw_disk_job)
            .map(|j| j.name)
            .collect();
        assert!(raw.contains(&"seqwrite-1m-qd8"));
        assert!(raw.contains(&"randread-4k-qd32"));
        assert!(!raw.contains(&"randread-4k-qd1"));
        assert!(raw.iter().all(|n| !n.starts_with("randwrite")));
        assert_eq!(jobs().into_iter().filter(every_job).count(), jobs().len());
        let null: Vec<&str> = jobs()
            .into_iter()
            .filter(null_job)
            .map(|j| j.name)
            .collect();
        assert_eq!(null.len(), jobs().len() - 2);
        assert!(null.contains(&"seqread-1m-qd8-fresh") && !null.contains(&"seqread-1m-qd8"));
    }

    #[test]
    fn a_process_with_nothing_to_do_settles_at_once() {
        assert_eq!(settle(&[], Duration::from_secs(5)), Duration::ZERO);
        let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
        let waited = settle(&[sleeper.id()], Duration::from_secs(5));
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        assert!(waited >= QUIET_WINDOW * QUIET_WINDOWS, "{waited:?}");
        assert!(waited < Duration::from_secs(2), "{waited:?}");
    }

    #[test]
    fn a_busy_process_is_waited_for_up_to_the_limit() {
        let mut spinner = Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .unwrap();
        let waited = settle(&[spinner.id()], Duration::from_millis(600));
        let _ = spinner.kill();
        let _ = spinner.wait();
        assert!(waited >= Duration::from_millis(600), "{waited:?}");
        assert!(waited < Duration::from_secs(3), "{waited:?}");
    }

    #[test]
    fn parses_fio_json() {
        let json = r#"notice
{"jobs":[{"jobname":"x","read":{"bw_bytes":4194304,"iops":1024,"total_ios":2048,
"clat_ns":{"percentile":{"50.000000":100000,"99.000000":2000000,"99.900000":3000000}}},
"write":{"bw_bytes":0,"iops":0}}]}"#;
        let (iops, mib, p50, p99, p999, ios) = parse(json, "randread").unwrap();
        assert_eq!((iops, mib, ios), (1024.0, 4.0, 2048.0));
        assert_eq!((p50, p99, p999), (0.1, 2.0, 3.0));
        assert!(parse("no json", "read").is_err());
    }
}
