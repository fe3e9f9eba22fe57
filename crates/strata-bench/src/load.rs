//! The object load generator: N workers, one kept-alive connection each, for a duration
//! or an operation count, whichever ends first.

use crate::client::{Conn, Endpoint};
use crate::hist::Histogram;
use crate::procstat::{self, CpuSample};
use anyhow::{bail, Result};
use bytes::Bytes;
use http::Method;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An object operation.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum Op {
    Put,
    Get,
    Head,
    Delete,
    List,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Put => "PUT",
            Op::Get => "GET",
            Op::Head => "HEAD",
            Op::Delete => "DELETE",
            Op::List => "LIST",
        }
    }
}

/// One run of one operation.
#[derive(Debug, Clone)]
pub struct Workload {
    pub op: Op,
    /// Object size in bytes (PUT body size; for GET/HEAD/DELETE the size of the objects).
    pub size: u64,
    pub concurrency: usize,
    pub duration: Duration,
    /// Stop after this many operations (claimed across all workers).
    pub max_ops: u64,
    pub container: String,
    /// Name prefix of the objects a PUT creates.
    pub prefix: String,
    /// Objects that GET/HEAD read (cycled through) and DELETE removes (each once).
    pub names: Arc<Vec<String>>,
}

/// What one run measured.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunResult {
    pub target: String,
    pub op: Op,
    pub size: u64,
    pub concurrency: usize,
    pub ops: u64,
    pub errors: u64,
    pub seconds: f64,
    pub ops_per_s: f64,
    pub mib_per_s: f64,
    pub lat_mean_ms: f64,
    pub lat_p50_ms: f64,
    pub lat_p99_ms: f64,
    pub lat_p999_ms: f64,
    pub lat_max_ms: f64,
    /// CPU of the server processes (and their children) per successful operation.
    pub server_cpu_ms_per_op: Option<f64>,
    /// CPU of the load generator's own process per successful operation.
    pub client_cpu_ms_per_op: f64,
    /// The 1-minute load average at the end of the run.
    pub load_1m: f64,
    /// Seconds the server took after the run to go idle before the next run started (the
    /// suite's side-by-side plan; 0 for a single run).
    #[serde(default)]
    pub settle_s: f64,
    /// The first few distinct error messages with their counts.
    pub error_kinds: BTreeMap<String, u64>,
}

/// A random buffer of `size` bytes, made once per run so no operation pays for it.
pub fn random_body(size: u64) -> Bytes {
    let mut v = vec![0u8; size as usize];
    rand::thread_rng().fill_bytes(&mut v);
    Bytes::from(v)
}

struct WorkerOut {
    hist: Histogram,
    ok: u64,
    errors: u64,
    bytes: u64,
    names: Vec<String>,
    error_kinds: BTreeMap<String, u64>,
}

fn note_error(kinds: &mut BTreeMap<String, u64>, msg: String) {
    if kinds.len() < 8 || kinds.contains_key(&msg) {
        *kinds.entry(msg).or_insert(0) += 1;
    }
}

/// Runs `w` against `ep`. `server_pids`: the processes whose CPU is charged to the server
/// (with their descendants). Returns the result and, for PUT, the names written.
pub async fn run(
    target: &str,
    ep: &Endpoint,
    w: &Workload,
    server_pids: &[u32],
) -> Result<(RunResult, Vec<String>)> {
    if w.concurrency == 0 || w.concurrency > 1024 {
        bail!("concurrency must be 1..=1024");
    }
    if matches!(w.op, Op::Get | Op::Head | Op::Delete) && w.names.is_empty() {
        bail!("{} needs existing objects", w.op.name());
    }
    let body = if w.op == Op::Put {
        random_body(w.size)
    } else {
        Bytes::new()
    };
    let claimed = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(w.concurrency + 1));
    let mut handles = Vec::with_capacity(w.concurrency);
    for _ in 0..w.concurrency {
        let (ep, w, body) = (ep.clone(), w.clone(), body.clone());
        let (claimed, barrier) = (claimed.clone(), barrier.clone());
        handles.push(tokio::spawn(async move {
            let mut out = WorkerOut {
                hist: Histogram::new(),
                ok: 0,
                errors: 0,
                bytes: 0,
                names: Vec::new(),
                error_kinds: BTreeMap::new(),
            };
            let mut conn = Conn::new(&ep.storage.authority);
            if let Err(e) = conn.connect().await {
                out.errors += 1;
                note_error(&mut out.error_kinds, format!("connect: {e}"));
            }
            barrier.wait().await;
            let deadline = Instant::now() + w.duration;
            let auth = [("x-auth-token", ep.token.as_str())];
            let base = format!("{}/{}", ep.storage.path, w.container);
            let list_path = format!("{base}?format=json&limit=100");
            while Instant::now() < deadline {
                let i = claimed.fetch_add(1, Ordering::Relaxed);
                if i >= w.max_ops {
                    break;
                }
                let (method, path, send, name) = match w.op {
                    Op::Put => {
                        let name = format!("{}-{i}", w.prefix);
                        (
                            Method::PUT,
                            format!("{base}/{name}"),
                            body.clone(),
                            Some(name),
                        )
                    }
                    Op::Get | Op::Head => {
                        let name = &w.names[(i % w.names.len() as u64) as usize];
                        let m = if w.op == Op::Get {
                            Method::GET
                        } else {
                            Method::HEAD
                        };
                        (m, format!("{base}/{name}"), Bytes::new(), None)
                    }
                    Op::Delete => {
                        let Some(name) = w.names.get(i as usize) else {
                            break;
                        };
                        (Method::DELETE, format!("{base}/{name}"), Bytes::new(), None)
                    }
                    Op::List => (Method::GET, list_path.clone(), Bytes::new(), None),
                };
                let started = Instant::now();
                let r = conn.request(method, &path, &auth, send).await;
                let us = started.elapsed().as_micros() as u64;
                match r {
                    Ok((reply, _)) if reply.status.is_success() => {
                        out.hist.record(us);
                        out.ok += 1;
                        out.bytes += match w.op {
                            Op::Put => w.size,
                            _ => reply.body_bytes,
                        };
                        if let Some(n) = name {
                            out.names.push(n);
                        }
                    }
                    Ok((reply, _)) => {
                        out.errors += 1;
                        note_error(&mut out.error_kinds, format!("status {}", reply.status));
                    }
                    Err(e) => {
                        out.errors += 1;
                        note_error(&mut out.error_kinds, format!("{e:#}"));
                        // Do not spin on a dead server.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            out
        }));
    }
    barrier.wait().await;
    let cpu0 = CpuSample::take(server_pids);
    let self0 = procstat::self_cpu_seconds();
    let t0 = Instant::now();
    let mut hist = Histogram::new();
    let (mut ok, mut errors, mut bytes) = (0u64, 0u64, 0u64);
    let mut names = Vec::new();
    let mut error_kinds = BTreeMap::new();
    for h in handles {
        let o = h.await?;
        hist.merge(&o.hist);
        ok += o.ok;
        errors += o.errors;
        bytes += o.bytes;
        names.extend(o.names);
        for (k, v) in o.error_kinds {
            *error_kinds.entry(k).or_insert(0) += v;
        }
    }
    let seconds = t0.elapsed().as_secs_f64().max(1e-9);
    let server_cpu = if server_pids.is_empty() {
        None
    } else {
        let s = cpu0.seconds_until(&CpuSample::take(server_pids));
        Some(if ok > 0 { s * 1000.0 / ok as f64 } else { 0.0 })
    };
    let client_cpu = procstat::self_cpu_seconds() - self0;
    let ms = |us: u64| us as f64 / 1000.0;
    let result = RunResult {
        target: target.to_string(),
        op: w.op,
        size: w.size,
        concurrency: w.concurrency,
        ops: ok,
        errors,
        seconds,
        ops_per_s: ok as f64 / seconds,
        mib_per_s: bytes as f64 / seconds / (1024.0 * 1024.0),
        lat_mean_ms: hist.mean() / 1000.0,
        lat_p50_ms: ms(hist.percentile(0.5)),
        lat_p99_ms: ms(hist.percentile(0.99)),
        lat_p999_ms: ms(hist.percentile(0.999)),
        lat_max_ms: ms(hist.max()),
        server_cpu_ms_per_op: server_cpu,
        client_cpu_ms_per_op: if ok > 0 {
            client_cpu * 1000.0 / ok as f64
        } else {
            0.0
        },
        load_1m: procstat::loadavg_1m(),
        settle_s: 0.0,
        error_kinds,
    };
    Ok((result, names))
}

/// Writes `count` objects of `size` bytes (for reads when no PUT run made any).
pub async fn prefill(
    ep: &Endpoint,
    container: &str,
    prefix: &str,
    size: u64,
    count: u64,
    concurrency: usize,
) -> Result<Vec<String>> {
    let w = Workload {
        op: Op::Put,
        size,
        concurrency: concurrency.clamp(1, count.max(1) as usize),
        duration: Duration::from_secs(600),
        max_ops: count,
        container: container.to_string(),
        prefix: prefix.to_string(),
        names: Arc::new(Vec::new()),
    };
    let (r, names) = run("prefill", ep, &w, &[]).await?;
    if names.is_empty() {
        bail!("prefill wrote nothing: {:?}", r.error_kinds);
    }
    Ok(names)
}
