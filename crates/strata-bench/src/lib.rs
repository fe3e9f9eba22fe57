//! `strata bench`: an object load generator for any Swift endpoint, and the standard
//! comparison of Strata with OpenStack Swift, qemu-nbd, the raw disk and (optionally)
//! Ceph, in one command.

pub mod block;
pub mod client;
pub mod fio;
pub mod hist;
pub mod load;
pub mod memserver;
pub mod peers;
pub mod procstat;
pub mod report;

use anyhow::{bail, Context, Result};
use load::{Op, RunResult, Workload};
use report::{size_label, Report, KIB, MIB};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `strata bench`: without a subcommand, the standard comparison.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: Option<BenchCommand>,
    #[command(flatten)]
    pub suite: SuiteArgs,
}

#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Drive one workload against any Swift endpoint.
    Load(LoadArgs),
    /// Run the block plan (fio's nbd engine) against any NBD export. The write jobs and the
    /// prefill overwrite the export's data.
    Block(BlockArgs),
}

/// The block plan against a given NBD export.
#[derive(clap::Args, Debug, Clone)]
pub struct BlockArgs {
    /// The export: nbd://host:port/name.
    #[arg(long)]
    pub uri: String,
    /// Bytes of the export the jobs cover, from its start (k/m/g/t suffixes).
    #[arg(long, default_value = "512m", value_parser = parse_region)]
    pub size: u64,
    /// Seconds per job.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub runtime: u64,
    /// Only these jobs (comma-separated; default: the whole plan, in its order).
    #[arg(long, value_delimiter = ',')]
    pub jobs: Vec<String>,
    /// Do not write the region once before the jobs (reads of a fresh export may then
    /// find holes, which servers answer without touching a disk).
    #[arg(long)]
    pub no_prefill: bool,
    /// Server processes whose CPU (with their descendants) is charged per I/O; the server
    /// settles (goes idle) after each job before the next starts.
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,
    /// Longest wait, in seconds, for the server to go idle after each job.
    #[arg(long, default_value_t = 15)]
    pub settle: u64,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The standard comparison: Strata, Swift and the raw disk.
#[derive(clap::Args, Debug, Clone)]
pub struct SuiteArgs {
    /// Fewer, shorter runs (about 2.5 minutes).
    #[arg(long)]
    pub quick: bool,
    /// Results go to <OUT>/<timestamp>/.
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
    /// Scratch directory for the servers' data and fio's file; what is compared shares
    /// its filesystem. Its data is removed at the end.
    #[arg(long, default_value = "/tmp/strata-bench")]
    pub work_dir: PathBuf,
    /// The strata binary to measure (default: this one).
    #[arg(long)]
    pub strata_bin: Option<PathBuf>,
    #[arg(long)]
    pub skip_strata: bool,
    #[arg(long)]
    pub skip_swift: bool,
    #[arg(long)]
    pub skip_fio: bool,
    /// Skip the block workloads (NBD: Strata, qemu-nbd, null; rbd: Ceph).
    #[arg(long)]
    pub skip_block: bool,
    /// Skip only the qemu-nbd and null-co block peers.
    #[arg(long)]
    pub skip_qemu_nbd: bool,
    /// Skip the object workloads (Strata's, Swift's, Ceph's): only the block stage and the
    /// raw disk.
    #[arg(long)]
    pub skip_object: bool,
    /// Also measure a one-node Ceph (Debian's packages, installed when missing): radosgw's
    /// Swift API through the object plan, an rbd image through fio's rbd engine. Adds a
    /// few minutes; its data (a sparse BlueStore file of 12 GiB, 24 GiB for the full
    /// plan) is removed at the end.
    #[arg(long)]
    pub with_ceph: bool,
    /// Replicas of every object, for Strata and Swift alike: each replica gets its own data
    /// file (Strata) or device (Swift) on the work directory's disk, and the raw-disk target
    /// of large PUTs is divided by it. The block stage always measures one replica.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=5))]
    pub replicas: u32,
}

impl SuiteArgs {
    /// The strata binary to measure: `--strata-bin`, or this one.
    fn strata_binary(&self) -> Result<PathBuf> {
        match &self.strata_bin {
            Some(b) => Ok(b.clone()),
            None => Ok(std::env::current_exe()?),
        }
    }
}

/// One workload against a given endpoint.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// TempAuth URL, e.g. http://127.0.0.1:18081/auth/v1.0 (with --user and --key).
    #[arg(long, conflicts_with_all = ["storage_url", "token"])]
    pub auth_url: Option<String>,
    #[arg(long, default_value = "admin:admin")]
    pub user: String,
    #[arg(
        long,
        env = "STRATA_BENCH_KEY",
        hide_env_values = true,
        default_value = ""
    )]
    pub key: String,
    /// A storage URL (http://host:port/v1/AUTH_x), with --token.
    #[arg(long, requires = "token")]
    pub storage_url: Option<String>,
    #[arg(long, env = "STRATA_BENCH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[arg(long, value_enum, default_value = "put")]
    pub op: Op,
    /// Object size: bytes, or with a k/m/g suffix (binary units).
    #[arg(long, default_value = "4k", value_parser = parse_size)]
    pub size: u64,
    #[arg(short, long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: u16,
    /// Seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Stop after this many operations.
    #[arg(long, default_value_t = 1_000_000)]
    pub ops: u64,
    #[arg(long, default_value = "strata-bench")]
    pub container: String,
    /// Objects that GET/HEAD/DELETE use, written first.
    #[arg(long, default_value_t = 256)]
    pub prefill: u64,
    /// Server processes whose CPU (with their descendants) is charged per operation.
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// An object size: `4096`, `4k`, `1m`, `64MiB`, `1g` (at most 1 GiB).
pub fn parse_size(s: &str) -> Result<u64, String> {
    parse_bytes(s, 1024 * MIB)
}

/// A block region: a size as for objects, also with a `t` suffix, a whole number of 4 KiB
/// blocks from 1 MiB to 1 PiB.
pub fn parse_region(s: &str) -> Result<u64, String> {
    let n = parse_bytes(s, 1 << 50)?;
    if n < MIB || n % 4096 != 0 {
        return Err(format!(
            "{s}: a region is at least 1 MiB, in whole 4 KiB blocks"
        ));
    }
    Ok(n)
}

fn parse_bytes(s: &str, max: u64) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.trim_end_matches("ib").trim_end_matches('b');
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], KIB),
        Some('m') => (&t[..t.len() - 1], MIB),
        Some('g') => (&t[..t.len() - 1], 1024 * MIB),
        Some('t') => (&t[..t.len() - 1], 1024 * 1024 * MIB),
        _ => (t, 1),
    };
    let n: u64 = num.trim().parse().map_err(|_| format!("not a size: {s}"))?;
    n.checked_mul(mult)
        .filter(|v| *v <= max)
        .ok_or_else(|| format!("size too large: {s}"))
}

/// Entry point of `strata bench`.
pub fn run(args: BenchArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let work = async {
            match args.command {
                Some(BenchCommand::Load(l)) => run_load(l).await,
                Some(BenchCommand::Block(b)) => tokio::task::spawn_blocking(move || run_block(b))
                    .await
                    .context("the block plan stopped")?,
                None => run_suite(args.suite).await.map(|_| ()),
            }
        };
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        // On a signal the work future is dropped, and with it every started server.
        tokio::select! {
            r = work => r,
            _ = tokio::signal::ctrl_c() => bail!("interrupted"),
            _ = term.recv() => bail!("terminated"),
        }
    })
}

async fn run_load(a: LoadArgs) -> Result<()> {
    let ep = match (&a.auth_url, &a.storage_url, &a.token) {
        (Some(auth), _, _) => client::tempauth(auth, &a.user, &a.key).await?,
        (None, Some(url), Some(token)) => client::Endpoint {
            storage: client::HttpUrl::parse(url)?,
            token: token.clone(),
        },
        _ => bail!("give --auth-url (with --user, --key) or --storage-url with --token"),
    };
    client::ensure_container(&ep, &a.container).await?;
    let prefix = format!("load-{:08x}", rand::random::<u32>());
    let names = if matches!(a.op, Op::Get | Op::Head | Op::Delete) {
        load::prefill(
            &ep,
            &a.container,
            &format!("{prefix}-pre"),
            a.size,
            a.prefill.max(1),
            16,
        )
        .await?
    } else {
        Vec::new()
    };
    let w = Workload {
        op: a.op,
        size: a.size,
        concurrency: a.concurrency as usize,
        duration: Duration::from_secs_f64(a.duration.clamp(0.1, 86_400.0)),
        max_ops: a.ops,
        container: a.container.clone(),
        prefix,
        names: Arc::new(names),
    };
    let (r, _) = load::run("endpoint", &ep, &w, &a.server_pids).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_run(&r);
    }
    Ok(())
}

fn run_block(a: BlockArgs) -> Result<()> {
    let known: Vec<&str> = block::jobs().iter().map(|j| j.name).collect();
    if let Some(bad) = a.jobs.iter().find(|j| !known.contains(&j.as_str())) {
        bail!("no job {bad:?}; the plan has {}", known.join(", "));
    }
    let only = a.jobs.clone();
    let target = block::Target {
        name: "export".into(),
        dev: block::Device::Nbd(a.uri.clone()),
        pids: a.server_pids.clone(),
        prefill: !a.no_prefill,
        runs: Box::new(move |j| only.is_empty() || only.iter().any(|n| n == j.name)),
    };
    let (results, mut failed) = block::run_side_by_side(
        &[target],
        a.size,
        Duration::from_secs(a.runtime),
        Duration::from_secs(a.settle),
    );
    if a.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    }
    match failed.pop() {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}

fn print_run(r: &RunResult) {
    let f = report::fmt_num;
    println!(
        "{:<8} {:<6} {:>7} c{:<3} {:>9} ops/s {:>8} MiB/s  p50 {:>7} p99 {:>7} p99.9 {:>7} ms  errors {}  server CPU {} ms/op  client CPU {} ms/op  load {}",
        r.target,
        r.op.name(),
        if r.op == Op::List {
            String::new()
        } else {
            size_label(r.size)
        },
        r.concurrency,
        f(r.ops_per_s),
        f(r.mib_per_s),
        f(r.lat_p50_ms),
        f(r.lat_p99_ms),
        f(r.lat_p999_ms),
        r.errors,
        r.server_cpu_ms_per_op.map_or("-".into(), f),
        f(r.client_cpu_ms_per_op),
        f(r.load_1m),
    );
    for (k, v) in &r.error_kinds {
        println!("         error x{v}: {k}");
    }
}

/// One step of the standard plan.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    pub op: Op,
    pub size: u64,
    pub concurrency: usize,
    pub seconds: f64,
    pub max_ops: u64,
}

/// The standard comparison, run against each server in this order. Every read follows
/// the write of its size, and reads the objects written so far.
pub fn plan(quick: bool) -> Vec<Step> {
    let (small, mid, big) = if quick {
        (3.0, 3.0, 3.0)
    } else {
        (15.0, 10.0, 10.0)
    };
    let big_conc: &[usize] = if quick { &[1, 4] } else { &[1, 2, 3, 4] };
    let step = |op, size, concurrency, seconds, max_ops| Step {
        op,
        size,
        concurrency,
        seconds,
        max_ops,
    };
    let mut v = Vec::new();
    let pair = |v: &mut Vec<Step>, size, conc, seconds, max_ops| {
        for op in [Op::Put, Op::Get] {
            v.push(step(op, size, conc, seconds, max_ops));
        }
    };
    let small_conc: &[usize] = if quick { &[16, 1] } else { &[16, 1, 64] };
    for &c in small_conc {
        pair(&mut v, 4 * KIB, c, small, 2_000_000);
    }
    // HEAD and listing, then DELETE, which uses up the 4 KiB objects the PUTs wrote.
    for (op, size) in [(Op::Head, 4 * KIB), (Op::List, 0), (Op::Delete, 4 * KIB)] {
        v.push(step(op, size, 16, small, 2_000_000));
    }
    let mid_conc: &[usize] = if quick { &[16] } else { &[16, 1, 64] };
    for &c in mid_conc {
        // At most 4 GiB, and 2 GiB for the runs only the full plan has.
        pair(&mut v, MIB, c, mid, if c == 16 { 4096 } else { 2048 });
    }
    for &c in big_conc {
        // At most 3 GiB written per run.
        pair(&mut v, 64 * MIB, c, big, 48);
    }
    v
}

/// The generator against the in-memory endpoint.
pub fn ceiling_plan(quick: bool) -> Vec<Step> {
    let s = if quick { 2.0 } else { 5.0 };
    let mut v = Vec::new();
    for c in [16, 1] {
        for op in [Op::Put, Op::Get] {
            v.push(Step {
                op,
                size: 4 * KIB,
                concurrency: c,
                seconds: s,
                max_ops: 10_000_000,
            });
        }
    }
    v
}

/// One object endpoint of the plan, and the objects its PUTs wrote so far (per size).
struct ObjectTarget {
    name: &'static str,
    ep: client::Endpoint,
    pids: Vec<u32>,
    written: HashMap<u64, Vec<String>>,
    run_id: String,
}

impl ObjectTarget {
    fn new(name: &'static str, ep: client::Endpoint, pids: Vec<u32>) -> Self {
        ObjectTarget {
            name,
            ep,
            pids,
            written: HashMap::new(),
            run_id: format!("{:08x}", rand::random::<u32>()),
        }
    }

    /// Step `i` of the plan; GET, HEAD and DELETE use what the PUTs of their size wrote
    /// (a few objects are written first when there are none). The server then settles (at
    /// most `settle`), and what it spent settling is charged to the step.
    async fn step(&mut self, i: usize, s: &Step, settle: Duration) -> Result<RunResult> {
        const CONTAINER: &str = "strata-bench";
        if i == 0 {
            client::ensure_container(&self.ep, CONTAINER).await?;
        }
        let pool = self.written.entry(s.size).or_default();
        if matches!(s.op, Op::Get | Op::Head | Op::Delete) && pool.is_empty() {
            let n = if s.size >= 16 * MIB { 4 } else { 64 };
            *pool = load::prefill(
                &self.ep,
                CONTAINER,
                &format!("{}-pre{}", self.run_id, s.size),
                s.size,
                n,
                4,
            )
            .await?;
        }
        let w = Workload {
            op: s.op,
            size: s.size,
            concurrency: s.concurrency,
            duration: Duration::from_secs_f64(s.seconds),
            max_ops: s.max_ops,
            container: CONTAINER.into(),
            prefix: format!("{}-{i}-{}", self.run_id, s.size),
            names: Arc::new(pool.clone()),
        };
        let (mut r, names) = load::run(self.name, &self.ep, &w, &self.pids).await?;
        pool.extend(names);
        let pids = self.pids.clone();
        let (waited, spent) = tokio::task::spawn_blocking(move || {
            let before = procstat::CpuSample::take(&pids);
            let waited = block::settle(&pids, settle);
            (
                waited,
                before.seconds_until(&procstat::CpuSample::take(&pids)),
            )
        })
        .await?;
        if let Some(cpu) = r.server_cpu_ms_per_op.as_mut() {
            *cpu += spent * 1000.0 / r.ops.max(1) as f64;
        }
        r.settle_s = waited.as_secs_f64();
        print_run(&r);
        Ok(r)
    }
}

/// The object plan against every target side by side: each step runs on every target in
/// turn before the next step starts, so a ratio compares runs seconds apart. A target that
/// fails leaves the plan; its error comes back.
async fn run_objects(
    targets: &mut [ObjectTarget],
    steps: &[Step],
    settle: Duration,
    out: &mut Vec<RunResult>,
) -> Vec<(&'static str, anyhow::Error)> {
    let mut failed: Vec<(&'static str, anyhow::Error)> = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        for t in targets.iter_mut() {
            if failed.iter().any(|(n, _)| *n == t.name) {
                continue;
            }
            match t.step(i, s, settle).await {
                Ok(r) => out.push(r),
                Err(e) => failed.push((t.name, e)),
            }
        }
    }
    failed
}

fn machine(work: &Path) -> report::Machine {
    let mem_kb: f64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next()?.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0.0);
    let work = std::fs::canonicalize(work).unwrap_or_else(|_| work.to_path_buf());
    let mut fs = String::from("?");
    let mut best = 0;
    if let Ok(mounts) = std::fs::read_to_string("/proc/mounts") {
        for l in mounts.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() > 2 && work.starts_with(f[1]) && f[1].len() >= best {
                best = f[1].len();
                fs = format!("{} ({} at {})", f[2], f[0], f[1]);
            }
        }
    }
    report::Machine {
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        mem_gib: mem_kb / (1024.0 * 1024.0),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        filesystem_of_work_dir: fs,
        load_1m_at_start: procstat::loadavg_1m(),
    }
}

fn utc_now() -> (String, String) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (now / 86_400, now % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let (hh, mm, ss) = (rem / 3600, rem % 3600 / 60, rem % 60);
    (
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z"),
        format!("{y:04}{m:02}{d:02}-{hh:02}{mm:02}{ss:02}"),
    )
}

fn write_outputs(dir: &Path, r: &Report) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(r)?)?;
    std::fs::write(dir.join("results.md"), r.markdown())?;
    std::fs::write(dir.join("throughput-vs-size.svg"), r.svg_size())?;
    std::fs::write(
        dir.join("throughput-vs-concurrency.svg"),
        r.svg_concurrency(),
    )?;
    if !r.block.is_empty() {
        std::fs::write(dir.join("iops-vs-queue-depth.svg"), r.svg_queue_depth())?;
    }
    Ok(())
}

/// A stage that failed: said on the console and kept as a note of the report (the run goes
/// on).
fn note_failure(rep: &mut Report, what: &str, e: &anyhow::Error) {
    println!("{what}: {e:#}");
    rep.notes.push(format!("{what}: {e:#}"));
}

/// A volume of `region` bytes on the running Strata node, exported over NBD.
fn strata_volume(bin: &Path, peer: &peers::Peer, region: u64) -> Result<block::Device> {
    let (Some(rpc), Some(nbd)) = (&peer.rpc_addr, peer.nbd_port) else {
        bail!("no rpc address or NBD port for the Strata node");
    };
    let o = std::process::Command::new(bin)
        .args([
            "admin",
            "volume",
            "create",
            "bench",
            &region.to_string(),
            "--rpc",
            rpc,
        ])
        .output()
        .context("creating the bench volume")?;
    if !o.status.success() {
        bail!(
            "creating the bench volume: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let uri = format!("nbd://127.0.0.1:{nbd}/bench");
    // The export appears once the node applied the volume record.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let probe = std::process::Command::new("qemu-img")
            .args(["info", "--output=json", &uri])
            .output();
        if probe.is_ok_and(|p| p.status.success()) {
            break;
        }
        if Instant::now() > deadline {
            bail!("{uri} did not appear");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(block::Device::Nbd(uri))
}

/// An rbd image of `region` bytes on the running Ceph, through fio's rbd engine.
fn ceph_block(
    peer: &peers::Peer,
    region: u64,
    runtime: Duration,
    settle: Duration,
    pids: &[u32],
    out: &mut Vec<block::BlockResult>,
) -> Result<()> {
    let conf = peer
        .ceph_conf
        .clone()
        .context("no config file for the Ceph cluster")?;
    let image = peers::create_rbd_image(&conf, region)?;
    let target = block::Target {
        name: "ceph-rbd".into(),
        dev: block::Device::Rbd {
            conf,
            pool: peers::CEPH_RBD_POOL.into(),
            image,
        },
        pids: pids.to_vec(),
        prefill: true,
        runs: Box::new(block::every_job),
    };
    let (results, mut failed) = block::run_side_by_side(&[target], region, runtime, settle);
    out.extend(results);
    match failed.pop() {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}

/// The block stage: a Strata volume, qemu-nbd on a raw file, qemu-nbd over null-co and
/// the raw disk, side by side (each job on every target in turn). Stops what it started.
async fn block_stage(
    a: &SuiteArgs,
    work: &Path,
    region: u64,
    runtime: Duration,
    settle: Duration,
    rep: &mut Report,
) {
    let mut targets = Vec::new();
    let mut guards = Vec::new();
    if !a.skip_strata {
        let r = async {
            let bin = a.strata_binary()?;
            // A fresh node for the volume alone: room for the region, what random writes
            // and relocations hold until they are synced, and a free margin.
            let capacity = (region * 8).max(8 << 30);
            let peer = peers::start_strata(&bin, work, capacity, 1).await?;
            let dev = strata_volume(&bin, &peer, region);
            Ok::<_, anyhow::Error>((peer, dev))
        }
        .await;
        match r {
            Ok((mut peer, Ok(dev))) => {
                targets.push(block::Target {
                    name: "strata".into(),
                    dev,
                    pids: peer.guard.pids(),
                    prefill: true,
                    runs: Box::new(block::every_job),
                });
                guards.push(std::mem::take(&mut peer.guard));
            }
            Ok((mut peer, Err(e))) => {
                peer.guard.stop();
                note_failure(rep, "Strata (block)", &e);
            }
            Err(e) => note_failure(rep, "Strata (block)", &e),
        }
    }
    let qemu_file = work.join("qemu-nbd.raw");
    if !a.skip_qemu_nbd {
        for (name, backing) in [("qemu-nbd", Some(qemu_file.as_path())), ("null", None)] {
            match block::start_qemu_nbd(backing, region) {
                Ok(mut q) => {
                    targets.push(block::Target {
                        name: name.into(),
                        dev: block::Device::Nbd(q.uri.clone()),
                        pids: q.guard.pids(),
                        prefill: backing.is_some(),
                        runs: if backing.is_some() {
                            Box::new(block::every_job)
                        } else {
                            Box::new(block::null_job)
                        },
                    });
                    guards.push(std::mem::take(&mut q.guard));
                }
                Err(e) => note_failure(rep, name, &e),
            }
        }
    }
    let raw_file = work.join("raw-disk.dat");
    if !a.skip_fio {
        targets.push(block::Target {
            name: "raw".into(),
            dev: block::Device::File(raw_file.clone()),
            pids: Vec::new(),
            prefill: true,
            runs: Box::new(block::raw_disk_job),
        });
    }
    let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
    println!("block targets, side by side: {}", names.join(", "));
    let (results, failed) = block::run_side_by_side(&targets, region, runtime, settle);
    for r in results
        .iter()
        .filter(|r| r.settle_s >= settle.as_secs_f64())
    {
        rep.notes.push(format!(
            "{} was still busy {:.0} s after {} ended: the next run started beside it",
            r.target, r.settle_s, r.job
        ));
    }
    rep.block.extend(results);
    for (name, e) in failed {
        note_failure(rep, &name, &e);
    }
    for mut g in guards {
        g.stop();
    }
    let _ = std::fs::remove_dir_all(work.join("strata/data"));
    let _ = std::fs::remove_file(&qemu_file);
    let _ = std::fs::remove_file(&raw_file);
}

/// The standard comparison; returns the results directory.
pub async fn run_suite(a: SuiteArgs) -> Result<PathBuf> {
    let t0 = Instant::now();
    let (started, stamp) = utc_now();
    let dir = a.out.join(&stamp);
    std::fs::create_dir_all(&a.work_dir)
        .with_context(|| format!("creating {}", a.work_dir.display()))?;
    let work = std::fs::canonicalize(&a.work_dir)?;
    let mut rep = Report {
        started,
        quick: a.quick,
        machine: machine(&work),
        replicas: a.replicas,
        ..Default::default()
    };
    println!("strata bench: results in {}", dir.display());

    // 1. The generator's ceiling.
    println!("== generator ceiling (in-memory endpoint)");
    {
        let mem = memserver::MemServer::start().await?;
        let ep = client::tempauth(&mem.auth_url(), memserver::USER, memserver::KEY).await?;
        let mut mem_target = [ObjectTarget::new("ceiling", ep, Vec::new())];
        let plan = ceiling_plan(a.quick);
        if let Some((_, e)) = run_objects(&mut mem_target, &plan, Duration::ZERO, &mut rep.ceiling)
            .await
            .pop()
        {
            return Err(e);
        }
    }
    write_outputs(&dir, &rep)?;

    // 2. The raw disk.
    if !a.skip_fio {
        println!("== raw disk (fio)");
        let (size, secs) = if a.quick {
            (1u64 << 30, 3)
        } else {
            (4u64 << 30, 15)
        };
        match fio::run_all(&work.join("fio"), size, Duration::from_secs(secs)) {
            Ok(f) => {
                for x in &f {
                    println!(
                        "fio {:<24} {:>8} MiB/s {:>8} IOPS p99 {} ms",
                        x.name,
                        report::fmt_num(x.mib_per_s),
                        report::fmt_num(x.iops),
                        report::fmt_num(x.lat_p99_ms)
                    );
                }
                rep.fio = f;
            }
            Err(e) => rep.notes.push(format!("raw disk not measured: {e:#}")),
        }
        write_outputs(&dir, &rep)?;
    }

    let steps = if a.skip_object {
        Vec::new()
    } else {
        plan(a.quick)
    };
    // The settle bounds leave room for Strata to straighten the whole region after a job
    // of random writes (3-5 s for 512 MiB here).
    let (region, block_runtime, block_settle) = if a.quick {
        (512 * MIB, Duration::from_secs(3), Duration::from_secs(8))
    } else {
        (2048 * MIB, Duration::from_secs(10), Duration::from_secs(30))
    };
    // 3. Objects: Strata and OpenStack Swift side by side.
    let object_settle = if a.quick {
        Duration::from_secs(5)
    } else {
        Duration::from_secs(15)
    };
    if !a.skip_object && (!a.skip_strata || !a.skip_swift) {
        println!("== objects: Strata and OpenStack Swift, side by side");
        let mut targets = Vec::new();
        let mut guards = Vec::new();
        let mut adopt = |name, what, started: Result<peers::Peer>, rep: &mut Report| match started {
            Ok(mut peer) => {
                targets.push(ObjectTarget::new(name, peer.endpoint, peer.guard.pids()));
                guards.push(std::mem::take(&mut peer.guard));
            }
            Err(e) => note_failure(rep, what, &e),
        };
        if !a.skip_strata {
            // Each disk holds a replica of everything the plan writes (up to 14 GiB).
            let per_disk = if a.replicas == 1 { 24 << 30 } else { 16 << 30 };
            let started = async {
                peers::start_strata(&a.strata_binary()?, &work, per_disk, a.replicas).await
            };
            adopt("strata", "Strata", started.await, &mut rep);
        }
        if !a.skip_swift {
            let started = peers::start_swift(&work, a.replicas).await;
            adopt("swift", "Swift", started, &mut rep);
        }
        let failed = run_objects(&mut targets, &steps, object_settle, &mut rep.runs).await;
        for (name, e) in failed {
            let what = if name == "swift" { "Swift" } else { "Strata" };
            note_failure(&mut rep, what, &e);
        }
        for mut g in guards {
            g.stop();
        }
        let _ = std::fs::remove_dir_all(work.join("strata/data"));
        peers::clear_swift_devices(&work);
        write_outputs(&dir, &rep)?;
    }

    // 5. Ceph, optional: radosgw's Swift API, then an rbd image.
    if a.with_ceph && !(a.skip_object && a.skip_block) {
        println!("== Ceph (mon, mgr, one BlueStore OSD; radosgw's Swift API, then rbd)");
        let t = Instant::now();
        // The full plan writes up to about 14 GiB of objects.
        let osd_bytes = if a.quick { 12u64 << 30 } else { 24u64 << 30 };
        let started = peers::start_ceph(&work, osd_bytes).await;
        let notes_before = rep.notes.len();
        match started {
            Ok(mut peer) => {
                println!("Ceph: up in {:.0} s", t.elapsed().as_secs_f64());
                let pids = peer.guard.pids();
                if !a.skip_object {
                    let mut ceph = [ObjectTarget::new(
                        "ceph",
                        peer.endpoint.clone(),
                        pids.clone(),
                    )];
                    let failed = run_objects(&mut ceph, &steps, object_settle, &mut rep.runs).await;
                    for (_, e) in failed {
                        note_failure(&mut rep, "Ceph (radosgw)", &e);
                    }
                    write_outputs(&dir, &rep)?;
                }
                if !a.skip_block {
                    let r = ceph_block(
                        &peer,
                        region,
                        block_runtime,
                        block_settle,
                        &pids,
                        &mut rep.block,
                    );
                    if let Err(e) = r {
                        note_failure(&mut rep, "Ceph (rbd)", &e);
                    }
                }
                peer.guard.stop();
            }
            Err(e) => {
                note_failure(&mut rep, "Ceph", &e);
            }
        }
        if rep.notes.len() > notes_before {
            // The data goes, but the logs of a failed stage stay beside the results.
            let logs = dir.join("ceph-log");
            if peers::keep_ceph_logs(&work, &logs).is_ok_and(|n| n > 0) {
                rep.notes
                    .push(format!("Ceph's logs are kept in {}", logs.display()));
            }
        }
        peers::remove_ceph(&work);
        println!("Ceph stage: {:.0} s", t.elapsed().as_secs_f64());
        write_outputs(&dir, &rep)?;
    }

    // 6. Block: Strata, qemu-nbd, the null ceiling and the raw disk, side by side.
    if !a.skip_block {
        println!(
            "== block (fio): Strata, qemu-nbd on a raw file, qemu-nbd over null-co, the raw disk"
        );
        block_stage(&a, &work, region, block_runtime, block_settle, &mut rep).await;
        write_outputs(&dir, &rep)?;
    }

    println!("\n{}", rep.markdown());
    println!(
        "strata bench: done in {:.0} s; results in {}",
        t0.elapsed().as_secs_f64(),
        dir.display()
    );
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("1m"), Ok(MIB));
        assert_eq!(parse_size("64MB"), Ok(64 * MIB));
        assert!(parse_size("x").is_err());
        assert!(parse_size("2048g").is_err());
        assert!(parse_size("2g").is_err(), "objects are at most 1 GiB");
    }

    #[test]
    fn regions_parse() {
        assert_eq!(parse_region("512m"), Ok(512 * MIB));
        assert_eq!(parse_region("2g"), Ok(2048 * MIB));
        assert_eq!(parse_region("1t"), Ok(1 << 40));
        assert!(parse_region("4k").is_err(), "below 1 MiB");
        assert!(parse_region("1048577").is_err(), "not whole blocks");
        assert!(parse_region("2048t").is_err(), "above 1 PiB");
    }

    #[test]
    fn plans_are_bounded() {
        for quick in [true, false] {
            let p = plan(quick);
            assert!(p
                .iter()
                .all(|s| s.max_ops > 0 && s.seconds > 0.0 && s.concurrency <= 64));
            // Every read follows a write of its size, and none follows a DELETE of it.
            for (i, s) in p.iter().enumerate() {
                if matches!(s.op, Op::Get | Op::Head | Op::Delete) {
                    assert!(p[..i].iter().any(|w| w.op == Op::Put && w.size == s.size));
                    assert!(!p[..i]
                        .iter()
                        .any(|w| w.op == Op::Delete && w.size == s.size));
                }
            }
            for op in [Op::Put, Op::Get, Op::Head, Op::Delete, Op::List] {
                assert!(p.iter().any(|s| s.op == op), "{} missing", op.name());
            }
        }
        let full = plan(false);
        for c in [1, 16, 64] {
            for size in [4 * KIB, MIB] {
                assert!(full
                    .iter()
                    .any(|s| s.op == Op::Get && s.size == size && s.concurrency == c));
            }
        }
        let quick: f64 = plan(true).iter().map(|s| s.seconds).sum::<f64>() * 2.0
            + ceiling_plan(true).iter().map(|s| s.seconds).sum::<f64>();
        assert!(quick < 120.0, "quick load time {quick}");
    }

    #[test]
    fn utc_is_formatted() {
        let (iso, stamp) = utc_now();
        assert_eq!(iso.len(), 20);
        assert!(iso.ends_with('Z'));
        assert_eq!(stamp.len(), 15);
    }
}
