//! The raw disk, measured with fio on a file in the same filesystem as the servers' data.

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// One fio job's figures.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FioResult {
    /// `seq-write-io_uring`, `seq-read-psync`, `write-fdatasync-qd1`, ...
    pub name: String,
    pub engine: String,
    pub block_size: u64,
    pub iodepth: u32,
    pub mib_per_s: f64,
    pub iops: f64,
    pub lat_p99_ms: f64,
}

/// The disk's durable sequential rate: 1 MiB writes with an fdatasync after every this many.
pub const DURABLE_SEQ_JOB: &str = "seq-write-fdatasync-64m";

/// The jobs: (name, rw, block size, engine, iodepth, direct, fdatasync after every N writes
/// (0: never)).
fn jobs() -> Vec<(
    &'static str,
    &'static str,
    u64,
    &'static str,
    u32,
    bool,
    u32,
)> {
    vec![
        (
            "seq-write-io_uring",
            "write",
            1 << 20,
            "io_uring",
            8,
            true,
            0,
        ),
        ("seq-read-io_uring", "read", 1 << 20, "io_uring", 8, true, 0),
        ("seq-write-psync", "write", 1 << 20, "psync", 1, true, 0),
        ("seq-read-psync", "read", 1 << 20, "psync", 1, true, 0),
        (DURABLE_SEQ_JOB, "write", 1 << 20, "io_uring", 8, true, 64),
        (
            "write-4k-fdatasync-qd1",
            "write",
            4096,
            "psync",
            1,
            false,
            1,
        ),
    ]
}

/// Runs every job on `dir/fio.dat` (`file_size` bytes), `runtime` each. The file is
/// removed at the end.
pub fn run_all(dir: &Path, file_size: u64, runtime: Duration) -> Result<Vec<FioResult>> {
    std::fs::create_dir_all(dir)?;
    let file = dir.join("fio.dat");
    let mut out = Vec::new();
    let r = (|| -> Result<()> {
        for (name, rw, bs, engine, depth, direct, fdatasync) in jobs() {
            let mut cmd = Command::new("fio");
            cmd.arg(format!("--name={name}"))
                .arg(format!("--filename={}", file.display()))
                .arg(format!("--size={file_size}"))
                .arg(format!("--rw={rw}"))
                .arg(format!("--bs={bs}"))
                .arg(format!("--ioengine={engine}"))
                .arg(format!("--iodepth={depth}"))
                .arg(format!("--direct={}", u8::from(direct)))
                .arg(format!("--runtime={}", runtime.as_secs().max(1)))
                .arg("--time_based")
                .arg("--output-format=json");
            if fdatasync > 0 {
                cmd.arg(format!("--fdatasync={fdatasync}"));
            }
            let o = cmd
                .output()
                .context("running fio (install it: apt-get install -y fio)")?;
            if !o.status.success() {
                bail!("fio {name} failed: {}", String::from_utf8_lossy(&o.stderr));
            }
            let mut r = parse(&String::from_utf8_lossy(&o.stdout), rw)?;
            r.name = name.into();
            r.engine = engine.into();
            r.block_size = bs;
            r.iodepth = depth;
            out.push(r);
        }
        Ok(())
    })();
    let _ = std::fs::remove_file(&file);
    r.map(|_| out)
}

/// Reads the `read` or `write` side of the first job of fio's JSON output.
pub fn parse(json: &str, rw: &str) -> Result<FioResult> {
    // fio may print notices before the JSON document.
    let start = json
        .find('{')
        .ok_or_else(|| anyhow!("no JSON in fio output"))?;
    let v: serde_json::Value = serde_json::from_str(&json[start..])?;
    let side = &v["jobs"][0][if rw == "read" { "read" } else { "write" }];
    let bw = side["bw_bytes"]
        .as_f64()
        .ok_or_else(|| anyhow!("no bw_bytes in fio output"))?;
    let p99_ns = side["clat_ns"]["percentile"]["99.000000"]
        .as_f64()
        .unwrap_or(0.0);
    Ok(FioResult {
        name: String::new(),
        engine: String::new(),
        block_size: 0,
        iodepth: 0,
        mib_per_s: bw / (1024.0 * 1024.0),
        iops: side["iops"].as_f64().unwrap_or(0.0),
        lat_p99_ms: p99_ns / 1e6,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_fio_json() {
        let json = r#"note: both iodepth >= 1 and synchronous I/O engine are selected
{"fio version":"fio-3.33","jobs":[{"jobname":"x","write":{"bw_bytes":1048576000,
"iops":1000.0,"clat_ns":{"percentile":{"99.000000":2500000}}},"read":{"bw_bytes":0}}]}"#;
        let r = super::parse(json, "write").unwrap();
        assert!((r.mib_per_s - 1000.0).abs() < 1e-9);
        assert!((r.iops - 1000.0).abs() < 1e-9);
        assert!((r.lat_p99_ms - 2.5).abs() < 1e-9);
    }
}
