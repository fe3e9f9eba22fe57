//! The servers under test: a one-node Strata, OpenStack Swift (Debian) and, optionally,
//! a one-node Ceph (Debian), each on loopback, each stopped by PID when its guard drops
//! (also on error or panic).

use crate::client::{self, Endpoint};
use crate::procstat;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The bench's peer setup script, shipped inside the binary.
pub const PEERS_SCRIPT: &str = include_str!("../../../scripts/bench-peers.sh");

pub const SWIFT_PROXY_PORT: u16 = 18081;
pub const SWIFT_USER: &str = "bench:bench";
pub const SWIFT_KEY: &str = "benchkey";
pub const STRATA_USER: &str = "admin:admin";
/// radosgw's port unless `CEPH_RGW_PORT` says otherwise (the script reads the same).
pub const CEPH_RGW_PORT: u16 = 17480;
pub const CEPH_USER: &str = "bench-ceph:swift";
pub const CEPH_KEY: &str = "cephbenchkey";
pub const CEPH_RBD_POOL: &str = "bench-rbd";

/// Processes started for a peer; all of them (and their descendants) are stopped on drop.
#[derive(Default)]
pub struct ProcGuard {
    children: Vec<Child>,
    pids: Vec<u32>,
}

impl ProcGuard {
    /// Take charge of a started process.
    pub fn push(&mut self, child: Child) {
        self.children.push(child);
    }

    pub fn pids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.children.iter().map(|c| c.id()).collect();
        v.extend(&self.pids);
        v
    }

    /// SIGTERM to every process of the tree, then SIGKILL to what is left after 10 s.
    pub fn stop(&mut self) {
        let all = procstat::with_descendants(&self.pids());
        signal(&all, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            for c in &mut self.children {
                let _ = c.try_wait();
            }
            let alive: Vec<u32> = all.iter().copied().filter(|p| alive(*p)).collect();
            if alive.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                signal(&alive, libc::SIGKILL);
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
        self.children.clear();
        self.pids.clear();
    }
}

impl Drop for ProcGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

fn signal(pids: &[u32], sig: i32) {
    for &p in pids {
        // SAFETY: kill(2) with a pid we started (or one of its descendants).
        unsafe {
            libc::kill(p as libc::pid_t, sig);
        }
    }
}

/// Alive and not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// A started server: how to reach it and which processes are its.
pub struct Peer {
    pub name: String,
    pub endpoint: Endpoint,
    pub guard: ProcGuard,
    /// Strata only: its rpc address and NBD port.
    pub rpc_addr: Option<String>,
    pub nbd_port: Option<u16>,
    /// Ceph only: the cluster's config file (for `rbd` and fio's rbd engine).
    pub ceph_conf: Option<PathBuf>,
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Ports of a bench node: keystone, swift, rpc, nbd, cinder, compute, glance.
pub type StrataPorts = [u16; 7];

/// The `strata serve --config` file of a one-node bench node with `replicas` disks of
/// `capacity_bytes` each (`disk0`, `disk1`, ...) and as many replicas: placement never puts
/// two replicas on one disk, so every replica is written to its own data file.
pub fn strata_config(
    data_dir: &Path,
    ports: StrataPorts,
    capacity_bytes: u64,
    replicas: u32,
) -> String {
    let [keystone, swift, rpc, nbd, cinder, compute, glance] = ports;
    let dir = data_dir
        .display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    let replicas = replicas.max(1);
    let disks: String = (0..replicas)
        .map(|i| format!("[[disks]]\npath = \"disk{i}\"\ncapacity-bytes = {capacity_bytes}\n\n"))
        .collect();
    format!(
        "node-id = 1\n\
         zone = \"zone1\"\n\
         data-dir = \"{dir}\"\n\
         bind = \"127.0.0.1\"\n\
         \n\
         [ports]\n\
         keystone = {keystone}\n\
         swift = {swift}\n\
         rpc = {rpc}\n\
         nbd = {nbd}\n\
         cinder = {cinder}\n\
         compute = {compute}\n\
         glance = {glance}\n\
         \n\
         {disks}\
         [cluster]\n\
         replicas = {replicas}\n\
         write-quorum = {quorum}\n\
         part-power = 8\n",
        quorum = replicas / 2 + 1,
    )
}

/// Polls TempAuth until it answers (or the process dies, or `timeout`).
async fn wait_auth(
    auth_url: &str,
    user: &str,
    key: &str,
    timeout: Duration,
    guard: &mut ProcGuard,
) -> Result<Endpoint> {
    let deadline = Instant::now() + timeout;
    loop {
        for c in &mut guard.children {
            if let Some(status) = c.try_wait()? {
                bail!("server exited ({status}) before it was ready");
            }
        }
        match client::tempauth(auth_url, user, key).await {
            Ok(ep) => return Ok(ep),
            Err(e) if Instant::now() > deadline => {
                return Err(e).context(format!("{auth_url} not ready after {timeout:?}"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Bytes an unprivileged user may still allocate in the filesystem holding `path`.
fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a valid out-parameter.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Starts `strata serve` with a fresh data dir under `work`: `replicas` disks of
/// `capacity_bytes` each, as many replicas.
pub async fn start_strata(
    bin: &Path,
    work: &Path,
    capacity_bytes: u64,
    replicas: u32,
) -> Result<Peer> {
    let dir = work.join("strata");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    // The node preallocates its whole data files at start; say so plainly when it cannot.
    let total = capacity_bytes * u64::from(replicas.max(1));
    if let Some(free) = free_bytes(&dir) {
        if free < total + (1 << 30) {
            anyhow::bail!(
                "Strata's data files are preallocated at {} GiB and {} has {} GiB free: \
                 free some space or point --work-dir at another filesystem",
                total >> 30,
                dir.display(),
                free >> 30
            );
        }
    }
    let mut ports: StrataPorts = [0; 7];
    for p in &mut ports {
        *p = free_port()?;
    }
    let config = dir.join("node.toml");
    std::fs::write(
        &config,
        strata_config(&dir.join("data"), ports, capacity_bytes, replicas),
    )?;
    let password = format!("bench-{:016x}", rand::random::<u64>());
    let log = std::fs::File::create(dir.join("strata.log"))?;
    let mut guard = ProcGuard::default();
    guard.children.push(
        Command::new(bin)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env("STRATA_ADMIN_PASSWORD", &password)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?,
    );
    let auth = format!("http://127.0.0.1:{}/auth/v1.0", ports[1]);
    let endpoint = wait_auth(
        &auth,
        STRATA_USER,
        &password,
        Duration::from_secs(90),
        &mut guard,
    )
    .await
    .with_context(|| {
        format!(
            "Strata did not start; see {}",
            dir.join("strata.log").display()
        )
    })?;
    Ok(Peer {
        name: "strata".into(),
        endpoint,
        guard,
        rpc_addr: Some(format!("127.0.0.1:{}", ports[2])),
        nbd_port: Some(ports[3]),
        ceph_conf: None,
    })
}

/// Writes the peers script under `work` and returns its path.
pub fn write_script(work: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(work)?;
    let path = work.join("bench-peers.sh");
    std::fs::write(&path, PEERS_SCRIPT)?;
    Ok(path)
}

/// Runs one command of the peers script; its stdout, or an error with both outputs.
fn run_script(script: &Path, args: &[&str], env: &[(&str, String)]) -> Result<String> {
    let o = Command::new("bash")
        .arg(script)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .stdin(Stdio::null())
        .output()?;
    if !o.status.success() {
        bail!(
            "bench-peers.sh {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Runs a `start` command of the peers script and takes charge of the processes it
/// reports ("<name> <pid>" lines), also when it fails half way.
fn start_script(
    script: &Path,
    args: &[&str],
    env: &[(&str, String)],
    guard: &mut ProcGuard,
) -> Result<()> {
    let started = Command::new("bash")
        .arg(script)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .stdin(Stdio::null())
        .output()?;
    guard
        .pids
        .extend(started_pids(&String::from_utf8_lossy(&started.stdout)));
    if !started.status.success() {
        bail!(
            "bench-peers.sh {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&started.stderr).trim()
        );
    }
    Ok(())
}

/// The PIDs in the script's "<name> <pid>" lines.
fn started_pids(stdout: &str) -> Vec<u32> {
    stdout
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect()
}

/// Empties Swift's devices under `work/swift/srv`, keeping the directories.
pub fn clear_swift_devices(work: &Path) {
    let Ok(devices) = std::fs::read_dir(work.join("swift/srv")) else {
        return;
    };
    for dev in devices.flatten() {
        for e in std::fs::read_dir(dev.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Installs (if missing), sets up and starts Swift under `work/swift` with `replicas`
/// replicas, each on its own device.
pub async fn start_swift(work: &Path, replicas: u32) -> Result<Peer> {
    let script = write_script(work)?;
    let env = [("SWIFT_REPLICAS", replicas.max(1).to_string())];
    let run = |args: &[&str]| run_script(&script, args, &env);
    let work_s = work.display().to_string();
    run(&["install"])?;
    run(&["setup", &work_s])?;
    // Old objects would make the comparison unfair (bigger containers, fuller disk).
    clear_swift_devices(work);
    let mut guard = ProcGuard::default();
    // The PIDs are recorded even if start fails half way, so they are stopped.
    start_script(&script, &["start", &work_s], &env, &mut guard).context("starting Swift")?;
    let auth = format!("http://127.0.0.1:{SWIFT_PROXY_PORT}/auth/v1.0");
    let endpoint = wait_auth(
        &auth,
        SWIFT_USER,
        SWIFT_KEY,
        Duration::from_secs(60),
        &mut guard,
    )
    .await?;
    Ok(Peer {
        name: "swift".into(),
        endpoint,
        guard,
        rpc_addr: None,
        nbd_port: None,
        ceph_conf: None,
    })
}

/// radosgw's port: `CEPH_RGW_PORT` from the environment (the script honours it too), or
/// the default.
pub fn ceph_rgw_port() -> u16 {
    std::env::var("CEPH_RGW_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(CEPH_RGW_PORT)
}

/// Installs (if missing), sets up and starts a fresh one-node Ceph under `work/ceph`:
/// ceph-mon, ceph-mgr, one BlueStore OSD on an `osd_bytes` sparse file, and radosgw,
/// whose Swift API is the endpoint. Whatever an earlier run left there is removed first.
pub async fn start_ceph(work: &Path, osd_bytes: u64) -> Result<Peer> {
    let script = write_script(work)?;
    let dir = work.join("ceph");
    if dir.exists() {
        // An interrupted run may have left daemons: stop them by their recorded PIDs.
        let _ = run_script(&script, &["ceph-stop", &work.display().to_string()], &[]);
        std::fs::remove_dir_all(&dir)?;
    }
    if let Some(free) = free_bytes(work) {
        if free < osd_bytes + (2 << 30) {
            bail!(
                "Ceph's OSD file may grow to {} GiB and {} has {} GiB free: \
                 free some space or point --work-dir at another filesystem",
                osd_bytes >> 30,
                work.display(),
                free >> 30
            );
        }
    }
    let env = [("CEPH_OSD_BYTES", osd_bytes.to_string())];
    let work_s = work.display().to_string();
    run_script(&script, &["ceph-install"], &env)?;
    run_script(&script, &["ceph-setup", &work_s], &env)?;
    let mut guard = ProcGuard::default();
    start_script(&script, &["ceph-start", &work_s], &env, &mut guard)
        .with_context(|| format!("starting Ceph; see {}", dir.join("log").display()))?;
    let auth = format!("http://127.0.0.1:{}/auth/1.0", ceph_rgw_port());
    let endpoint = wait_auth(
        &auth,
        CEPH_USER,
        CEPH_KEY,
        Duration::from_secs(60),
        &mut guard,
    )
    .await?;
    Ok(Peer {
        name: "ceph".into(),
        endpoint,
        guard,
        rpc_addr: None,
        nbd_port: None,
        ceph_conf: Some(dir.join("ceph.conf")),
    })
}

/// Copies the Ceph daemons' logs (and the script's outputs) from `work` into `dest`;
/// returns how many files were copied.
pub fn keep_ceph_logs(work: &Path, dest: &Path) -> Result<usize> {
    std::fs::create_dir_all(dest)?;
    let mut n = 0;
    for e in std::fs::read_dir(work.join("ceph/log"))?.flatten() {
        if e.file_type()?.is_file() {
            std::fs::copy(e.path(), dest.join(e.file_name()))?;
            n += 1;
        }
    }
    let conf = work.join("ceph/ceph.conf");
    if conf.exists() {
        std::fs::copy(&conf, dest.join("ceph.conf"))?;
    }
    Ok(n)
}

/// Removes everything a Ceph run left under `work` (the BlueStore file included). Call
/// once its processes are stopped.
pub fn remove_ceph(work: &Path) {
    let _ = std::fs::remove_dir_all(work.join("ceph"));
}

/// Creates the bench's rbd image of `size` bytes in the bench pool; returns its name.
pub fn create_rbd_image(conf: &Path, size: u64) -> Result<String> {
    let image = "bench";
    let o = Command::new("rbd")
        .arg("-c")
        .arg(conf)
        .args(["create", &format!("{CEPH_RBD_POOL}/{image}")])
        .args(["--size", &format!("{}M", size.div_ceil(1 << 20))])
        .stdin(Stdio::null())
        .output()
        .context("running rbd (install ceph-common)")?;
    if !o.status.success() {
        bail!(
            "rbd create {CEPH_RBD_POOL}/{image}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(image.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strata_config_has_every_key() {
        let c = strata_config(
            Path::new("/tmp/b/data"),
            [15000, 18080, 17400, 10900, 18776, 18774, 19292],
            1 << 30,
            1,
        );
        for want in [
            "node-id = 1",
            "data-dir = \"/tmp/b/data\"",
            "bind = \"127.0.0.1\"",
            "[ports]\nkeystone = 15000\nswift = 18080\nrpc = 17400\nnbd = 10900\ncinder = 18776\ncompute = 18774\nglance = 19292",
            "[[disks]]\npath = \"disk0\"\ncapacity-bytes = 1073741824",
            "[cluster]\nreplicas = 1\nwrite-quorum = 1",
        ] {
            assert!(c.contains(want), "missing {want:?} in\n{c}");
        }
        assert!(!c.contains("disk1"), "{c}");
    }

    #[test]
    fn strata_config_gives_each_replica_a_disk() {
        let c = strata_config(Path::new("/tmp/b/data"), [1; 7], 1 << 30, 3);
        for want in [
            "[[disks]]\npath = \"disk0\"\ncapacity-bytes = 1073741824",
            "[[disks]]\npath = \"disk1\"\ncapacity-bytes = 1073741824",
            "[[disks]]\npath = \"disk2\"\ncapacity-bytes = 1073741824",
            "[cluster]\nreplicas = 3\nwrite-quorum = 2",
        ] {
            assert!(c.contains(want), "missing {want:?} in\n{c}");
        }
        assert!(!c.contains("disk3"), "{c}");
    }

    #[test]
    fn script_is_embedded() {
        assert!(PEERS_SCRIPT.contains("swift-ring-builder"));
        assert!(PEERS_SCRIPT.contains("mount_check = false"));
        // One ring device per replica.
        assert!(PEERS_SCRIPT.contains("create 8 \"$REPLICAS\" 1"));
    }

    #[test]
    fn script_sets_ceph_up_as_the_bench_expects() {
        // The Rust side's constants and the script's defaults must agree.
        for want in [
            format!("CEPH_RGW_PORT=${{CEPH_RGW_PORT:-{CEPH_RGW_PORT}}}"),
            format!("CEPH_RBD_POOL=${{CEPH_RBD_POOL:-{CEPH_RBD_POOL}}}"),
            format!(
                "CEPH_SWIFT_UID={}",
                CEPH_USER.strip_suffix(":swift").unwrap()
            ),
            format!("CEPH_SWIFT_KEY=${{CEPH_SWIFT_KEY:-{CEPH_KEY}}}"),
            "CEPH_OSD_BYTES=${CEPH_OSD_BYTES:-12884901888}".into(),
            // Loopback only, no authentication, one replica, BlueStore on a file.
            "rgw frontends = beast endpoint=127.0.0.1:$CEPH_RGW_PORT".into(),
            "mon host = [v2:127.0.0.1:$CEPH_MON_V2_PORT,v1:127.0.0.1:$CEPH_MON_PORT]".into(),
            "auth client required = none".into(),
            "ms mon client mode = crc secure".into(),
            "osd pool default size = 1".into(),
            "mon allow pool size one = true".into(),
            "bluestore block create = true".into(),
            "rgw swift account in url = true".into(),
        ] {
            assert!(
                PEERS_SCRIPT.contains(&want),
                "bench-peers.sh lacks {want:?}"
            );
        }
        for cmd in ["ceph-install)", "ceph-setup)", "ceph-start)", "ceph-stop)"] {
            assert!(PEERS_SCRIPT.contains(cmd), "bench-peers.sh lacks {cmd}");
        }
    }

    #[test]
    fn reads_started_pids() {
        let out = "ceph-mon 101\nceph-mgr 102\nnoise\nradosgw 104\n";
        assert_eq!(started_pids(out), vec![101, 102, 104]);
    }

    #[test]
    fn guard_stops_its_processes() {
        let mut g = ProcGuard::default();
        g.children
            .push(Command::new("sleep").arg("30").spawn().unwrap());
        let pid = g.pids()[0];
        assert!(alive(pid));
        g.stop();
        assert!(!alive(pid));
    }
}
