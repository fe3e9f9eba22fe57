//! Block I/O on the data file: an io_uring ring thread, or pread/pwrite on tokio's blocking
//! pool where io_uring is unavailable. Both move whole aligned blocks only.

use crate::buf::AlignedBuf;
use crate::local;
use bytes::Bytes;
use io_uring::{opcode, squeue, types, IoUring};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::thread::JoinHandle;
use tokio::sync::{mpsc, oneshot};

/// Submission queue size of the ring.
const RING_ENTRIES: u32 = 256;
/// Operations the ring thread keeps in the kernel at once; further requests wait in the channel.
const MAX_IN_FLIGHT: usize = 128;
/// Requests queued for the ring thread before callers wait for room.
const REQUEST_QUEUE: usize = 256;
/// `user_data` of the poll on the wake-up eventfd.
const WAKE_TAG: u64 = u64::MAX;

/// Which way the engine talks to the kernel.
pub(crate) struct IoEngine {
    file: Arc<File>,
    backend: Backend,
}

enum Backend {
    Uring(RingHandle),
    Syscall,
}

impl IoEngine {
    /// Uses io_uring unless `force_syscall` is set or the kernel refuses a ring.
    pub(crate) fn new(file: Arc<File>, force_syscall: bool) -> Self {
        if force_syscall {
            tracing::warn!("io_uring disabled by configuration; using pread/pwrite");
            return IoEngine {
                file,
                backend: Backend::Syscall,
            };
        }
        match RingHandle::start(file.clone()) {
            Ok(ring) => IoEngine {
                file,
                backend: Backend::Uring(ring),
            },
            Err(e) => {
                tracing::warn!(error = %e, "io_uring unavailable; falling back to pread/pwrite");
                IoEngine {
                    file,
                    backend: Backend::Syscall,
                }
            }
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        match self.backend {
            Backend::Uring(_) => "io_uring",
            Backend::Syscall => "pread",
        }
    }

    /// Reads `blocks` whole blocks starting at byte `offset` (block aligned).
    pub(crate) async fn read(&self, offset: u64, blocks: usize) -> io::Result<AlignedBuf> {
        let buf = AlignedBuf::for_overwrite(blocks);
        if buf.is_empty() {
            return Ok(buf);
        }
        match &self.backend {
            Backend::Uring(ring) => match local::run(&self.file, Op::Read, offset, buf, None).await
            {
                Ok(r) => r,
                Err((buf, _)) => ring.call(Op::Read, offset, buf).await,
            },
            Backend::Syscall => {
                let file = self.file.clone();
                blocking(move || {
                    let mut buf = buf;
                    read_full_at(&file, buf.as_mut_slice(), offset)?;
                    Ok(buf)
                })
                .await
            }
        }
    }

    /// Writes the whole buffer at byte `offset` (block aligned).
    pub(crate) async fn write(&self, offset: u64, buf: AlignedBuf) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        match &self.backend {
            Backend::Uring(ring) => {
                match local::run(&self.file, Op::Write, offset, buf, None).await {
                    Ok(r) => r.map(drop),
                    Err((buf, _)) => ring.call(Op::Write, offset, buf).await.map(drop),
                }
            }
            Backend::Syscall => {
                let file = self.file.clone();
                blocking(move || write_full_at(&file, buf.as_slice(), offset)).await
            }
        }
    }

    /// Whether [`IoEngine::write_parts`] can write from the callers' buffers.
    pub(crate) fn writes_in_place(&self) -> bool {
        matches!(self.backend, Backend::Uring(_))
    }

    /// Writes `parts` one after the other at byte `offset` (block aligned), straight from
    /// their memory: every part must start on a 4 KiB block boundary and be a whole number of
    /// blocks (O_DIRECT). Parts adjacent in memory go out as one piece. Only with a ring
    /// ([`IoEngine::writes_in_place`]).
    pub(crate) async fn write_parts(&self, offset: u64, parts: Vec<Bytes>) -> io::Result<()> {
        match &self.backend {
            Backend::Uring(ring) => {
                let v = Vectored::new(parts);
                match local::run(
                    &self.file,
                    Op::Writev,
                    offset,
                    AlignedBuf::zeroed(0),
                    Some(v),
                )
                .await
                {
                    Ok(r) => r.map(drop),
                    Err((_, Some(v))) => ring.call_vectored(offset, v).await.map(drop),
                    Err((_, None)) => Err(io::Error::other("vectored write lost its parts")),
                }
            }
            Backend::Syscall => Err(io::Error::other("in-place writes need io_uring")),
        }
    }

    /// Starts an fdatasync of the data file from a plain (non-async) thread, so the caller can
    /// do other work before [`PendingSync::wait`]: on the ring, or else on a thread of its own.
    pub(crate) fn datasync_start(self: &Arc<Self>) -> PendingSync {
        match &self.backend {
            Backend::Uring(ring) => {
                PendingSync::Ring(ring.start_blocking(Op::Fsync, 0, AlignedBuf::zeroed(0)))
            }
            Backend::Syscall => {
                let me = self.clone();
                match std::thread::Builder::new()
                    .name("strata-disk-sync".into())
                    .spawn(move || me.datasync_blocking())
                {
                    Ok(t) => PendingSync::Thread(t),
                    Err(_) => PendingSync::Done(self.datasync_blocking()),
                }
            }
        }
    }

    /// fdatasync of the data file, from a plain (non-async) thread.
    pub(crate) fn datasync_blocking(&self) -> io::Result<()> {
        match &self.backend {
            Backend::Uring(ring) => ring
                .call_blocking(Op::Fsync, 0, AlignedBuf::zeroed(0))
                .map(drop),
            Backend::Syscall => retry_intr(|| self.file.sync_data()),
        }
    }
}

/// An fdatasync under way.
pub(crate) enum PendingSync {
    Ring(io::Result<oneshot::Receiver<io::Result<AlignedBuf>>>),
    Thread(JoinHandle<io::Result<()>>),
    /// No thread could be started: it ran at once.
    Done(io::Result<()>),
}

impl PendingSync {
    /// Waits for the fdatasync to finish.
    pub(crate) fn wait(self) -> io::Result<()> {
        match self {
            PendingSync::Ring(rx) => rx?.blocking_recv().map_err(|_| closed())?.map(drop),
            PendingSync::Thread(t) => t
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("fdatasync thread panicked"))),
            PendingSync::Done(r) => r,
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(io::Error::other(format!("blocking i/o task failed: {e}"))),
    }
}

fn retry_intr(mut f: impl FnMut() -> io::Result<()>) -> io::Result<()> {
    loop {
        match f() {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                ) => {}
            r => return r,
        }
    }
}

/// pread until `buf` is full, retrying short reads and EINTR/EAGAIN.
pub(crate) fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => done += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// pwrite all of `buf`, retrying short writes and EINTR/EAGAIN.
pub(crate) fn write_full_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.write_at(&buf[done..], offset + done as u64) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Op {
    Read,
    Write,
    /// A write from the memory of `Request::parts`.
    Writev,
    Fsync,
}

struct Request {
    op: Op,
    offset: u64,
    buf: AlignedBuf,
    vectored: Option<Vectored>,
    reply: oneshot::Sender<io::Result<AlignedBuf>>,
}

/// The pieces of a [`Op::Writev`]: the parts (kept alive while the kernel reads them) and
/// their iovecs, runs of parts adjacent in memory merged.
pub(crate) struct Vectored {
    _parts: Vec<Bytes>,
    iov: Box<[libc::iovec]>,
    /// What is left to write: `iov`, or its tail after a short write.
    rest: Box<[libc::iovec]>,
    len: usize,
}

// SAFETY: the iovecs point into `_parts`, which this owns; they are only read (by the
// kernel) while the operation is in flight, like the `Bytes` themselves.
unsafe impl Send for Vectored {}

impl Vectored {
    pub(crate) fn new(parts: Vec<Bytes>) -> Self {
        let mut iov: Vec<libc::iovec> = Vec::with_capacity(parts.len());
        for p in &parts {
            match iov.last_mut() {
                Some(last) if (last.iov_base as usize) + last.iov_len == p.as_ptr() as usize => {
                    last.iov_len += p.len();
                }
                _ => iov.push(libc::iovec {
                    iov_base: p.as_ptr() as *mut libc::c_void,
                    iov_len: p.len(),
                }),
            }
        }
        let len = parts.iter().map(Bytes::len).sum();
        let iov = iov.into_boxed_slice();
        Vectored {
            _parts: parts,
            rest: iov.clone(),
            iov,
            len,
        }
    }

    /// Points `rest` at the bytes from `from` on (to go on after a short write).
    fn skip_to(&mut self, from: usize) {
        let mut skip = from;
        let mut rest = Vec::with_capacity(self.iov.len());
        for v in self.iov.iter() {
            if skip >= v.iov_len {
                skip -= v.iov_len;
                continue;
            }
            rest.push(libc::iovec {
                // SAFETY: `skip < iov_len`, so the pointer stays inside this piece.
                iov_base: unsafe { (v.iov_base as *mut u8).add(skip) }.cast(),
                iov_len: v.iov_len - skip,
            });
            skip = 0;
        }
        self.rest = rest.into_boxed_slice();
    }
}

/// The submission entry of `op` on `fd` from byte `done` of the transfer on (after a short
/// one). The ring thread and the per-thread rings both build their entries here; the memory
/// the entry points at must stay put until its completion is posted.
pub(crate) fn entry(
    fd: RawFd,
    op: Op,
    offset: u64,
    done: usize,
    buf: &mut AlignedBuf,
    vectored: Option<&mut Vectored>,
) -> squeue::Entry {
    let fd = types::Fd(fd);
    let at = offset + done as u64;
    match op {
        Op::Writev => match vectored {
            Some(v) => {
                if done > 0 {
                    v.skip_to(done);
                }
                opcode::Writev::new(fd, v.rest.as_ptr(), v.rest.len() as u32)
                    .offset(at)
                    .build()
            }
            None => opcode::Nop::new().build(),
        },
        Op::Read => {
            let rest = (buf.len() - done) as u32;
            // SAFETY: `done < len`, so the pointer stays inside the buffer.
            let ptr = unsafe { buf.as_mut_ptr().add(done) };
            opcode::Read::new(fd, ptr, rest).offset(at).build()
        }
        Op::Write => {
            let rest = (buf.len() - done) as u32;
            // SAFETY: as above.
            let ptr = unsafe { buf.as_ptr().add(done) };
            opcode::Write::new(fd, ptr, rest).offset(at).build()
        }
        Op::Fsync => opcode::Fsync::new(fd)
            .flags(types::FsyncFlags::DATASYNC)
            .build(),
    }
}

/// What a completion means for an operation that had moved `done` of its `len` bytes.
pub(crate) enum Step {
    /// Interrupted: submit it again as it was.
    Again,
    /// A short transfer: go on from this many bytes.
    More(usize),
    Finished,
    Failed(io::Error),
}

pub(crate) fn step(op: Op, res: i32, done: usize, len: usize) -> Step {
    if res < 0 {
        let errno = -res;
        if errno == libc::EINTR || errno == libc::EAGAIN {
            return Step::Again;
        }
        return Step::Failed(io::Error::from_raw_os_error(errno));
    }
    if op == Op::Fsync {
        return Step::Finished;
    }
    if res == 0 {
        return Step::Failed(match op {
            Op::Read => io::ErrorKind::UnexpectedEof.into(),
            _ => io::ErrorKind::WriteZero.into(),
        });
    }
    let done = done + res as usize;
    if done < len {
        Step::More(done)
    } else {
        Step::Finished
    }
}

/// The caller's side of the ring thread.
struct RingHandle {
    tx: Option<mpsc::Sender<Request>>,
    wake: Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl RingHandle {
    fn start(file: Arc<File>) -> io::Result<Self> {
        let ring = IoUring::new(RING_ENTRIES)?;
        // SAFETY: eventfd has no memory-safety preconditions; the result is checked below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
        let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
        let (tx, rx) = mpsc::channel(REQUEST_QUEUE);
        let ring_wake = wake.clone();
        let thread = std::thread::Builder::new()
            .name("strata-disk-uring".into())
            .spawn(move || RingThread::new(ring, file, ring_wake, rx).run())?;
        Ok(RingHandle {
            tx: Some(tx),
            wake,
            thread: Some(thread),
        })
    }

    fn kick(&self) {
        kick(self.wake.as_raw_fd());
    }

    async fn call(&self, op: Op, offset: u64, buf: AlignedBuf) -> io::Result<AlignedBuf> {
        self.send(Request {
            op,
            offset,
            buf,
            vectored: None,
            reply: oneshot::channel().0,
        })
        .await
    }

    async fn call_vectored(&self, offset: u64, v: Vectored) -> io::Result<AlignedBuf> {
        self.send(Request {
            op: Op::Writev,
            offset,
            buf: AlignedBuf::zeroed(0),
            vectored: Some(v),
            reply: oneshot::channel().0,
        })
        .await
    }

    async fn send(&self, mut req: Request) -> io::Result<AlignedBuf> {
        let tx = self.tx.as_ref().ok_or_else(closed)?;
        let (reply, rx) = oneshot::channel();
        req.reply = reply;
        tx.send(req).await.map_err(|_| closed())?;
        self.kick();
        rx.await.map_err(|_| closed())?
    }

    fn call_blocking(&self, op: Op, offset: u64, buf: AlignedBuf) -> io::Result<AlignedBuf> {
        self.start_blocking(op, offset, buf)?
            .blocking_recv()
            .map_err(|_| closed())?
    }

    /// Hands an operation to the ring thread from a plain thread; the answer comes on the
    /// returned channel.
    fn start_blocking(
        &self,
        op: Op,
        offset: u64,
        buf: AlignedBuf,
    ) -> io::Result<oneshot::Receiver<io::Result<AlignedBuf>>> {
        let tx = self.tx.as_ref().ok_or_else(closed)?;
        let (reply, rx) = oneshot::channel();
        tx.blocking_send(Request {
            op,
            offset,
            buf,
            vectored: None,
            reply,
        })
        .map_err(|_| closed())?;
        self.kick();
        Ok(rx)
    }
}

impl Drop for RingHandle {
    fn drop(&mut self) {
        // Closing the channel and waking the thread makes it finish what is in flight and exit.
        self.tx.take();
        self.kick();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("io_uring thread panicked");
            }
        }
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "i/o thread has stopped")
}

fn kick(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live local to an eventfd we own; a failure (counter
    // saturated) still leaves the eventfd readable, which is all the wake-up needs.
    let _ = unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
}

/// One operation the kernel owns. Its buffer stays here until the completion arrives.
struct InFlight {
    op: Op,
    offset: u64,
    buf: AlignedBuf,
    /// The pieces of an [`Op::Writev`].
    vectored: Option<Vectored>,
    done: usize,
    reply: oneshot::Sender<io::Result<AlignedBuf>>,
}

impl InFlight {
    fn len(&self) -> usize {
        transfer_len(&self.buf, self.vectored.as_ref())
    }
}

/// Bytes an operation moves: its parts' for a vectored write, else its buffer's.
pub(crate) fn transfer_len(buf: &AlignedBuf, vectored: Option<&Vectored>) -> usize {
    vectored.map_or(buf.len(), |v| v.len)
}

struct RingThread {
    ring: IoUring,
    file: Arc<File>,
    wake: Arc<OwnedFd>,
    rx: mpsc::Receiver<Request>,
    slots: Vec<Option<InFlight>>,
    free: Vec<usize>,
    in_flight: usize,
    wake_armed: bool,
    cqes: Vec<(u64, i32)>,
}

impl RingThread {
    fn new(
        ring: IoUring,
        file: Arc<File>,
        wake: Arc<OwnedFd>,
        rx: mpsc::Receiver<Request>,
    ) -> Self {
        RingThread {
            ring,
            file,
            wake,
            rx,
            slots: (0..MAX_IN_FLIGHT).map(|_| None).collect(),
            free: (0..MAX_IN_FLIGHT).rev().collect(),
            in_flight: 0,
            wake_armed: false,
            cqes: Vec::with_capacity(RING_ENTRIES as usize * 2),
        }
    }

    fn run(mut self) {
        let mut closed = false;
        loop {
            while !closed && self.in_flight < MAX_IN_FLIGHT {
                match self.rx.try_recv() {
                    Ok(req) => self.start(req),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => closed = true,
                }
            }
            if closed && self.in_flight == 0 {
                return;
            }
            if !closed && !self.wake_armed && self.in_flight < MAX_IN_FLIGHT {
                let e = opcode::PollAdd::new(types::Fd(self.wake.as_raw_fd()), libc::POLLIN as u32)
                    .build()
                    .user_data(WAKE_TAG);
                self.push(e);
                self.wake_armed = true;
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) => match e.raw_os_error() {
                    Some(libc::EINTR) | Some(libc::EBUSY) => {}
                    Some(libc::EAGAIN) => std::thread::sleep(std::time::Duration::from_millis(1)),
                    _ => {
                        tracing::error!(error = %e, "io_uring submit failed; retrying");
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                },
            }
            self.reap();
        }
    }

    fn start(&mut self, req: Request) {
        let Some(slot) = self.free.pop() else {
            // Cannot happen: requests are only taken while a slot is free.
            let _ = req
                .reply
                .send(Err(io::Error::other("io_uring slots exhausted")));
            return;
        };
        let vectored = req.vectored;
        self.slots[slot] = Some(InFlight {
            op: req.op,
            offset: req.offset,
            buf: req.buf,
            vectored,
            done: 0,
            reply: req.reply,
        });
        self.in_flight += 1;
        self.submit_slot(slot);
    }

    fn submit_slot(&mut self, slot: usize) {
        let fd = self.file.as_raw_fd();
        let Some(f) = self.slots[slot].as_mut() else {
            return;
        };
        let e = entry(fd, f.op, f.offset, f.done, &mut f.buf, f.vectored.as_mut());
        self.push(e.user_data(slot as u64));
    }

    fn push(&mut self, entry: squeue::Entry) {
        loop {
            // SAFETY: the buffer an entry points at is owned by its `InFlight` slot, which is
            // only released after the kernel posts the entry's completion; the data file and the
            // eventfd outlive the ring (both are held by this thread until it returns, and the
            // ring is dropped before them only after all buffer-carrying ops completed).
            let pushed = unsafe { self.ring.submission().push(&entry) };
            if pushed.is_ok() {
                return;
            }
            // The queue is sized so this does not happen; make room by submitting if it does.
            if let Err(e) = self.ring.submit() {
                tracing::warn!(error = %e, "io_uring submit while queue full failed");
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }

    fn reap(&mut self) {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.clear();
        cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
        for &(user_data, res) in &cqes {
            if user_data == WAKE_TAG {
                self.wake_armed = false;
                let mut n: u64 = 0;
                // SAFETY: reads 8 bytes into a live local from our non-blocking eventfd.
                let _ =
                    unsafe { libc::read(self.wake.as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
                continue;
            }
            self.complete(user_data as usize, res);
        }
        self.cqes = cqes;
    }

    fn complete(&mut self, slot: usize, res: i32) {
        let Some(f) = self.slots.get_mut(slot).and_then(|s| s.as_mut()) else {
            tracing::error!(slot, "io_uring completion for an unknown slot");
            return;
        };
        let outcome = match step(f.op, res, f.done, f.len()) {
            Step::Again => {
                self.submit_slot(slot);
                return;
            }
            Step::More(done) => {
                f.done = done;
                self.submit_slot(slot);
                return;
            }
            Step::Finished => None,
            Step::Failed(e) => Some(e),
        };
        if let Some(f) = self.slots[slot].take() {
            self.free.push(slot);
            self.in_flight -= 1;
            let _ = f.reply.send(match outcome {
                Some(e) => Err(e),
                None => Ok(f.buf),
            });
        }
    }
}
