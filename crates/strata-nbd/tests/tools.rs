//! End-to-end tests against real NBD clients: qemu-img / qemu-io (package
//! `qemu-utils`) and nbdinfo (package `libnbd-bin`). A test whose tool is not
//! installed prints why and passes without running.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use rand::{RngCore, SeedableRng};
use strata_nbd::{BlockTarget, Exports, FileTarget, MemTarget, Server};
use tokio::net::{TcpListener, UnixListener};
use tokio::process::Command;
use tokio::task::JoinHandle;

const MIB: u64 = 1 << 20;

fn have(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// Returns false (after saying why) when a tool is missing.
fn require(tools: &[(&str, &str)]) -> bool {
    for (tool, package) in tools {
        if !have(tool) {
            eprintln!("SKIPPED: `{tool}` is not installed (apt-get install -y {package})");
            return false;
        }
    }
    true
}

const QEMU_IMG: (&str, &str) = ("qemu-img", "qemu-utils");
const QEMU_IO: (&str, &str) = ("qemu-io", "qemu-utils");
const NBDINFO: (&str, &str) = ("nbdinfo", "libnbd-bin");

struct Running {
    addr: SocketAddr,
    task: JoinHandle<std::io::Result<()>>,
}

impl Running {
    fn uri(&self, export: &str) -> String {
        format!("nbd://{}/{}", self.addr, export)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start_tcp(exports: Exports) -> Running {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move { Server::new(exports).serve_tcp(l).await });
    Running { addr, task }
}

fn start_unix(exports: Exports, path: &Path) -> JoinHandle<std::io::Result<()>> {
    let l = UnixListener::bind(path).unwrap();
    tokio::spawn(async move { Server::new(exports).serve_unix(l).await })
}

fn unix_uri(export: &str, sock: &Path) -> String {
    format!("nbd+unix:///{export}?socket={}", sock.display())
}

/// Runs a command, failing the test (with its output) if it does not succeed.
async fn run(prog: &str, args: &[&str]) -> String {
    let out = Command::new(prog)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {prog}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{prog} {args:?} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        !stdout.contains("Pattern verification failed"),
        "{prog} {args:?}:\n{stdout}"
    );
    stdout
}

fn random_file(dir: &Path, name: &str, len: u64, seed: u64) -> (PathBuf, Vec<u8>) {
    let mut data = vec![0u8; len as usize];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    let path = dir.join(name);
    std::fs::write(&path, &data).unwrap();
    (path, data)
}

fn one_export(name: &str, target: Arc<dyn BlockTarget>) -> Exports {
    let e = Exports::new();
    e.add(name, target).unwrap();
    e
}

/// Copies `src` into the export and back with `qemu-img convert`, comparing bytes.
async fn convert_roundtrip(uri: &str, src: &Path, data: &[u8], target: &MemTarget, dir: &Path) {
    let src = src.to_str().unwrap();
    run(
        "qemu-img",
        &["convert", "-n", "-f", "raw", "-O", "raw", src, uri],
    )
    .await;
    let stored = target.read(0, data.len()).await.unwrap();
    assert!(stored[..] == data[..], "export contents differ from source");

    let back = dir.join("back.raw");
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            uri,
            back.to_str().unwrap(),
        ],
    )
    .await;
    let got = std::fs::read(&back).unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "data read back differs from source");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_img_convert_roundtrip_tcp() {
    if !require(&[QEMU_IMG]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (src, data) = random_file(dir.path(), "src.raw", 64 * MIB, 1);
    let target = Arc::new(MemTarget::new(64 * MIB));
    let srv = start_tcp(one_export("vol", target.clone())).await;
    convert_roundtrip(&srv.uri("vol"), &src, &data, &target, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_img_convert_roundtrip_unix() {
    if !require(&[QEMU_IMG]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (src, data) = random_file(dir.path(), "src.raw", 64 * MIB, 2);
    let target = Arc::new(MemTarget::new(64 * MIB));
    let sock = dir.path().join("nbd.sock");
    let task = start_unix(one_export("vol", target.clone()), &sock);
    convert_roundtrip(&unix_uri("vol", &sock), &src, &data, &target, dir.path()).await;
    task.abort();
}

/// (offset, length, pattern): odd offsets and sizes, several across 4 KiB pages.
const PATTERNS: &[(u64, u64, u8)] = &[
    (12345, 70000, 0xab),
    (1, 1, 0x01),
    (4095, 2, 0x02),
    (2 * 4096 - 1, 4098, 0x03),
    (200_003, 4096, 0x04),
    (300_001, 131_071, 0x05),
    (1_048_575, 1_048_577, 0x06),
];

async fn qemu_io_patterns(uri: &str, size: u64, target: &dyn BlockTarget) {
    for &(off, len, p) in PATTERNS {
        let w = format!("write -P {p:#x} {off} {len}");
        let r = format!("read -P {p:#x} {off} {len}");
        let out = run("qemu-io", &["-f", "raw", uri, "-c", &w, "-c", &r]).await;
        assert!(out.contains(&format!("wrote {len}/{len} bytes at offset {off}")));
        assert!(out.contains(&format!("read {len}/{len} bytes at offset {off}")));
    }
    // Everything is still there on a fresh connection, with zeroes around it.
    let mut args: Vec<String> = vec!["-f".into(), "raw".into(), uri.into()];
    for &(off, len, p) in PATTERNS {
        args.push("-c".into());
        args.push(format!("read -P {p:#x} {off} {len}"));
    }
    args.push("-c".into());
    args.push("read -P 0 1 0".into());
    args.push("-c".into());
    args.push("read -P 0 2 4093".into());
    args.push("-c".into());
    args.push("read -P 0 4097 4094".into());
    args.push("-c".into());
    args.push(format!("read -P 0 {} 1000", size - 1000));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    run("qemu-io", &argv).await;

    // And the target holds exactly those bytes.
    for &(off, len, p) in PATTERNS {
        let got = target.read(off, len as usize).await.unwrap();
        assert!(got.iter().all(|b| *b == p), "pattern {p:#x} at {off}");
    }
    assert!(target.read(0, 1).await.unwrap()[0] == 0);

    // Zeroing and discarding through the client.
    run(
        "qemu-io",
        &[
            "-f",
            "raw",
            uri,
            "-c",
            "write -z 12345 1000",
            "-c",
            "read -P 0 12345 1000",
            "-c",
            "read -P 0xab 13345 69000",
            "-c",
            "write -f -P 0x77 500000 1000",
            "-c",
            "write -z -u 600000 8192",
            "-c",
            "read -P 0 600000 8192",
            "-c",
            "flush",
            "-c",
            "read -P 0x77 500000 1000",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_patterns_mem_tcp() {
    if !require(&[QEMU_IO]) {
        return;
    }
    let size = 8 * MIB;
    let target = Arc::new(MemTarget::new(size));
    let srv = start_tcp(one_export("pat", target.clone())).await;
    qemu_io_patterns(&srv.uri("pat"), size, &*target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_patterns_file_unix() {
    if !require(&[QEMU_IO, NBDINFO]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let size = 8 * MIB;
    let target = Arc::new(FileTarget::open(dir.path().join("disk.img"), Some(size)).unwrap());
    let sock = dir.path().join("nbd.sock");
    let task = start_unix(one_export("file", target.clone()), &sock);
    let uri = unix_uri("file", &sock);
    qemu_io_patterns(&uri, size, &*target).await;
    // The file stays sparse where nothing was written.
    let map = nbdinfo_map(&uri).await;
    assert_eq!(map.last().unwrap().0 + map.last().unwrap().1, size);
    let tail = map
        .iter()
        .find(|e| e.0 <= 6 * MIB && 6 * MIB < e.0 + e.1)
        .unwrap();
    assert!(tail.2.contains("hole"), "{map:?}");
    task.abort();
}

/// (offset, length, description) triples from `nbdinfo --map`.
async fn nbdinfo_map(uri: &str) -> Vec<(u64, u64, String)> {
    let out = run("nbdinfo", &["--json", "--map", uri]).await;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["offset"].as_u64().unwrap(),
                e["length"].as_u64().unwrap(),
                e["description"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdinfo_map_shows_holes_and_data() {
    if !require(&[NBDINFO, QEMU_IO]) {
        return;
    }
    let size = 16 * MIB;
    let target = Arc::new(MemTarget::new(size));
    let srv = start_tcp(one_export("map", target.clone())).await;
    let uri = srv.uri("map");
    assert_eq!(
        nbdinfo_map(&uri).await,
        vec![(0, size, "hole,zero".to_string())]
    );

    // One page-aligned run and one unaligned write straddling two pages.
    run(
        "qemu-io",
        &[
            "-f",
            "raw",
            &uri,
            "-c",
            "write -P 0x5a 1M 64k",
            "-c",
            "write -P 0x6b 5000000 5000",
        ],
    )
    .await;
    let a = (5_000_000 / 4096) * 4096;
    let b = (5_005_000u64).div_ceil(4096) * 4096;
    let hz = "hole,zero".to_string();
    let data = "data".to_string();
    assert_eq!(
        nbdinfo_map(&uri).await,
        vec![
            (0, MIB, hz.clone()),
            (MIB, 64 * 1024, data.clone()),
            (MIB + 64 * 1024, a - MIB - 64 * 1024, hz.clone()),
            (a, b - a, data),
            (b, size - b, hz.clone()),
        ]
    );

    // Trimming the aligned run makes it a hole again.
    run("qemu-io", &["-f", "raw", &uri, "-c", "discard 1M 64k"]).await;
    let map = nbdinfo_map(&uri).await;
    assert_eq!(map[0], (0, a, hz));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdinfo_lists_exports() {
    if !require(&[NBDINFO]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exports = Exports::new();
    exports
        .add(
            "alpha",
            Arc::new(MemTarget::new(MIB).with_description("first disk")),
        )
        .unwrap();
    exports
        .add(
            "beta",
            Arc::new(MemTarget::new(2 * MIB).with_read_only(true)),
        )
        .unwrap();
    let srv = start_tcp(exports.clone()).await;
    let sock = dir.path().join("nbd.sock");
    let task = start_unix(exports.clone(), &sock);

    for uri in [format!("nbd://{}", srv.addr), unix_uri("", &sock)] {
        let out = run("nbdinfo", &["--json", "--list", &uri]).await;
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let list = v["exports"].as_array().unwrap();
        let names: Vec<&str> = list
            .iter()
            .map(|e| e["export-name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["alpha", "beta"], "{out}");
        assert_eq!(list[0]["export-size"].as_u64(), Some(MIB));
        assert_eq!(list[0]["description"].as_str(), Some("first disk"));
        assert_eq!(list[1]["export-size"].as_u64(), Some(2 * MIB));
        assert_eq!(list[1]["is_read_only"].as_bool(), Some(true));
    }

    // Exports come and go while the server runs.
    exports.remove("alpha");
    exports
        .add("gamma", Arc::new(MemTarget::new(3 * MIB)))
        .unwrap();
    let out = run("nbdinfo", &["--list", &srv.uri("")]).await;
    assert!(!out.contains("export=\"alpha\""), "{out}");
    assert!(out.contains("export=\"gamma\""), "{out}");
    let out = run("nbdinfo", &["--size", &srv.uri("gamma")]).await;
    assert_eq!(out.trim(), (3 * MIB).to_string());
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdcopy_multi_conn_roundtrip() {
    if !require(&[("nbdcopy", "libnbd-bin")]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let len = 32 * MIB;
    let (src, mut data) = random_file(dir.path(), "src.raw", len, 4);
    // Leave a zero MiB in the middle so the copy has a hole to skip.
    data[(8 * MIB) as usize..(9 * MIB) as usize].fill(0);
    std::fs::write(&src, &data).unwrap();
    let target = Arc::new(MemTarget::new(len));
    let srv = start_tcp(one_export("mc", target.clone())).await;
    let uri = srv.uri("mc");
    let back = dir.path().join("back.raw");
    run(
        "nbdcopy",
        &[
            "--connections=4",
            "--requests=16",
            src.to_str().unwrap(),
            &uri,
        ],
    )
    .await;
    run(
        "nbdcopy",
        &["--connections=4", &uri, back.to_str().unwrap()],
    )
    .await;
    assert!(std::fs::read(&back).unwrap() == data);
    assert!(target.read(0, len as usize).await.unwrap()[..] == data[..]);
}

/// Reference figure: `cargo test -p strata-nbd --test tools -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "throughput measurement"]
async fn throughput_256mib() {
    if !require(&[QEMU_IMG]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let len = 256 * MIB;
    let (src, _) = random_file(dir.path(), "src.raw", len, 3);
    // A fresh target per transport, so both pay for page allocation.
    let srv = start_tcp(one_export("t", Arc::new(MemTarget::new(len)))).await;
    let sock = dir.path().join("nbd.sock");
    let task = start_unix(one_export("t", Arc::new(MemTarget::new(len))), &sock);
    let back = dir.path().join("back.raw");
    let (src, back) = (src.to_str().unwrap(), back.to_str().unwrap());
    let order = [("unix", unix_uri("t", &sock)), ("tcp", srv.uri("t"))];
    for (label, uri) in order {
        let t = Instant::now();
        run(
            "qemu-img",
            &["convert", "-n", "-f", "raw", "-O", "raw", src, &uri],
        )
        .await;
        let w = t.elapsed();
        let t = Instant::now();
        run(
            "qemu-img",
            &["convert", "-f", "raw", "-O", "raw", &uri, back],
        )
        .await;
        let r = t.elapsed();
        let mibs = |d: std::time::Duration| 256.0 / d.as_secs_f64();
        println!(
            "{label}: write 256 MiB in {:.2}s ({:.0} MiB/s), read in {:.2}s ({:.0} MiB/s)",
            w.as_secs_f64(),
            mibs(w),
            r.as_secs_f64(),
            mibs(r)
        );
    }
    task.abort();
}
