//! The report of one `strata bench` run: JSON, a Markdown summary and SVG plots.

use crate::block::BlockResult;
use crate::fio::FioResult;
use crate::load::{Op, RunResult};
use serde::{Deserialize, Serialize};
use std::fmt::Write;

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * 1024;

/// Everything one run measured.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Report {
    /// UTC start time, `YYYY-MM-DDTHH:MM:SSZ`.
    pub started: String,
    pub quick: bool,
    pub machine: Machine,
    /// Strata's replica count (the raw-disk target divides by it).
    pub replicas: u32,
    /// The generator against the in-memory endpoint.
    pub ceiling: Vec<RunResult>,
    /// Strata, Swift and Ceph (radosgw) runs (`target`: `strata`, `swift`, `ceph`).
    pub runs: Vec<RunResult>,
    pub fio: Vec<FioResult>,
    /// Block workloads: over NBD Strata (one replica), qemu-nbd, the null ceiling; and
    /// Ceph's rbd (`ceph-rbd`) when measured.
    #[serde(default)]
    pub block: Vec<BlockResult>,
    /// Peers that could not be measured, and why.
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Machine {
    pub cores: usize,
    pub mem_gib: f64,
    pub kernel: String,
    pub filesystem_of_work_dir: String,
    /// The 1-minute load average before the first run (other work on the machine).
    pub load_1m_at_start: f64,
}

pub fn size_label(size: u64) -> String {
    if size >= MIB && size.trailing_zeros() >= 20 {
        format!("{} MiB", size / MIB)
    } else if size >= KIB && size.trailing_zeros() >= 10 {
        format!("{} KiB", size / KIB)
    } else {
        format!("{size} B")
    }
}

/// A workload's name: the operation and the object size (a listing has none).
pub fn object_label(op: Op, size: u64) -> String {
    if op == Op::List {
        op.name().to_string()
    } else {
        format!("{} {}", op.name(), size_label(size))
    }
}

/// Small objects are measured in ops/s, large ones in MiB/s.
pub fn is_small(size: u64) -> bool {
    size < MIB
}

fn headline(r: &RunResult) -> f64 {
    if is_small(r.size) {
        r.ops_per_s
    } else {
        r.mib_per_s
    }
}

fn unit(size: u64) -> &'static str {
    if is_small(size) {
        "ops/s"
    } else {
        "MiB/s"
    }
}

/// A figure with 3 significant digits.
pub fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 0.1 {
        format!("{v:.2}")
    } else if a == 0.0 {
        "0".into()
    } else {
        format!("{v:.3}")
    }
}

/// `a / b` as `12.3x`, or `-` when either side is missing.
pub fn fmt_ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{}x", fmt_num(a / b)),
        _ => "-".into(),
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or("-".into(), fmt_num)
}

/// The object servers, in column order: (target, label).
const OBJECT_TARGETS: [(&str, &str); 3] =
    [("strata", "Strata"), ("swift", "Swift"), ("ceph", "Ceph")];

impl Report {
    /// Whether any Ceph figure (radosgw or rbd) is in the report.
    pub fn has_ceph(&self) -> bool {
        self.runs.iter().any(|r| r.target == "ceph")
            || self.block.iter().any(|b| b.target == "ceph-rbd")
    }

    pub fn find(&self, target: &str, op: Op, size: u64, conc: usize) -> Option<&RunResult> {
        self.runs
            .iter()
            .find(|r| r.target == target && r.op == op && r.size == size && r.concurrency == conc)
    }

    /// The best headline figure of `target` for (op, size) over every concurrency.
    pub fn best(&self, target: &str, op: Op, size: u64) -> Option<f64> {
        self.runs
            .iter()
            .filter(|r| r.target == target && r.op == op && r.size == size && r.ops > 0)
            .map(headline)
            .fold(None, |m, v| Some(m.map_or(v, |m: f64| m.max(v))))
    }

    pub fn fio(&self, name: &str) -> Option<&FioResult> {
        self.fio.iter().find(|f| f.name == name)
    }

    /// The best of the named fio jobs' bandwidth (MiB/s).
    fn best_fio(&self, names: &[&str]) -> Option<f64> {
        names
            .iter()
            .filter_map(|n| self.fio(n))
            .map(|f| f.mib_per_s)
            .reduce(f64::max)
    }

    /// The raw-disk figure a workload is compared with, in its headline unit: for large
    /// objects the better of the io_uring and psync sequential figures (the physical limit).
    pub fn raw_disk(&self, op: Op, size: u64) -> Option<f64> {
        match (op, is_small(size)) {
            (Op::Put, true) => self.fio("write-4k-fdatasync-qd1").map(|f| f.iops),
            (Op::Put, false) => self.best_fio(&["seq-write-io_uring", "seq-write-psync"]),
            (Op::Get, false) => self.best_fio(&["seq-read-io_uring", "seq-read-psync"]),
            _ => None,
        }
    }

    /// Every (op, size, concurrency) measured on a server, in run order.
    fn workloads(&self) -> Vec<(Op, u64, usize)> {
        let mut v: Vec<(Op, u64, usize)> = Vec::new();
        for r in &self.runs {
            let k = (r.op, r.size, r.concurrency);
            if !v.contains(&k) {
                v.push(k);
            }
        }
        v
    }

    /// The target checks: (description, measured, pass).
    pub fn targets(&self) -> Vec<(String, String, Option<bool>)> {
        let mut out = Vec::new();
        let k4 = 4 * KIB;
        let m64 = 64 * MIB;
        for op in [Op::Put, Op::Get] {
            let s = self.find("strata", op, k4, 16);
            let w = self.find("swift", op, k4, 16);
            let ratio = match (s, w) {
                (Some(s), Some(w)) if w.ops_per_s > 0.0 => Some(s.ops_per_s / w.ops_per_s),
                _ => None,
            };
            out.push((
                format!("4 KiB {} ops/s at concurrency 16 >= 10x Swift", op.name()),
                ratio.map_or("-".into(), |r| format!("{}x", fmt_num(r))),
                ratio.map(|r| r >= 10.0),
            ));
            let cpu = match (
                s.and_then(|s| s.server_cpu_ms_per_op),
                w.and_then(|w| w.server_cpu_ms_per_op),
            ) {
                (Some(s), Some(w)) if w > 0.0 => Some(s / w),
                _ => None,
            };
            out.push((
                format!(
                    "4 KiB {} server CPU/op at concurrency 16 <= 1/20 of Swift's",
                    op.name()
                ),
                cpu.map_or("-".into(), |r| format!("1/{}", fmt_num(1.0 / r.max(1e-9)))),
                cpu.map(|r| r <= 0.05),
            ));
        }
        for op in [Op::Put, Op::Get] {
            let s = self.best("strata", op, m64);
            let w = self.best("swift", op, m64);
            let ratio = match (s, w) {
                (Some(s), Some(w)) if w > 0.0 => Some(s / w),
                _ => None,
            };
            out.push((
                format!("64 MiB {} MiB/s (best concurrency) >= 3x Swift", op.name()),
                ratio.map_or("-".into(), |r| format!("{}x", fmt_num(r))),
                ratio.map(|r| r >= 3.0),
            ));
            let raw = self
                .raw_disk(op, m64)
                .map(|r| r / self.replicas.max(1) as f64);
            let frac = match (s, raw) {
                (Some(s), Some(r)) if r > 0.0 => Some(s / r),
                _ => None,
            };
            out.push((
                format!(
                    "64 MiB {} MiB/s >= 0.8 of raw disk sequential / replicas",
                    op.name()
                ),
                frac.map_or("-".into(), fmt_num),
                frac.map(|f| f >= 0.8),
            ));
            if op == Op::Put {
                // Every acknowledged PUT is durable: the rate at which this disk makes
                // sequential writes durable is the limit that applies (no pass or fail).
                let durable = match (s, self.fio(crate::fio::DURABLE_SEQ_JOB)) {
                    (Some(s), Some(f)) if f.mib_per_s > 0.0 => {
                        Some(s / (f.mib_per_s / self.replicas.max(1) as f64))
                    }
                    _ => None,
                };
                out.push((
                    format!(
                        "64 MiB PUT MiB/s against the disk's durable sequential rate / replicas \
                         ({}, for reference)",
                        crate::fio::DURABLE_SEQ_JOB
                    ),
                    durable.map_or("-".into(), fmt_num),
                    None,
                ));
            }
        }
        for job in ["randread-4k-qd32", "randwrite-4k-qd32"] {
            let ratio = match (
                self.block_result("strata", job),
                self.block_result("qemu-nbd", job),
            ) {
                (Some(s), Some(q)) if q.iops > 0.0 => Some(s.iops / q.iops),
                _ => None,
            };
            out.push((
                format!("NBD {job} IOPS >= 1.5x qemu-nbd's"),
                ratio.map_or("-".into(), |r| format!("{}x", fmt_num(r))),
                ratio.map(|r| r >= 1.5),
            ));
        }
        for (job, raw_job) in [
            ("seqread-1m-qd8-fresh", "seq-read-io_uring"),
            ("seqread-1m-qd8", "seq-read-io_uring"),
            ("seqread-1m-qd8-reread", "seq-read-io_uring"),
            ("seqwrite-1m-qd8", "seq-write-io_uring"),
        ] {
            // The same job on a raw file, run beside Strata's, when the block stage had it;
            // else the raw-disk stage's job of the same shape.
            let (raw, against) = match self.block_result("raw", job) {
                Some(r) => (
                    Some(r.mib_per_s),
                    "the same job on a raw file, beside it".to_string(),
                ),
                None => (self.fio(raw_job).map(|r| r.mib_per_s), raw_job.to_string()),
            };
            let frac = match (self.block_result("strata", job), raw) {
                (Some(s), Some(r)) if r > 0.0 => Some(s.mib_per_s / r),
                _ => None,
            };
            out.push((
                format!("NBD {job} MiB/s >= 0.8 of the raw disk's ({against})"),
                frac.map_or("-".into(), fmt_num),
                frac.map(|f| f >= 0.8),
            ));
        }
        // What NBD itself allows on this machine: qemu-nbd storing nothing.
        let ceiling = match (
            self.block_result("null", "seqwrite-1m-qd8"),
            self.block_result("raw", "seqwrite-1m-qd8"),
        ) {
            (Some(n), Some(r)) if r.mib_per_s > 0.0 => Some(n.mib_per_s / r.mib_per_s),
            _ => None,
        };
        if let Some(c) = ceiling {
            out.push((
                "NBD seqwrite-1m-qd8 MiB/s of the protocol ceiling (null) against the raw disk's, for reference"
                    .into(),
                fmt_num(c),
                None,
            ));
        }
        out
    }

    /// One block job's result for one target.
    pub fn block_result(&self, target: &str, job: &str) -> Option<&BlockResult> {
        self.block
            .iter()
            .find(|b| b.target == target && b.job == job)
    }

    /// The block table: Strata / qemu-nbd / null ceiling per job, with ratios; Ceph's rbd
    /// beside them when it was measured.
    fn block_markdown(&self, s: &mut String) {
        if self.block.is_empty() {
            return;
        }
        let rbd = self.block.iter().any(|b| b.target == "ceph-rbd");
        if rbd {
            let _ = writeln!(
                s,
                "\n## Block: Strata vs qemu-nbd vs null over NBD (fio nbd engine), Ceph rbd (fio rbd engine)\n"
            );
        } else {
            let _ = writeln!(
                s,
                "\n## Block over NBD (fio nbd engine): Strata vs qemu-nbd vs null\n"
            );
        }
        let _ = writeln!(
            s,
            "Strata: one replica; writes are acknowledged from the node's write-back cache and a FLUSH makes them durable. \
             qemu-nbd: raw file, `--cache=none --aio=io_uring` (writes reach the disk's cache; only a FLUSH makes them durable). \
             null: qemu-nbd over `null-co` (stores nothing; it skips the second and third sequential reads, which would repeat the first). Jobs run in the order listed: `seqread-1m-qd8-fresh` reads the \
             region as the prefill wrote it, `seqread-1m-qd8` after the random writes rewrote much of it, \
             `seqread-1m-qd8-reread` once more after that (Strata rewrites scattered ranges side by side when a read finds them, \
             and once the volume is idle: within the settle after a random-write job). \
             raw disk: fio's `io_uring` engine with O_DIRECT on a file of the region's size, the read jobs at QD8 and QD32 and the \
             sequential write. The targets run side by side: each job runs on every target in turn before the next \
             job starts, and a server settles (its CPU goes idle, within a bound) before the next run; what it spends \
             settling is charged to its job, and `Strata settle s` says how long that took.{}\n",
            if rbd {
                " Ceph rbd: an image in a pool of size 1 on one BlueStore OSD, through librbd in fio's process \
                 with its default cache (`writearound`: a write is acknowledged once sent to the OSD, up to 24 MiB \
                 in flight; a flush waits for them); its CPU column counts mon, mgr and OSD, not librbd."
            } else {
                ""
            }
        );
        // Columns: (header, cell of one job); Ceph's only when it was measured.
        type Cell<'a> = Box<dyn Fn(&str) -> String + 'a>;
        let iops = |t: &'static str| -> Cell {
            Box::new(move |j| opt(self.block_result(t, j).map(|r| r.iops)))
        };
        let ratio = |t: &'static str| -> Cell {
            Box::new(move |j| {
                fmt_ratio(
                    self.block_result("strata", j).map(|r| r.iops),
                    self.block_result(t, j).map(|r| r.iops),
                )
            })
        };
        let mib = |t: &'static str| -> Cell {
            Box::new(move |j| opt(self.block_result(t, j).map(|r| r.mib_per_s)))
        };
        let lat = |t: &'static str| -> Cell {
            Box::new(move |j| {
                self.block_result(t, j).map_or("-".into(), |r| {
                    format!("{} / {}", fmt_num(r.lat_p50_ms), fmt_num(r.lat_p99_ms))
                })
            })
        };
        let cpu = |t: &'static str| -> Cell {
            Box::new(move |j| opt(self.block_result(t, j).and_then(|r| r.server_cpu_ms_per_op)))
        };
        let mut cols: Vec<(&str, Cell)> = vec![
            ("Strata IOPS", iops("strata")),
            ("qemu-nbd IOPS", iops("qemu-nbd")),
            ("Strata/qemu-nbd", ratio("qemu-nbd")),
        ];
        if rbd {
            cols.push(("Ceph rbd IOPS", iops("ceph-rbd")));
            cols.push(("Strata/Ceph rbd", ratio("ceph-rbd")));
        }
        cols.push(("null IOPS", iops("null")));
        cols.push(("raw disk IOPS", iops("raw")));
        cols.push(("Strata MiB/s", mib("strata")));
        cols.push(("qemu-nbd MiB/s", mib("qemu-nbd")));
        cols.push(("raw disk MiB/s", mib("raw")));
        if rbd {
            cols.push(("Ceph rbd MiB/s", mib("ceph-rbd")));
        }
        cols.push(("Strata p50/p99 ms", lat("strata")));
        cols.push(("qemu-nbd p50/p99 ms", lat("qemu-nbd")));
        if rbd {
            cols.push(("Ceph rbd p50/p99 ms", lat("ceph-rbd")));
        }
        cols.push(("Strata CPU ms/op", cpu("strata")));
        cols.push(("qemu-nbd CPU ms/op", cpu("qemu-nbd")));
        if rbd {
            cols.push(("Ceph rbd CPU ms/op", cpu("ceph-rbd")));
        }
        cols.push((
            "Strata settle s",
            Box::new(move |j| opt(self.block_result("strata", j).map(|r| r.settle_s))),
        ));
        let _ = write!(s, "| job |");
        for (h, _) in &cols {
            let _ = write!(s, " {h} |");
        }
        let _ = writeln!(s, "\n|---|{}", "---:|".repeat(cols.len()));
        for j in crate::block::jobs() {
            let _ = write!(s, "| {} |", j.name);
            for (_, cell) in &cols {
                let _ = write!(s, " {} |", cell(j.name));
            }
            let _ = writeln!(s);
        }
    }

    /// The object table: Strata / Swift / raw disk per workload, with ratios; Ceph beside
    /// them when it was measured.
    fn objects_markdown(&self, s: &mut String) {
        let ceph = self.runs.iter().any(|r| r.target == "ceph");
        let _ = writeln!(
            s,
            "## Strata vs Swift{} vs raw disk\n",
            if ceph { " vs Ceph" } else { "" }
        );
        let _ = writeln!(
            s,
            "Strata and Swift run side by side: each step runs on one, then the other, before the next \
             step starts; after each run the server settles (its CPU goes idle, within a bound) and what \
             it spends settling is charged to that run.{}\n",
            if ceph {
                " Ceph runs the same steps in a stage of its own, after them."
            } else {
                ""
            }
        );
        let mut head = String::from("| workload | unit | Strata | Swift | Strata/Swift |");
        if ceph {
            head.push_str(" Ceph | Strata/Ceph |");
        }
        head.push_str(" raw disk | Strata/raw | Strata CPU ms/op | Swift CPU ms/op |");
        if ceph {
            head.push_str(" Ceph CPU ms/op |");
        }
        head.push_str(" Strata p50/p99 ms | Swift p50/p99 ms |");
        if ceph {
            head.push_str(" Ceph p50/p99 ms | errors S/W/C |");
        } else {
            head.push_str(" errors S/W |");
        }
        head.push_str(" load 1m |");
        let ncols = head.matches(" |").count();
        let _ = writeln!(s, "{head}\n|---|---|{}", "---:|".repeat(ncols - 2));
        for (op, size, conc) in self.workloads() {
            let [st, sw, ce] = OBJECT_TARGETS.map(|(t, _)| self.find(t, op, size, conc));
            let raw = self.raw_disk(op, size);
            let h = |r: Option<&RunResult>| r.map(headline);
            let lat = |r: Option<&RunResult>| {
                r.map_or("-".into(), |r| {
                    format!("{} / {}", fmt_num(r.lat_p50_ms), fmt_num(r.lat_p99_ms))
                })
            };
            let cpu = |r: Option<&RunResult>| opt(r.and_then(|r| r.server_cpu_ms_per_op));
            let errs = |r: Option<&RunResult>| r.map_or("-".into(), |r| r.errors.to_string());
            let load = st.or(sw).or(ce).map(|r| r.load_1m);
            let mut row = format!(
                "| {} c{} | {} | {} | {} | {} |",
                object_label(op, size),
                conc,
                unit(size),
                opt(h(st)),
                opt(h(sw)),
                fmt_ratio(h(st), h(sw)),
            );
            if ceph {
                let _ = write!(row, " {} | {} |", opt(h(ce)), fmt_ratio(h(st), h(ce)));
            }
            let _ = write!(
                row,
                " {} | {} | {} | {} |",
                opt(raw),
                fmt_ratio(h(st), raw),
                cpu(st),
                cpu(sw)
            );
            if ceph {
                let _ = write!(row, " {} |", cpu(ce));
            }
            let _ = write!(row, " {} | {} |", lat(st), lat(sw));
            if ceph {
                let _ = write!(
                    row,
                    " {} | {}/{}/{} |",
                    lat(ce),
                    errs(st),
                    errs(sw),
                    errs(ce)
                );
            } else {
                let _ = write!(row, " {}/{} |", errs(st), errs(sw));
            }
            let _ = writeln!(s, "{row} {} |", opt(load));
        }
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# strata bench: {}{}\n",
            self.started,
            if self.quick { " (--quick)" } else { "" }
        );
        let m = &self.machine;
        let _ = writeln!(
            s,
            "Machine: {} cores, {:.1} GiB RAM, kernel {}, work dir on {}, load average {:.2} at start. \
             Strata: one node, {r} replica(s) on as many disks (data files on the work dir's disk), \
             its default read cache (512 MiB per disk of recently \
             read chunks; reads of a larger working set go to the disk). \
             Swift: Debian packages, {r} replica(s) on as many devices (directories on the same disk), \
             write quorum a majority as Strata's (its object server drops the page cache \
             behind authenticated reads, `keep_cache_private = false` by default).{} Small objects in ops/s, large ones in MiB/s; \
             CPU is server CPU (all processes of the server) per operation.\n",
            m.cores,
            m.mem_gib,
            m.kernel,
            m.filesystem_of_work_dir,
            m.load_1m_at_start,
            if self.has_ceph() {
                " Ceph: Debian packages, one mon, one mgr, one BlueStore OSD on a file, pools of size 1, \
                 radosgw's Swift API (its CPU: mon, mgr, OSD and radosgw)."
            } else {
                ""
            },
            r = self.replicas,
        );
        for n in &self.notes {
            let _ = writeln!(s, "> {n}\n");
        }
        self.objects_markdown(&mut s);
        let _ = writeln!(
            s,
            "\n## Targets\n\n| target | measured | met |\n|---|---:|:---:|"
        );
        for (what, got, pass) in self.targets() {
            let mark = match pass {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "-",
            };
            let _ = writeln!(s, "| {what} | {got} | {mark} |");
        }
        self.block_markdown(&mut s);
        let _ = writeln!(
            s,
            "\n## Generator ceiling (in-process in-memory endpoint)\n"
        );
        let _ = writeln!(s, "| workload | ops/s | MiB/s | p50 ms | p99 ms | p99.9 ms | generator+endpoint CPU ms/op |");
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|");
        for r in &self.ceiling {
            let _ = writeln!(
                s,
                "| {} c{} | {} | {} | {} | {} | {} | {} |",
                object_label(r.op, r.size),
                r.concurrency,
                fmt_num(r.ops_per_s),
                fmt_num(r.mib_per_s),
                fmt_num(r.lat_p50_ms),
                fmt_num(r.lat_p99_ms),
                fmt_num(r.lat_p999_ms),
                fmt_num(r.client_cpu_ms_per_op),
            );
        }
        let _ = writeln!(
            s,
            "\n## Raw disk (fio, file in the work dir's filesystem)\n"
        );
        let _ = writeln!(s, "| job | engine | bs | iodepth | MiB/s | IOPS | p99 ms |\n|---|---|---:|---:|---:|---:|---:|");
        for f in &self.fio {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |",
                f.name,
                f.engine,
                size_label(f.block_size),
                f.iodepth,
                fmt_num(f.mib_per_s),
                fmt_num(f.iops),
                fmt_num(f.lat_p99_ms)
            );
        }
        let _ = writeln!(s, "\n## All runs\n");
        let _ = writeln!(
            s,
            "| target | workload | s | ops | errors | ops/s | MiB/s | p50 | p99 | p99.9 | max ms | server CPU ms/op | client CPU ms/op | load 1m | settle s |"
        );
        let _ = writeln!(
            s,
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for r in self.runs.iter().chain(&self.ceiling) {
            let _ = writeln!(
                s,
                "| {} | {} c{} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.target,
                object_label(r.op, r.size),
                r.concurrency,
                r.seconds,
                r.ops,
                r.errors,
                fmt_num(r.ops_per_s),
                fmt_num(r.mib_per_s),
                fmt_num(r.lat_p50_ms),
                fmt_num(r.lat_p99_ms),
                fmt_num(r.lat_p999_ms),
                fmt_num(r.lat_max_ms),
                opt(r.server_cpu_ms_per_op),
                fmt_num(r.client_cpu_ms_per_op),
                fmt_num(r.load_1m),
                fmt_num(r.settle_s),
            );
            for (k, v) in &r.error_kinds {
                let _ = writeln!(
                    s,
                    "|  | error x{v}: {} | | | | | | | | | | | | |",
                    k.replace('|', "/")
                );
            }
        }
        s
    }

    /// Best MiB/s per object size, one series per (server, op), plus the ceiling.
    pub fn svg_size(&self) -> String {
        let mut series = Vec::new();
        for (target, label) in OBJECT_TARGETS {
            for op in [Op::Put, Op::Get] {
                let mut sizes: Vec<u64> = self
                    .runs
                    .iter()
                    .filter(|r| r.target == target && r.op == op)
                    .map(|r| r.size)
                    .collect();
                sizes.sort_unstable();
                sizes.dedup();
                let pts = sizes
                    .into_iter()
                    .filter_map(|sz| {
                        let best = self
                            .runs
                            .iter()
                            .filter(|r| {
                                r.target == target && r.op == op && r.size == sz && r.ops > 0
                            })
                            .map(|r| r.mib_per_s)
                            .fold(0.0f64, f64::max);
                        (best > 0.0).then_some((sz as f64, best))
                    })
                    .collect::<Vec<_>>();
                if !pts.is_empty() {
                    series.push((format!("{label} {}", op.name()), pts));
                }
            }
        }
        let mut hlines = Vec::new();
        if let Some(v) = self.raw_disk(Op::Put, 64 * MIB) {
            hlines.push(("raw disk seq write".to_string(), v));
        }
        if let Some(v) = self.raw_disk(Op::Get, 64 * MIB) {
            hlines.push(("raw disk seq read".to_string(), v));
        }
        line_chart(
            "Throughput vs object size (best concurrency)",
            "object size",
            "MiB/s",
            &series,
            &hlines,
            size_label,
        )
    }

    /// MiB/s vs concurrency for the largest object size.
    pub fn svg_concurrency(&self) -> String {
        let size = self.runs.iter().map(|r| r.size).max().unwrap_or(64 * MIB);
        let mut series = Vec::new();
        for (target, label) in OBJECT_TARGETS {
            for op in [Op::Put, Op::Get] {
                let mut pts: Vec<(f64, f64)> = self
                    .runs
                    .iter()
                    .filter(|r| r.target == target && r.op == op && r.size == size && r.ops > 0)
                    .map(|r| (r.concurrency as f64, r.mib_per_s))
                    .collect();
                pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                if !pts.is_empty() {
                    series.push((format!("{label} {}", op.name()), pts));
                }
            }
        }
        let mut hlines = Vec::new();
        if let Some(v) = self.raw_disk(Op::Put, 64 * MIB) {
            hlines.push(("raw disk seq write".to_string(), v));
        }
        if let Some(v) = self.raw_disk(Op::Get, 64 * MIB) {
            hlines.push(("raw disk seq read".to_string(), v));
        }
        line_chart(
            &format!("Throughput vs concurrency ({} objects)", size_label(size)),
            "concurrency",
            "MiB/s",
            &series,
            &hlines,
            |c| c.to_string(),
        )
    }

    /// 4 KiB random IOPS against queue depth, one series per (block target, read or write;
    /// writes without a FLUSH after each).
    pub fn svg_queue_depth(&self) -> String {
        let mut series = Vec::new();
        for (target, label) in BLOCK_TARGETS {
            for rw in ["randread", "randwrite"] {
                let mut pts: Vec<(f64, f64)> = crate::block::jobs()
                    .into_iter()
                    .filter(|j| j.rw == rw && j.block_size == 4096 && !j.flush)
                    .filter_map(|j| {
                        let r = self.block_result(target, j.name)?;
                        (r.iops > 0.0).then_some((f64::from(j.iodepth), r.iops))
                    })
                    .collect();
                pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                if !pts.is_empty() {
                    series.push((format!("{label} {rw}"), pts));
                }
            }
        }
        line_chart(
            "4 KiB random IOPS vs queue depth",
            "queue depth",
            "IOPS",
            &series,
            &[],
            |c| c.to_string(),
        )
    }
}

/// Block targets as the charts name them.
const BLOCK_TARGETS: [(&str, &str); 5] = [
    ("strata", "Strata"),
    ("qemu-nbd", "qemu-nbd"),
    ("ceph-rbd", "Ceph rbd"),
    ("null", "null"),
    ("raw", "raw disk"),
];

const COLORS: [&str; 10] = [
    "#1f77b4", "#2ca02c", "#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A hand-written SVG line chart, both axes logarithmic, x ticks at the data points.
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    hlines: &[(String, f64)],
    x_tick: impl Fn(u64) -> String,
) -> String {
    let (w, h) = (720.0, 420.0);
    let (l, r, t, b) = (70.0, 190.0, 40.0, 50.0);
    let mut xs: Vec<f64> = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.0))
        .filter(|x| *x > 0.0)
        .collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    let ys = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.1))
        .chain(hlines.iter().map(|h| h.1))
        .filter(|y| *y > 0.0);
    let (mut ymin, mut ymax) = ys.fold((f64::MAX, f64::MIN), |(a, b), y| (a.min(y), b.max(y)));
    if ymin > ymax {
        (ymin, ymax) = (1.0, 10.0);
    }
    let (ylo, yhi) = (
        10f64.powf(ymin.log10().floor()),
        10f64.powf(ymax.log10().ceil().max(ymin.log10().floor() + 1.0)),
    );
    let (xlo, xhi) = match (xs.first(), xs.last()) {
        (Some(a), Some(b)) if b > a => (a.ln(), b.ln()),
        (Some(a), _) => (a.ln() - 1.0, a.ln() + 1.0),
        _ => (0.0, 1.0),
    };
    let px = |x: f64| l + (x.ln() - xlo) / (xhi - xlo) * (w - l - r);
    let py = |y: f64| {
        h - b - (y.max(ylo).log10() - ylo.log10()) / (yhi.log10() - ylo.log10()) * (h - t - b)
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#,
        (w - r + l) / 2.0,
        esc(title)
    );
    // Y grid: one line per decade.
    let mut d = ylo;
    while d <= yhi * 1.0001 {
        let y = py(d);
        let _ = writeln!(
            s,
            r##"<line x1="{l}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/>"##,
            w - r
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            l - 6.0,
            y + 4.0,
            fmt_num(d)
        );
        d *= 10.0;
    }
    for &x in &xs {
        let xp = px(x);
        let _ = writeln!(
            s,
            r##"<line x1="{xp:.1}" y1="{t}" x2="{xp:.1}" y2="{:.1}" stroke="#eee"/>"##,
            h - b
        );
        let _ = writeln!(
            s,
            r#"<text x="{xp:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            h - b + 16.0,
            esc(&x_tick(x as u64))
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{l}" y="{t}" width="{:.1}" height="{:.1}" fill="none" stroke="#444"/>"##,
        w - l - r,
        h - t - b
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        (w - r + l) / 2.0,
        h - 12.0,
        esc(x_label)
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">{} (log)</text>"#,
        (h - b + t) / 2.0,
        (h - b + t) / 2.0,
        esc(y_label)
    );
    let mut legend_y = t + 10.0;
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let dash = if name.contains("GET") || name.contains("read") {
            r#" stroke-dasharray="6 3""#
        } else {
            ""
        };
        let path: Vec<String> = pts
            .iter()
            .filter(|p| p.0 > 0.0)
            .map(|p| format!("{:.1},{:.1}", px(p.0), py(p.1)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{c}" stroke-width="2"{dash}/>"#,
            path.join(" ")
        );
        for p in pts {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{c}"><title>{} {}: {}</title></circle>"#,
                px(p.0),
                py(p.1),
                esc(name),
                p.0,
                fmt_num(p.1)
            );
        }
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" y1="{legend_y:.1}" x2="{:.1}" y2="{legend_y:.1}" stroke="{c}" stroke-width="2"{dash}/>"#,
            w - r + 12.0,
            w - r + 36.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            w - r + 42.0,
            legend_y + 4.0,
            esc(name)
        );
        legend_y += 18.0;
    }
    for (name, y) in hlines {
        let yp = py(*y);
        let _ = writeln!(
            s,
            r##"<line x1="{l}" y1="{yp:.1}" x2="{:.1}" y2="{yp:.1}" stroke="#888" stroke-dasharray="2 3"/>"##,
            w - r
        );
        let _ = writeln!(
            s,
            r##"<line x1="{:.1}" y1="{legend_y:.1}" x2="{:.1}" y2="{legend_y:.1}" stroke="#888" stroke-dasharray="2 3"/>"##,
            w - r + 12.0,
            w - r + 36.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{} ({})</text>"#,
            w - r + 42.0,
            legend_y + 4.0,
            esc(name),
            fmt_num(*y)
        );
        legend_y += 18.0;
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn run(target: &str, op: Op, size: u64, conc: usize, ops_s: f64, cpu: f64) -> RunResult {
        RunResult {
            target: target.into(),
            op,
            size,
            concurrency: conc,
            ops: (ops_s * 10.0) as u64,
            errors: 0,
            seconds: 10.0,
            ops_per_s: ops_s,
            mib_per_s: ops_s * size as f64 / MIB as f64,
            lat_mean_ms: 1.0,
            lat_p50_ms: 1.0,
            lat_p99_ms: 2.0,
            lat_p999_ms: 3.0,
            lat_max_ms: 4.0,
            server_cpu_ms_per_op: Some(cpu),
            client_cpu_ms_per_op: 0.1,
            load_1m: 1.5,
            settle_s: 0.0,
            error_kinds: BTreeMap::new(),
        }
    }

    fn report() -> Report {
        Report {
            started: "2026-01-01T00:00:00Z".into(),
            quick: true,
            replicas: 1,
            runs: vec![
                run("strata", Op::Put, 4 * KIB, 16, 2000.0, 0.3),
                run("swift", Op::Put, 4 * KIB, 16, 140.0, 7.8),
                run("strata", Op::Get, 4 * KIB, 16, 5000.0, 0.1),
                run("swift", Op::Get, 4 * KIB, 16, 275.0, 4.0),
                run("strata", Op::Put, 64 * MIB, 1, 8.0, 100.0),
                run("strata", Op::Put, 64 * MIB, 4, 10.0, 100.0),
                run("swift", Op::Put, 64 * MIB, 1, 2.0, 900.0),
            ],
            fio: vec![FioResult {
                name: "seq-write-io_uring".into(),
                engine: "io_uring".into(),
                block_size: MIB,
                iodepth: 8,
                mib_per_s: 800.0,
                iops: 800.0,
                lat_p99_ms: 10.0,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn formats_numbers_and_ratios() {
        assert_eq!(fmt_num(1234.5), "1234");
        assert_eq!(fmt_num(12.345), "12.3");
        assert_eq!(fmt_num(1.2345), "1.23");
        assert_eq!(fmt_num(0.01234), "0.012");
        assert_eq!(fmt_num(0.0), "0");
        assert_eq!(fmt_ratio(Some(20.0), Some(2.0)), "10.0x");
        assert_eq!(fmt_ratio(Some(1.0), None), "-");
        assert_eq!(fmt_ratio(Some(1.0), Some(0.0)), "-");
        assert_eq!(size_label(4096), "4 KiB");
        assert_eq!(size_label(64 * MIB), "64 MiB");
        assert_eq!(size_label(100), "100 B");
    }

    #[test]
    fn markdown_table_has_ratios() {
        let md = report().markdown();
        // 2000 / 140 = 14.3x, CPU 0.3 vs 7.8.
        assert!(
            md.contains("| PUT 4 KiB c16 | ops/s | 2000 | 140 | 14.3x |"),
            "{md}"
        );
        // 64 MiB c4 PUT: 640 MiB/s vs raw 800 -> 0.8x.
        assert!(
            md.contains("| PUT 64 MiB c4 | MiB/s | 640 | - | - | 800 | 0.80x |"),
            "{md}"
        );
        let t = report().targets();
        assert_eq!(t[0].2, Some(true)); // PUT ops 14.3x
        assert_eq!(t[1].2, Some(true)); // CPU 0.3/7.8 = 1/26
        assert_eq!(t[1].1, "1/26.0");
        // 64 MiB PUT best 640 vs Swift 128: 5x; vs raw 800: 0.8.
        let put64 = t
            .iter()
            .find(|x| x.0.starts_with("64 MiB PUT MiB/s (best"))
            .unwrap();
        assert_eq!(put64.1, "5.00x");
        let raw = t
            .iter()
            .find(|x| x.0.starts_with("64 MiB PUT MiB/s >= 0.8"))
            .unwrap();
        assert_eq!(raw.2, Some(true));
        let get64 = t
            .iter()
            .find(|x| x.0.starts_with("64 MiB GET MiB/s (best"))
            .unwrap();
        assert_eq!(get64.2, None);
    }

    fn block(target: &str, job: &str, iops: f64) -> BlockResult {
        BlockResult {
            target: target.into(),
            job: job.into(),
            iops,
            mib_per_s: iops / 256.0,
            lat_p50_ms: 0.5,
            lat_p99_ms: 2.0,
            lat_p999_ms: 4.0,
            server_cpu_ms_per_op: Some(0.1),
            load_1m: 1.0,
            settle_s: 0.0,
        }
    }

    /// The lines of the Markdown table whose header starts with `head`.
    fn table<'a>(md: &'a str, head: &str) -> Vec<&'a str> {
        md.lines()
            .skip_while(|l| !l.starts_with(head))
            .take_while(|l| l.starts_with('|'))
            .collect()
    }

    /// Every line of a table has as many cells as its header.
    fn assert_rectangular(t: &[&str]) {
        assert!(t.len() > 2, "{t:?}");
        let n = t[0].matches('|').count();
        for l in t {
            assert_eq!(l.matches('|').count(), n, "{l}\nin\n{}", t.join("\n"));
        }
    }

    #[test]
    fn tables_without_ceph_keep_their_columns() {
        let mut r = report();
        r.block = vec![
            block("strata", "randread-4k-qd32", 20000.0),
            block("qemu-nbd", "randread-4k-qd32", 10000.0),
        ];
        assert!(!r.has_ceph());
        let md = r.markdown();
        assert!(md.contains("## Strata vs Swift vs raw disk\n"), "{md}");
        let objects = table(&md, "| workload | unit | Strata | Swift |");
        assert_eq!(
            objects[0],
            "| workload | unit | Strata | Swift | Strata/Swift | raw disk | Strata/raw | Strata CPU ms/op | Swift CPU ms/op | Strata p50/p99 ms | Swift p50/p99 ms | errors S/W | load 1m |"
        );
        assert_eq!(
            objects[1],
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        assert_rectangular(&objects);
        let blocks = table(&md, "| job | Strata IOPS");
        assert_eq!(
            blocks[0],
            "| job | Strata IOPS | qemu-nbd IOPS | Strata/qemu-nbd | null IOPS | raw disk IOPS | Strata MiB/s | qemu-nbd MiB/s | raw disk MiB/s | Strata p50/p99 ms | qemu-nbd p50/p99 ms | Strata CPU ms/op | qemu-nbd CPU ms/op | Strata settle s |"
        );
        assert_rectangular(&blocks);
        assert!(
            md.contains("| randread-4k-qd32 | 20000 | 10000 | 2.00x | - | - | 78.1 | 39.1 | - |"),
            "{md}"
        );
        assert!(!md.contains("Ceph"), "{md}");
        assert!(!r.svg_size().contains("Ceph"));
    }

    #[test]
    fn tables_with_ceph_show_it_with_ratios() {
        let mut r = report();
        r.runs.push(run("ceph", Op::Put, 4 * KIB, 16, 400.0, 2.5));
        r.runs.push(run("ceph", Op::Put, 64 * MIB, 4, 2.5, 600.0));
        r.block = vec![
            block("strata", "randread-4k-qd32", 20000.0),
            block("qemu-nbd", "randread-4k-qd32", 10000.0),
            block("ceph-rbd", "randread-4k-qd32", 5000.0),
        ];
        assert!(r.has_ceph());
        let md = r.markdown();
        assert!(
            md.contains("## Strata vs Swift vs Ceph vs raw disk\n"),
            "{md}"
        );
        let objects = table(&md, "| workload | unit | Strata | Swift |");
        assert!(objects[0].starts_with(
            "| workload | unit | Strata | Swift | Strata/Swift | Ceph | Strata/Ceph | raw disk |"
        ));
        assert!(objects[0].contains(
            "| Swift CPU ms/op | Ceph CPU ms/op | Strata p50/p99 ms | Swift p50/p99 ms | Ceph p50/p99 ms | errors S/W/C | load 1m |"
        ));
        assert_rectangular(&objects);
        // 2000 / 400 = 5x; 640 / 160 MiB/s = 4x; no Ceph figure for GET: "-".
        assert!(
            md.contains("| PUT 4 KiB c16 | ops/s | 2000 | 140 | 14.3x | 400 | 5.00x | - | - | 0.30 | 7.80 | 2.50 |"),
            "{md}"
        );
        assert!(
            md.contains("| PUT 64 MiB c4 | MiB/s | 640 | - | - | 160 | 4.00x | 800 | 0.80x |"),
            "{md}"
        );
        assert!(md.contains("| GET 4 KiB c16 | ops/s | 5000 | 275 | 18.2x | - | - |"));
        assert!(md.contains("| 0/0/0 | 1.50 |"));
        let blocks = table(&md, "| job | Strata IOPS");
        assert!(blocks[0].starts_with(
            "| job | Strata IOPS | qemu-nbd IOPS | Strata/qemu-nbd | Ceph rbd IOPS | Strata/Ceph rbd | null IOPS |"
        ));
        assert_rectangular(&blocks);
        assert!(
            md.contains("| randread-4k-qd32 | 20000 | 10000 | 2.00x | 5000 | 4.00x | - |"),
            "{md}"
        );
        assert!(md.contains("Ceph rbd (fio rbd engine)"));
        let svg = r.svg_size();
        assert!(svg.contains("Ceph PUT") && !svg.contains("Ceph GET"));
        assert!(r.svg_concurrency().contains("Ceph PUT"));
    }

    #[test]
    fn sequential_targets_use_the_raw_file_run_beside_them() {
        let mut r = report();
        let mut seq = |target: &str, job: &str, mib: f64| {
            let mut b = block(target, job, mib);
            b.mib_per_s = mib;
            r.block.push(b);
        };
        seq("strata", "seqwrite-1m-qd8", 900.0);
        seq("raw", "seqwrite-1m-qd8", 1000.0);
        seq("null", "seqwrite-1m-qd8", 950.0);
        seq("strata", "seqread-1m-qd8-fresh", 700.0);
        let t = r.targets();
        let find = |head: &str| t.iter().find(|x| x.0.starts_with(head)).unwrap().clone();
        let w = find("NBD seqwrite-1m-qd8 MiB/s >= 0.8");
        assert!(w.0.contains("beside it"), "{w:?}");
        assert_eq!((w.1.as_str(), w.2), ("0.90", Some(true)));
        let c = find("NBD seqwrite-1m-qd8 MiB/s of the protocol ceiling");
        assert_eq!((c.1.as_str(), c.2), ("0.95", None));
        // No raw run of that job beside it: the raw-disk stage's job of the same shape.
        let fresh = find("NBD seqread-1m-qd8-fresh MiB/s >= 0.8");
        assert!(fresh.0.contains("(seq-read-io_uring)"), "{fresh:?}");
    }

    #[test]
    fn iops_against_queue_depth_has_a_series_per_target_and_direction() {
        let mut r = report();
        r.block = vec![
            block("strata", "randread-4k-qd1", 4000.0),
            block("strata", "randread-4k-qd32", 40000.0),
            block("strata", "randwrite-4k-qd1", 9000.0),
            block("strata", "randwrite-4k-qd32", 45000.0),
            block("strata", "randwrite-4k-qd32-flush", 12000.0),
            block("qemu-nbd", "randread-4k-qd32", 20000.0),
            block("raw", "randread-4k-qd1", 13000.0),
        ];
        let svg = r.svg_queue_depth();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        for name in [
            "Strata randread",
            "Strata randwrite",
            "qemu-nbd randread",
            "raw disk randread",
        ] {
            assert!(svg.contains(&format!(">{name}</text>")), "{name} in {svg}");
        }
        assert!(!svg.contains("qemu-nbd randwrite") && !svg.contains("Ceph"));
        // The FLUSH variant is not a point of the write series: two points, QD 1 and 32.
        assert!(svg.contains("Strata randwrite 32: 45000"), "{svg}");
        assert!(!svg.contains("12000"), "{svg}");
    }

    #[test]
    fn svg_is_well_formed() {
        let r = report();
        for svg in [r.svg_size(), r.svg_concurrency()] {
            assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
            assert!(svg.contains("Strata PUT"));
            assert!(!svg.contains("NaN") && !svg.contains("inf"));
        }
    }
}
