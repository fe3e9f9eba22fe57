//! The Unix socket a VMM connects to, and one frontend connection after another.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use strata_nbd::BlockTarget;
use tokio::io::unix::AsyncFd;
use tokio::runtime::Handle;
use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;
use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::{Error as DaemonError, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use crate::backend::{BlkBackend, DRAIN_TIMEOUT};
use crate::blk::Geometry;
use crate::VhostBlkOptions;

/// Pause after a connection that could not be set up.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(200);

/// Serves `target` as a vhost-user-blk device on `socket_path` until
/// `shutdown` is cancelled, with [`VhostBlkOptions::default`].
///
/// A stale socket file at `socket_path` is removed first (any other kind of
/// file, or a socket another server still listens on, is an error); the
/// socket file is removed again on return. One frontend is served at a
/// time: when it disconnects (QEMU stopped, or reconnecting), the next
/// connection is accepted. Errors of one connection are logged and do not
/// end the server; the function returns an error only when the socket
/// cannot be set up or waited on.
pub async fn serve(
    socket_path: &Path,
    target: Arc<dyn BlockTarget>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    serve_with_options(socket_path, target, VhostBlkOptions::default(), shutdown).await
}

/// [`serve`] with explicit options.
pub async fn serve_with_options(
    socket_path: &Path,
    target: Arc<dyn BlockTarget>,
    options: VhostBlkOptions,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let geo = Geometry::new(
        target.size_bytes(),
        target.block_sizes(),
        target.read_only(),
        options.blk_size,
        options.num_queues,
    )
    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let serial = options
        .serial
        .clone()
        .or_else(|| target.description())
        .unwrap_or_else(|| "strata-vhost".to_owned());

    remove_stale_socket(socket_path)?;
    let listener = UnixListener::bind(socket_path)?;
    let _socket_file = SocketFile(socket_path.to_owned());
    listener.set_nonblocking(true)?;
    // SAFETY: a `UnixListener` owns its fd, which stays open and unchanged
    // until the `AsyncFd` (which owns the listener) is dropped.
    let listener = unsafe { AsyncFd::register(listener) }.map_err(io::Error::from)?;
    tracing::info!(
        socket = %socket_path.display(),
        capacity_bytes = geo.addressable_bytes(),
        blk_size = geo.blk_size,
        queues = geo.num_queues,
        "vhost-user-blk: listening"
    );

    let rmw = Arc::new(RwLock::new(()));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            ready = listener.readable() => {
                let mut ready = ready?;
                if !connection_pending(listener.get_ref())? {
                    ready.clear_ready();
                    continue;
                }
            }
        }
        let frontend = Frontend {
            geo: geo.clone(),
            target: target.clone(),
            rmw: rmw.clone(),
            serial: serial.clone(),
        };
        if let Err(e) = frontend.serve(listener.get_ref(), &shutdown).await {
            tracing::warn!(error = %e, "vhost-user-blk: frontend connection failed");
            // Do not spin if every accept fails (e.g. out of file descriptors).
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(ACCEPT_BACKOFF) => {}
            }
        }
        if shutdown.is_cancelled() {
            break;
        }
    }
    tracing::info!(socket = %socket_path.display(), "vhost-user-blk: shut down");
    Ok(())
}

/// Removes the socket file on the way out of [`serve_with_options`].
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(socket = %self.0.display(), error = %e, "vhost-user-blk: cannot remove socket file");
            }
        }
    }
}

/// Removes a socket left behind at `path` by an earlier run; refuses to
/// remove anything else, or a socket some process still listens on.
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is in use by another server", path.display()),
                ));
            }
            tracing::info!(socket = %path.display(), "vhost-user-blk: removing stale socket");
            std::fs::remove_file(path)
        }
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether `accept` on the listener would return a connection right away.
fn connection_pending(listener: &UnixListener) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: `pfd` is one valid pollfd for the duration of the call,
        // and a zero timeout does not block.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        if n >= 0 {
            return Ok(n > 0 && pfd.revents & libc::POLLIN != 0);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Everything one frontend connection needs.
struct Frontend {
    geo: Geometry,
    target: Arc<dyn BlockTarget>,
    rmw: Arc<RwLock<()>>,
    serial: String,
}

impl Frontend {
    /// Accepts the pending connection and serves it until the frontend
    /// disconnects or `shutdown` is cancelled.
    async fn serve(self, listener: &UnixListener, shutdown: &CancellationToken) -> io::Result<()> {
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let backend = Arc::new(BlkBackend::new(
            self.geo,
            self.target,
            Handle::current(),
            mem.clone(),
            self.rmw,
            &self.serial,
        )?);
        let mut daemon = VhostUserDaemon::new("strata-vhost".to_owned(), backend.clone(), mem)
            .map_err(daemon_error)?;

        // The daemon accepts on its own `Listener`: hand it a duplicate of
        // ours, switched to blocking mode so that its accept loop cannot
        // spin (a connection is pending, so accept returns at once).
        let accept_fd = listener.try_clone()?;
        accept_fd.set_nonblocking(false)?;
        let mut accept_listener = Listener::from(accept_fd);
        let (mut daemon, started) = tokio::task::spawn_blocking(move || {
            let r = daemon.start(&mut accept_listener);
            (daemon, r)
        })
        .await
        .map_err(io::Error::other)?;
        // Both fds share one open file description: back to non-blocking.
        listener.set_nonblocking(true)?;
        if let Err(e) = started {
            finish(daemon, backend).await;
            return Err(daemon_error(e));
        }
        tracing::info!("vhost-user-blk: frontend connected");

        let stop = daemon.shutdown_handle();
        let mut waiter = tokio::task::spawn_blocking(move || {
            let r = daemon.wait();
            (daemon, r)
        });
        let (daemon, result) = tokio::select! {
            r = &mut waiter => r,
            _ = shutdown.cancelled() => {
                // Finish what was taken off the rings while the frontend is
                // still connected, so that the used rings account for every
                // request this backend started: QEMU resumes from the used
                // index when it reconnects (to a restarted backend).
                backend.stop_popping();
                let b = backend.clone();
                match tokio::task::spawn_blocking(move || b.drain(DRAIN_TIMEOUT)).await {
                    Ok(true) => {}
                    _ => tracing::error!(
                        in_flight = backend.in_flight(),
                        "vhost-user-blk: requests still running at shutdown"
                    ),
                }
                if let Some(stop) = stop {
                    stop.shutdown();
                }
                waiter.await
            }
        }
        .map_err(io::Error::other)?;
        match result {
            Ok(()) => tracing::info!("vhost-user-blk: frontend disconnected"),
            Err(DaemonError::HandleRequest(
                VhostUserError::Disconnected | VhostUserError::PartialMessage,
            )) => tracing::info!("vhost-user-blk: frontend disconnected"),
            Err(e) if shutdown.is_cancelled() => {
                tracing::debug!(error = %e, "vhost-user-blk: connection closed for shutdown")
            }
            Err(e) => tracing::warn!(error = %e, "vhost-user-blk: frontend connection ended"),
        }
        finish(daemon, backend).await;
        Ok(())
    }
}

/// Waits for the requests the target is still working on, then stops the
/// daemon's vring worker and releases its resources.
async fn finish(daemon: VhostUserDaemon<Arc<BlkBackend>>, backend: Arc<BlkBackend>) {
    let r = tokio::task::spawn_blocking(move || {
        if !backend.drain(DRAIN_TIMEOUT) {
            tracing::error!(
                in_flight = backend.in_flight(),
                "vhost-user-blk: requests still running after the frontend left"
            );
        }
        // Dropping the daemon drops its handler, which tells the vring worker
        // to exit and joins it.
        drop(daemon);
        backend.close_exit_fd();
    })
    .await;
    if let Err(e) = r {
        tracing::error!(error = %e, "vhost-user-blk: cleanup after a connection failed");
    }
}

fn daemon_error(e: DaemonError) -> io::Error {
    io::Error::other(format!("vhost-user daemon: {e}"))
}
