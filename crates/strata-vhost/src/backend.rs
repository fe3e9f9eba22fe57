//! The vhost-user device: what `vhost-user-backend` asks of a backend
//! (features, config space, queue events), and the path of one request from
//! the virtqueue to the block target and back.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use strata_nbd::{BlockTarget, NbdError, NbdResult};
use tokio::runtime::Handle;
use tokio::sync::RwLock;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{
    Bytes as _, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryLoadGuard,
    GuestMemoryMmap,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::blk::{
    self, align_in, align_out, chunks, parse_layout, plan, Geometry, Header, Request, Segment,
    Status, ZeroRange, HEADER_SIZE, ID_BYTES, MAX_CHAIN_DESCRIPTORS,
};

/// Guest memory as mapped from the frontend's `SET_MEM_TABLE`.
pub(crate) type Mem = GuestMemoryAtomic<GuestMemoryMmap>;
type MemGuard = GuestMemoryLoadGuard<GuestMemoryMmap>;
type Vring = VringRwLock<Mem>;

/// Largest virtqueue the frontend may configure.
pub(crate) const MAX_QUEUE_SIZE: usize = 1024;
/// How long stopping a queue (or a disconnect) waits for requests the
/// target is still working on.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Requests of one queue handed to the target and not yet completed.
#[derive(Default)]
pub(crate) struct InFlight {
    count: Mutex<usize>,
    idle: Condvar,
}

impl InFlight {
    fn begin(self: &Arc<Self>) -> InFlightGuard {
        *self.count.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        InFlightGuard(self.clone())
    }

    pub(crate) fn count(&self) -> usize {
        *self.count.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Blocks until no request is in flight, or `timeout`; true when idle.
    pub(crate) fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut n = self.count.lock().unwrap_or_else(|e| e.into_inner());
        while *n > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            n = self
                .idle
                .wait_timeout(n, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

/// Counts one request until dropped (also when its task is cancelled).
struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut n = self.0.count.lock().unwrap_or_else(|e| e.into_inner());
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.0.idle.notify_all();
        }
    }
}

/// What a request needs once the target has answered: where to put the
/// data and the status, and which descriptor to return.
struct Completion {
    queue: usize,
    vring: Vring,
    mem: MemGuard,
    head: u16,
    status_addr: u64,
    in_data: Vec<Segment>,
    _inflight: InFlightGuard,
}

/// The vhost-user-blk device of one frontend connection.
pub(crate) struct BlkBackend {
    geo: Geometry,
    target: Arc<dyn BlockTarget>,
    runtime: Handle,
    mem: Mem,
    event_idx: AtomicBool,
    /// Set on shutdown: leave new requests in the rings (for the next backend).
    stopping: AtomicBool,
    inflight: Vec<Arc<InFlight>>,
    /// Held shared by writes, exclusively by read-modify-writes of partial
    /// target blocks, so that two of those never interleave on one block.
    rmw: Arc<RwLock<()>>,
    id: [u8; ID_BYTES],
    /// The exit eventfd of the vring worker, until the library asks for it.
    exit: Mutex<Option<(EventConsumer, EventNotifier)>>,
    /// Raw fd of that eventfd's consumer end: `vhost-user-backend` puts it in
    /// the worker's epoll set with `into_raw_fd` and never closes it.
    exit_fd: RawFd,
}

impl BlkBackend {
    pub(crate) fn new(
        geo: Geometry,
        target: Arc<dyn BlockTarget>,
        runtime: Handle,
        mem: Mem,
        rmw: Arc<RwLock<()>>,
        serial: &str,
    ) -> io::Result<Self> {
        let inflight = (0..geo.num_queues).map(|_| Arc::default()).collect();
        let (consumer, notifier) =
            new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC)?;
        let exit_fd = consumer.as_raw_fd();
        Ok(BlkBackend {
            geo,
            target,
            runtime,
            mem,
            event_idx: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            inflight,
            rmw,
            id: blk::device_id(serial),
            exit: Mutex::new(Some((consumer, notifier))),
            exit_fd,
        })
    }

    /// Stops taking requests off the virtqueues; those already taken go on.
    /// What the guest submits from now on stays in the rings, where QEMU
    /// finds it again for the backend it reconnects to.
    pub(crate) fn stop_popping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Requests handed to the target and not completed, over all queues.
    pub(crate) fn in_flight(&self) -> usize {
        self.inflight.iter().map(|f| f.count()).sum()
    }

    /// Waits (blocking) until every queue is idle or `timeout` passed.
    pub(crate) fn drain(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        self.inflight
            .iter()
            .all(|f| f.wait_idle(deadline.saturating_duration_since(Instant::now())))
    }

    /// Closes the exit eventfd of the vring worker.
    ///
    /// Only call this once the daemon that used this backend is dropped: its
    /// worker is then joined and its epoll set closed, so nothing refers to
    /// the fd any more.
    pub(crate) fn close_exit_fd(&self) {
        let unused = self.exit.lock().unwrap_or_else(|e| e.into_inner()).take();
        if unused.is_some() {
            // Never handed out: dropping it closes it.
            return;
        }
        // SAFETY: `exit_fd` is the consumer end of the eventfd created in
        // `new`; the library took it over with `into_raw_fd` and never closes
        // it; its only user, the worker's epoll set, is gone (see above), so
        // the fd is still open and closing it cannot affect anything else.
        unsafe { libc::close(self.exit_fd) };
    }

    /// Pops and starts every available request of `queue`.
    fn process_queue(&self, queue: usize, vring: &Vring) {
        let Some(inflight) = self.inflight.get(queue) else {
            tracing::warn!(queue, "vhost-user-blk: event for an unknown queue");
            return;
        };
        let event_idx = self.event_idx.load(Ordering::Acquire);
        loop {
            if event_idx {
                if let Err(e) = vring.disable_notification() {
                    tracing::warn!(queue, error = %e, "vhost-user-blk: cannot disable queue notifications");
                }
            }
            loop {
                let mem = self.mem.memory();
                // Counted before it is popped: once the frontend has stopped
                // the queue (which pop observes), `stop_vring` sees every
                // request popped before that.
                let pending = inflight.begin();
                if self.stopping.load(Ordering::SeqCst) {
                    return;
                }
                let chain = vring
                    .get_mut()
                    .get_queue_mut()
                    .pop_descriptor_chain(mem.clone());
                match chain {
                    Some(chain) => self.start_request(queue, vring, mem, chain, pending),
                    None => break,
                }
            }
            if !event_idx {
                break;
            }
            match vring.enable_notification() {
                // More requests arrived while notifications were off.
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!(queue, error = %e, "vhost-user-blk: cannot enable queue notifications");
                    break;
                }
            }
        }
    }

    /// Validates one request and completes it, or hands it to the target.
    fn start_request(
        &self,
        queue: usize,
        vring: &Vring,
        mem: MemGuard,
        chain: DescriptorChain<MemGuard>,
        pending: InFlightGuard,
    ) {
        let head = chain.head_index();
        let segs: Vec<Segment> = chain
            .take(MAX_CHAIN_DESCRIPTORS + 1)
            .map(|d| Segment {
                addr: d.addr().0,
                len: d.len(),
                writable: d.is_write_only(),
            })
            .collect();
        let layout = match parse_layout(&segs) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(queue, head, error = %e, "vhost-user-blk: malformed request");
                let used = match blk::status_addr(&segs) {
                    Some(addr) if write_status(&mem, addr, Status::IoErr) => 1,
                    _ => 0,
                };
                complete(queue, vring, head, used);
                return;
            }
        };
        let fail = |status: Status, why: &str| {
            if status == Status::Unsupported {
                tracing::debug!(queue, head, "vhost-user-blk: unsupported request: {why}");
            } else {
                tracing::warn!(queue, head, "vhost-user-blk: request failed: {why}");
            }
            let used = u32::from(write_status(&mem, layout.status_addr, status));
            complete(queue, vring, head, used);
        };

        let mut hdr = [0u8; HEADER_SIZE as usize];
        if let Err(e) = gather(&mem, &layout.header, &mut hdr) {
            return fail(Status::IoErr, &format!("cannot read header: {e}"));
        }
        let hdr = Header::parse(&hdr);
        let out_len = layout.out_len();
        let mut discard_payload = None;
        if matches!(
            hdr.request_type,
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES
        ) && blk::check_discard_len(&self.geo, out_len).is_ok()
        {
            let mut buf = vec![0u8; out_len as usize];
            if let Err(e) = gather(&mem, &layout.out_data, &mut buf) {
                return fail(Status::IoErr, &format!("cannot read discard segments: {e}"));
            }
            discard_payload = Some(buf);
        }
        let req = match plan(
            &self.geo,
            &hdr,
            out_len,
            layout.in_len(),
            discard_payload.as_deref(),
        ) {
            Ok(r) => r,
            Err(rej) => return fail(rej.status, &rej.reason),
        };

        let payload = match &req {
            Request::GetId => {
                let n = ID_BYTES.min(layout.in_len() as usize);
                if let Err(e) = scatter(&mem, &layout.in_data, &self.id[..n]) {
                    return fail(Status::IoErr, &format!("cannot write the device ID: {e}"));
                }
                let used = n as u32 + u32::from(write_status(&mem, layout.status_addr, Status::Ok));
                complete(queue, vring, head, used);
                return;
            }
            Request::Write { len, .. } => {
                let mut buf = BytesMut::zeroed(*len as usize);
                if let Err(e) = gather(&mem, &layout.out_data, &mut buf) {
                    return fail(Status::IoErr, &format!("cannot read write payload: {e}"));
                }
                buf.freeze()
            }
            _ => Bytes::new(),
        };

        let done = Completion {
            queue,
            vring: vring.clone(),
            mem,
            head,
            status_addr: layout.status_addr,
            in_data: layout.in_data,
            _inflight: pending,
        };
        let target = self.target.clone();
        let geo = self.geo.clone();
        let rmw = self.rmw.clone();
        self.runtime.spawn(async move {
            let result = execute(&*target, &geo, &rmw, &req, payload).await;
            finish(done, &req, result);
        });
    }
}

/// Runs a validated request against the target; reads return their data.
async fn execute(
    target: &dyn BlockTarget,
    geo: &Geometry,
    rmw: &RwLock<()>,
    req: &Request,
    payload: Bytes,
) -> NbdResult<Option<Bytes>> {
    match req {
        Request::Read { offset, len } => read(target, geo, *offset, *len).await.map(Some),
        Request::Write { offset, .. } => write(target, geo, rmw, *offset, payload)
            .await
            .map(|()| None),
        Request::Flush => target.flush().await.map(|()| None),
        Request::Discard(ranges) => {
            let _shared = rmw.read().await;
            discard(target, geo, ranges).await.map(|()| None)
        }
        Request::WriteZeroes(ranges) => write_zeroes(target, geo, rmw, ranges).await.map(|()| None),
        // Answered in place by `start_request`.
        Request::GetId => Ok(None),
    }
}

fn align(geo: &Geometry) -> u64 {
    u64::from(geo.target_align.max(1))
}

/// Reads `len` bytes at `offset`, widening to the target's alignment and
/// splitting by its largest payload as needed.
async fn read(target: &dyn BlockTarget, geo: &Geometry, offset: u64, len: u64) -> NbdResult<Bytes> {
    if len == 0 {
        return Ok(Bytes::new());
    }
    let (a_off, a_len) = align_out(offset, len, align(geo));
    let pieces = chunks(a_off, a_len, u64::from(geo.target_max_io), align(geo));
    let data = if let [(off, n)] = pieces.as_slice() {
        target.read(*off, *n as usize).await?
    } else {
        let mut buf = BytesMut::with_capacity(a_len as usize);
        for (off, n) in pieces {
            buf.extend_from_slice(&target.read(off, n as usize).await?);
        }
        buf.freeze()
    };
    if data.len() as u64 != a_len {
        return Err(NbdError::io(format!(
            "target read {} bytes, wanted {a_len}",
            data.len()
        )));
    }
    let skip = (offset - a_off) as usize;
    Ok(data.slice(skip..skip + len as usize))
}

/// Writes `data` at `offset`: aligned writes go straight to the target;
/// others read the partial blocks at either end first, under the exclusive
/// read-modify-write lock.
async fn write(
    target: &dyn BlockTarget,
    geo: &Geometry,
    rmw: &RwLock<()>,
    offset: u64,
    data: Bytes,
) -> NbdResult<()> {
    let len = data.len() as u64;
    if len == 0 {
        return Ok(());
    }
    let a = align(geo);
    let (a_off, a_len) = align_out(offset, len, a);
    if a_off == offset && a_len == len {
        let _shared = rmw.read().await;
        return write_aligned(target, geo, offset, data).await;
    }
    let _exclusive = rmw.write().await;
    rmw_locked(target, geo, offset, &data).await
}

/// Read-modify-write of `[offset, offset+data.len())`; the caller holds the
/// exclusive lock.
async fn rmw_locked(
    target: &dyn BlockTarget,
    geo: &Geometry,
    offset: u64,
    data: &[u8],
) -> NbdResult<()> {
    let (a_off, a_len) = align_out(offset, data.len() as u64, align(geo));
    tracing::trace!(
        offset,
        len = data.len(),
        "vhost-user-blk: read-modify-write of a partial block"
    );
    let old = read(target, geo, a_off, a_len).await?;
    let mut buf = BytesMut::from(&old[..]);
    let at = (offset - a_off) as usize;
    buf[at..at + data.len()].copy_from_slice(data);
    write_aligned(target, geo, a_off, buf.freeze()).await
}

async fn write_aligned(
    target: &dyn BlockTarget,
    geo: &Geometry,
    offset: u64,
    data: Bytes,
) -> NbdResult<()> {
    let len = data.len() as u64;
    for (off, n) in chunks(offset, len, u64::from(geo.target_max_io), align(geo)) {
        let at = (off - offset) as usize;
        target
            .write(off, data.slice(at..at + n as usize), false)
            .await?;
    }
    Ok(())
}

/// Discards the aligned part of each range (a discard is only a hint).
async fn discard(target: &dyn BlockTarget, geo: &Geometry, ranges: &[ZeroRange]) -> NbdResult<()> {
    for r in ranges {
        if let Some((off, len)) = align_in(r.offset, r.len, align(geo)) {
            target.trim(off, len, false).await?;
        }
    }
    Ok(())
}

/// Zeroes each range: the aligned middle with the target's `write_zeroes`,
/// partial blocks at the ends by read-modify-write.
async fn write_zeroes(
    target: &dyn BlockTarget,
    geo: &Geometry,
    rmw: &RwLock<()>,
    ranges: &[ZeroRange],
) -> NbdResult<()> {
    let a = align(geo);
    let aligned = ranges
        .iter()
        .all(|r| align_out(r.offset, r.len, a) == (r.offset, r.len));
    let _guard = if aligned {
        (Some(rmw.read().await), None)
    } else {
        (None, Some(rmw.write().await))
    };
    for r in ranges {
        if r.len == 0 {
            continue;
        }
        let end = r.offset + r.len;
        match align_in(r.offset, r.len, a) {
            Some((off, len)) => {
                target.write_zeroes(off, len, false, !r.unmap).await?;
                if r.offset < off {
                    zero_partial(target, geo, r.offset, off - r.offset).await?;
                }
                if off + len < end {
                    zero_partial(target, geo, off + len, end - (off + len)).await?;
                }
            }
            None => zero_partial(target, geo, r.offset, r.len).await?,
        }
    }
    Ok(())
}

async fn zero_partial(
    target: &dyn BlockTarget,
    geo: &Geometry,
    offset: u64,
    len: u64,
) -> NbdResult<()> {
    rmw_locked(target, geo, offset, &vec![0u8; len as usize]).await
}

/// Puts the outcome of a request into the guest's buffers and returns the
/// descriptor chain to the driver.
fn finish(done: Completion, req: &Request, result: NbdResult<Option<Bytes>>) {
    let mut written = 0u32;
    let status = match result {
        Ok(data) => {
            if let Some(data) = data {
                match scatter(&done.mem, &done.in_data, &data) {
                    Ok(()) => {
                        written = data.len() as u32;
                        Status::Ok
                    }
                    Err(e) => {
                        tracing::warn!(queue = done.queue, head = done.head, error = %e,
                            "vhost-user-blk: cannot write read data into guest memory");
                        Status::IoErr
                    }
                }
            } else {
                Status::Ok
            }
        }
        Err(e) => {
            let status = Status::from_error(&e);
            tracing::warn!(queue = done.queue, head = done.head, error = %e, ?req,
                "vhost-user-blk: target error");
            status
        }
    };
    let used = written + u32::from(write_status(&done.mem, done.status_addr, status));
    complete(done.queue, &done.vring, done.head, used);
}

/// Writes the status byte; false (and a log line) if the guest address is bad.
fn write_status(mem: &GuestMemoryMmap, addr: u64, status: Status) -> bool {
    match mem.write_slice(&[status.byte()], GuestAddress(addr)) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(addr, error = %e, "vhost-user-blk: cannot write request status");
            false
        }
    }
}

/// Puts a descriptor chain on the used ring and notifies the driver if it
/// asked to be.
fn complete(queue: usize, vring: &Vring, head: u16, used_len: u32) {
    let mut state = vring.get_mut();
    if let Err(e) = state.add_used(head, used_len) {
        tracing::warn!(queue, head, error = %e, "vhost-user-blk: cannot return descriptor");
        return;
    }
    let notify = match state.needs_notification() {
        Ok(n) => n,
        Err(e) => {
            tracing::debug!(queue, error = %e, "vhost-user-blk: notification check failed");
            true
        }
    };
    if notify {
        if let Err(e) = state.signal_used_queue() {
            tracing::debug!(queue, error = %e, "vhost-user-blk: cannot signal the driver");
        }
    }
}

/// Copies guest memory described by `segs` into `out` (as much as fits).
fn gather(
    mem: &GuestMemoryMmap,
    segs: &[Segment],
    out: &mut [u8],
) -> Result<(), vm_memory::GuestMemoryError> {
    let mut at = 0usize;
    for s in segs {
        if at >= out.len() {
            break;
        }
        let n = (s.len as usize).min(out.len() - at);
        mem.read_slice(&mut out[at..at + n], GuestAddress(s.addr))?;
        at += n;
    }
    Ok(())
}

/// Copies `data` into guest memory described by `segs` (as much as fits).
fn scatter(
    mem: &GuestMemoryMmap,
    segs: &[Segment],
    data: &[u8],
) -> Result<(), vm_memory::GuestMemoryError> {
    let mut at = 0usize;
    for s in segs {
        if at >= data.len() {
            break;
        }
        let n = (s.len as usize).min(data.len() - at);
        mem.write_slice(&data[at..at + n], GuestAddress(s.addr))?;
        at += n;
    }
    Ok(())
}

/// Virtio and vhost-user feature bits offered to the frontend.
pub(crate) fn device_features(geo: &Geometry) -> u64 {
    let mut f = (1u64 << VIRTIO_F_VERSION_1)
        | (1u64 << VIRTIO_RING_F_INDIRECT_DESC)
        | (1u64 << VIRTIO_RING_F_EVENT_IDX)
        | (1u64 << VIRTIO_BLK_F_SIZE_MAX)
        | (1u64 << VIRTIO_BLK_F_SEG_MAX)
        | (1u64 << VIRTIO_BLK_F_BLK_SIZE)
        | (1u64 << VIRTIO_BLK_F_FLUSH)
        | (1u64 << VIRTIO_BLK_F_DISCARD)
        | (1u64 << VIRTIO_BLK_F_WRITE_ZEROES)
        | (1u64 << VIRTIO_BLK_F_MQ)
        | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
    if geo.read_only {
        f |= 1u64 << VIRTIO_BLK_F_RO;
    }
    f
}

impl VhostUserBackend for BlkBackend {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        usize::from(self.geo.num_queues)
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        device_features(&self.geo)
    }

    fn acked_features(&self, features: u64) {
        tracing::debug!(
            features = format_args!("{features:#x}"),
            "vhost-user-blk: features acked"
        );
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Release);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        // The vhost crate bounds offset and size by the 256-byte config space.
        self.geo.config_read(offset, size.min(4096))
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        tracing::warn!(
            offset,
            len = buf.len(),
            "vhost-user-blk: ignoring a write to the read-only config space"
        );
        Ok(())
    }

    fn update_memory(&self, _mem: Mem) -> io::Result<()> {
        // The same GuestMemoryAtomic is shared with the vrings and updated in place.
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        // One vring worker for all queues: it only moves requests between the
        // rings and the tokio runtime, which does the I/O.
        vec![(1u64 << self.geo.num_queues) - 1]
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        // There is one worker (see `queues_per_thread`), so this is asked once.
        self.exit.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        if let Some(f) = self.inflight.get(queue_index as usize) {
            if !f.wait_idle(DRAIN_TIMEOUT) {
                tracing::error!(
                    queue = queue_index,
                    in_flight = f.count(),
                    "vhost-user-blk: requests still running when the queue was stopped"
                );
            }
        }
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Vring],
        _thread_id: usize,
    ) -> io::Result<()> {
        // Errors here would stop the worker (and every queue): log instead.
        if !evset.contains(EventSet::IN) {
            tracing::debug!(device_event, ?evset, "vhost-user-blk: unexpected event");
            return Ok(());
        }
        let queue = usize::from(device_event);
        match vrings.get(queue) {
            Some(vring) => self.process_queue(queue, vring),
            None => tracing::warn!(device_event, "vhost-user-blk: event for an unknown queue"),
        }
        Ok(())
    }
}
