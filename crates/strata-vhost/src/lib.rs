//! vhost-user-blk backend: serves a [`BlockTarget`] to a VMM on the same host
//! over a Unix socket, so a QEMU guest reaches Strata without a TCP hop.
//!
//! ```text
//! qemu-system-x86_64 -M pc,memory-backend=mem \
//!     -object memory-backend-memfd,id=mem,size=256M,share=on \
//!     -chardev socket,id=c0,path=/run/strata/vol.sock \
//!     -device vhost-user-blk-pci,chardev=c0 ...
//! ```
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use std::path::Path;
//! use std::sync::Arc;
//! use strata_nbd::MemTarget;
//! use tokio_util::sync::CancellationToken;
//!
//! let shutdown = CancellationToken::new();
//! let target = Arc::new(MemTarget::new(1 << 30));
//! strata_vhost::serve(Path::new("/run/strata/vol.sock"), target, shutdown).await
//! # }
//! ```
//!
//! # Design
//!
//! The protocol is vhost-user (QEMU's `docs/interop/vhost-user.rst`) carrying
//! a virtio-blk device (virtio 1.2, "Block Device"). The rust-vmm crates do the
//! generic parts: `vhost` parses the frontend's messages (with the file
//! descriptors passed alongside), `vm-memory` maps the guest RAM the frontend
//! shares as memfd regions, `virtio-queue` walks split virtqueues and their
//! descriptor chains (indirect tables included), and `vhost-user-backend`
//! ties these together. This crate supplies the device: feature bits, the
//! config space (capacity, `blk_size`, segment and discard limits, queue
//! count) and the request path.
//!
//! **Threads.** [`serve`] runs on the caller's tokio runtime. It owns the
//! listening socket and serves one frontend at a time; when one disconnects
//! it waits for that connection's requests to finish, tears it down and
//! accepts the next (QEMU reconnects the same way after a backend restart).
//! Each connection has two threads of `vhost-user-backend`: one reads
//! vhost-user messages from the socket (memory table, vring addresses,
//! kick/call eventfds, `GET_CONFIG`...), one — the vring worker — waits on
//! the kick eventfds of all queues.
//!
//! **Requests.** On a kick the vring worker pops every available descriptor
//! chain of the queue (with `VIRTIO_RING_F_EVENT_IDX`, until no new one came
//! in while notifications were off), splits it into header, payload and status
//! byte, validates the request and copies a write's payload out of guest
//! memory. It then spawns the target call on the tokio runtime and goes on
//! with the next chain, so a queue has as many requests in flight as the
//! guest submits (up to the queue size). When the target answers, the task
//! copies read data into the guest's buffers, writes the status byte, puts the
//! chain on the used ring and signals the call eventfd unless the driver
//! suppressed the interrupt. Requests complete out of order, which virtio-blk
//! allows.
//!
//! **Alignment.** The device advertises a 4 KiB logical block size (or the
//! target's minimum I/O size if larger) unless told otherwise, so Linux
//! guests send aligned I/O.
//! A request that is not aligned to the target's minimum anyway is still
//! served: reads are widened and trimmed, writes and write-zeroes read the
//! partial blocks at either end and write them back whole, under a lock that
//! keeps two read-modify-writes off the same block at once. Requests larger
//! than the target's largest payload are split. The guest sees the target's
//! size rounded down to the block size.
//!
//! **Requests handled.** IN, OUT, FLUSH, GET_ID (the serial from
//! [`VhostBlkOptions::serial`], else the target's description), DISCARD (the
//! aligned part of each range is trimmed) and WRITE_ZEROES (with the unmap
//! flag when the guest allows it); any other type gets
//! `VIRTIO_BLK_S_UNSUPP`. There is no FUA in virtio-blk: the guest flushes.
//!
//! **Failures.** Nothing a guest or frontend sends makes the backend panic:
//! a chain without a writable status byte, with a readable descriptor after
//! a writable one, with a short header or payload, with guest addresses that
//! are not mapped, or a request beyond the capacity or the advertised limits
//! is answered `VIRTIO_BLK_S_IOERR` (or returned with no status when it has
//! no status byte) and logged. A target error is `VIRTIO_BLK_S_IOERR`
//! (`VIRTIO_BLK_S_UNSUPP` for "not supported") and a log line. A vhost-user
//! protocol error ends that connection only. When the frontend stops a queue
//! (`GET_VRING_BASE`, e.g. guest reset or QEMU stop) or disconnects, the
//! backend waits up to 30 s for that queue's requests to complete before
//! answering, so none is lost; a target that takes longer is logged as an
//! error.
//!
//! **Restarts.** On shutdown the backend stops taking requests off the
//! rings, waits (up to 30 s) for those it took, and only then closes the
//! connection. QEMU started with `-chardev socket,...,reconnect-ms=N`
//! reconnects to the next backend on the socket and resumes from the used
//! index, so a graceful restart loses no request and the guest only sees a
//! pause. If the backend process dies instead, QEMU still resumes from the
//! used index: requests the dead backend had started are fetched again
//! unless a later one had completed before them, in which case they are lost
//! and the guest waits for them (the inflight-shmem protocol feature that
//! tracks them is not offered).
//!
//! Not offered: `VIRTIO_F_RING_PACKED`, `CONFIG_WCE`, `TOPOLOGY`,
//! inflight-shmem, live migration and postcopy.

mod backend;
pub mod blk;
mod server;

pub use server::{serve, serve_with_options};
pub use strata_nbd::BlockTarget;

/// Settings of a served device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhostBlkOptions {
    /// Logical block size shown to the guest (power of two, 512..=65536).
    /// Default (`None`): 4096, or the target's minimum I/O size if larger. A
    /// size below the target's minimum works, at the cost of
    /// read-modify-write for every partial target block.
    pub blk_size: Option<u32>,
    /// Virtqueues offered (1..=32). QEMU's `vhost-user-blk-pci` uses one per
    /// vCPU unless given `num-queues`, and refuses a backend with fewer.
    /// Default 16.
    pub num_queues: u16,
    /// Device ID returned by `VIRTIO_BLK_T_GET_ID` (at most 20 bytes are
    /// used; Linux shows it as `/sys/block/vdX/serial`). Default: the
    /// target's description, else `strata-vhost`.
    pub serial: Option<String>,
}

impl Default for VhostBlkOptions {
    fn default() -> Self {
        VhostBlkOptions {
            blk_size: None,
            num_queues: 16,
            serial: None,
        }
    }
}
