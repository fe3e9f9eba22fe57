//! Rings owned by the threads of the tokio runtime: an async read or write is submitted on
//! the ring of the thread that polls it, with no hand-off to another thread.
//!
//! Each thread that asks gets its own ring (so two threads never contend for one ring's
//! submission lock), set up with `COOP_TASKRUN`: a completion does not interrupt the thread
//! that submitted the operation, it is posted when that thread next enters the kernel (a busy
//! runtime thread does so all the time, for its sockets; a sleeping one is woken). The ring
//! announces completions on a registered eventfd, which a reaper task on the runtime waits
//! for; it hands each result back to the operation's future through a oneshot channel.
//!
//! An operation's buffer is owned by its slot until the kernel posts the completion, so a
//! future dropped early never lets the kernel write into freed memory. A ring whose thread
//! exits waits for its operations before it is torn down. A ring belongs to one runtime (its
//! reaper runs there); a ring whose reaper has stopped (its runtime shut down) is dropped and
//! replaced on the next call.

use crate::buf::AlignedBuf;
use crate::io::{entry, step, transfer_len, Op, Step, Vectored};
use io_uring::IoUring;
use std::cell::{Cell, RefCell};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::oneshot;

/// Operations one thread's ring holds at once (its completion queue is twice that, so it
/// cannot overflow); a call past it goes to the shared ring thread.
const ENTRIES: u32 = 128;

/// What a completion hands back: the kernel's result and the operation's memory.
pub(crate) struct Done {
    pub(crate) res: i32,
    pub(crate) buf: AlignedBuf,
    pub(crate) vectored: Option<Vectored>,
}

struct Slot {
    /// Kept open while the kernel works on it.
    _file: Arc<File>,
    buf: AlignedBuf,
    vectored: Option<Vectored>,
    reply: oneshot::Sender<Done>,
}

struct Inner {
    ring: IoUring,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    in_flight: usize,
}

pub(crate) struct LocalRing {
    inner: Mutex<Inner>,
    /// Cleared when the reaper task stops: nothing would collect this ring's completions.
    reaped: Arc<AtomicBool>,
    /// The runtime whose reaper task collects the completions.
    runtime: tokio::runtime::Id,
}

thread_local! {
    /// This thread's rings, one per runtime that ran an operation here (a thread normally
    /// belongs to one runtime; a plain thread may `block_on` several).
    static RINGS: RefCell<Vec<Arc<LocalRing>>> = const { RefCell::new(Vec::new()) };
    /// Set once the kernel or the runtime refused this thread a ring.
    static REFUSED: Cell<bool> = const { Cell::new(false) };
}

/// Rings one thread keeps, at most.
const RINGS_PER_THREAD: usize = 4;

impl LocalRing {
    /// The calling thread's ring for the current runtime, created on first use; `None`
    /// outside a tokio runtime, or where the kernel or the runtime refuses such a ring.
    fn current() -> Option<Arc<LocalRing>> {
        let handle = tokio::runtime::Handle::try_current().ok()?;
        if REFUSED.try_with(Cell::get).unwrap_or(true) {
            return None;
        }
        let id = handle.id();
        RINGS
            .try_with(|cell| {
                let mut rings = cell.borrow_mut();
                // A ring whose reaper stopped (its runtime shut down) collects nothing more.
                rings.retain(|r| r.reaped.load(Ordering::Acquire));
                if let Some(r) = rings.iter().find(|r| r.runtime == id) {
                    return Some(r.clone());
                }
                if rings.len() >= RINGS_PER_THREAD {
                    return None;
                }
                let _guard = handle.enter();
                match LocalRing::start(&handle) {
                    Ok(r) => {
                        rings.push(r.clone());
                        Some(r)
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "no per-thread io_uring; using the ring thread");
                        REFUSED.set(true);
                        None
                    }
                }
            })
            .ok()
            .flatten()
    }

    fn start(handle: &tokio::runtime::Handle) -> io::Result<Arc<LocalRing>> {
        let ring = IoUring::builder()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .build(ENTRIES)?;
        // SAFETY: eventfd has no memory-safety preconditions; the result is checked below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
        let efd = unsafe { OwnedFd::from_raw_fd(fd) };
        ring.submitter().register_eventfd(efd.as_raw_fd())?;
        // SAFETY: the AsyncFd owns `efd`, which stays open, the same descriptor, as long.
        // A runtime built without its I/O driver panics here rather than erring: that is
        // caught, and such a runtime uses the ring thread.
        let efd = std::panic::catch_unwind(move || unsafe {
            AsyncFd::register_with_interest(efd, Interest::READABLE)
        })
        .map_err(|_| io::Error::other("the runtime has no I/O driver"))??;
        let reaped = Arc::new(AtomicBool::new(true));
        let me = Arc::new(LocalRing {
            inner: Mutex::new(Inner {
                ring,
                slots: (0..ENTRIES).map(|_| None).collect(),
                free: (0..ENTRIES as usize).rev().collect(),
                in_flight: 0,
            }),
            reaped: reaped.clone(),
            runtime: handle.id(),
        });
        handle.spawn(reaper(Arc::downgrade(&me), efd, ReapedFlag(reaped)));
        Ok(me)
    }

    /// Queues one operation; [`LocalRing::flush`] starts it. `Err` when the ring is full.
    fn submit(
        &self,
        file: &Arc<File>,
        op: Op,
        offset: u64,
        mut buf: AlignedBuf,
        mut vectored: Option<Vectored>,
        done: usize,
    ) -> Result<oneshot::Receiver<Done>, (AlignedBuf, Option<Vectored>)> {
        let mut g = lock(&self.inner);
        let Some(slot) = g.free.pop() else {
            return Err((buf, vectored));
        };
        let entry = entry(
            file.as_raw_fd(),
            op,
            offset,
            done,
            &mut buf,
            vectored.as_mut(),
        );
        let (reply, rx) = oneshot::channel();
        g.slots[slot] = Some(Slot {
            _file: file.clone(),
            buf,
            vectored,
            reply,
        });
        g.in_flight += 1;
        // SAFETY: the memory the entry points at is owned by the slot just filled, which is
        // only emptied once the kernel has posted the entry's completion (see `reap`, and
        // `Drop`, which waits for every operation in flight).
        let pushed = unsafe { g.ring.submission().push(&entry.user_data(slot as u64)) };
        if pushed.is_err() {
            // Cannot happen: the queue has a place for every slot.
            let s = g.slots[slot].take();
            g.free.push(slot);
            g.in_flight -= 1;
            return match s {
                Some(s) => Err((s.buf, s.vectored)),
                None => Err((AlignedBuf::zeroed(0), None)),
            };
        }
        Ok(rx)
    }

    /// Enters the kernel to start what is queued, if anything is.
    fn flush(&self) {
        let mut g = lock(&self.inner);
        if g.ring.submission().is_empty() {
            return;
        }
        loop {
            match g.ring.submit() {
                Ok(_) => return,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => {
                    // The entries stay queued and go out with the next submission.
                    tracing::warn!(error = %e, "io_uring submit failed; left queued");
                    return;
                }
            }
        }
    }

    /// Hands every posted completion to its waiter.
    fn reap(&self) {
        let mut g = lock(&self.inner);
        let g = &mut *g;
        let posted: Vec<(u64, i32)> = g
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (user_data, res) in posted {
            let Some(s) = g.slots.get_mut(user_data as usize).and_then(Option::take) else {
                tracing::error!(user_data, "io_uring completion for an unknown slot");
                continue;
            };
            g.free.push(user_data as usize);
            g.in_flight -= 1;
            let _ = s.reply.send(Done {
                res,
                buf: s.buf,
                vectored: s.vectored,
            });
        }
    }
}

impl Drop for LocalRing {
    fn drop(&mut self) {
        // The kernel may still be reading or writing the slots' memory: wait for it.
        let inner = match self.inner.get_mut() {
            Ok(i) => i,
            Err(p) => p.into_inner(),
        };
        while inner.in_flight > 0 {
            if let Err(e) = inner.ring.submit_and_wait(1) {
                if e.raw_os_error() != Some(libc::EINTR) {
                    tracing::error!(error = %e, "io_uring wait at thread exit failed; leaking its buffers");
                    for s in inner.slots.iter_mut() {
                        std::mem::forget(s.take());
                    }
                    return;
                }
            }
            let posted: Vec<u64> = inner.ring.completion().map(|c| c.user_data()).collect();
            for user_data in posted {
                if let Some(s) = inner
                    .slots
                    .get_mut(user_data as usize)
                    .and_then(Option::take)
                {
                    inner.in_flight -= 1;
                    drop(s);
                }
            }
        }
    }
}

fn lock(m: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Clears the ring's `reaped` flag when the reaper task ends or is dropped.
struct ReapedFlag(Arc<AtomicBool>);

impl Drop for ReapedFlag {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

async fn reaper(ring: Weak<LocalRing>, efd: AsyncFd<OwnedFd>, _flag: ReapedFlag) {
    loop {
        let mut guard = match efd.readable().await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = %e, "io_uring completion eventfd failed");
                return;
            }
        };
        let mut n: u64 = 0;
        // SAFETY: reads 8 bytes into a live local from our non-blocking eventfd.
        let _ = unsafe { libc::read(efd.as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
        guard.clear_ready();
        let Some(r) = ring.upgrade() else { return };
        r.reap();
    }
}

/// Runs one read or write on the calling thread's ring, going on after short transfers.
/// `Err` hands the memory back when there is no such ring or it is full, for the caller to
/// use the ring thread instead.
pub(crate) async fn run(
    file: &Arc<File>,
    op: Op,
    offset: u64,
    mut buf: AlignedBuf,
    mut vectored: Option<Vectored>,
) -> Result<io::Result<AlignedBuf>, (AlignedBuf, Option<Vectored>)> {
    let len = transfer_len(&buf, vectored.as_ref());
    let mut done = 0;
    let mut first = true;
    loop {
        let ring = match LocalRing::current() {
            Some(r) => r,
            None if first => return Err((buf, vectored)),
            // Moved, mid-operation, to a thread the kernel gave no ring (it gave one to the
            // thread the operation started on, so this is not expected).
            None => return Ok(Err(io::Error::other("no io_uring on this thread"))),
        };
        let rx = match ring.submit(file, op, offset, buf, vectored, done) {
            Ok(rx) => rx,
            Err(back) if first => return Err(back),
            Err(back) => {
                // Full, with part of the transfer done: wait for room.
                (buf, vectored) = back;
                drop(ring);
                tokio::task::yield_now().await;
                continue;
            }
        };
        // Let the thread's other ready tasks queue theirs first: one entry into the kernel
        // then starts them all, and the disk is notified once for the lot.
        tokio::task::yield_now().await;
        ring.flush();
        drop(ring);
        first = false;
        let Ok(d) = rx.await else {
            return Ok(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "io_uring stopped",
            )));
        };
        buf = d.buf;
        vectored = d.vectored;
        match step(op, d.res, done, len) {
            Step::Again => {}
            Step::More(n) => done = n,
            Step::Finished => return Ok(Ok(buf)),
            Step::Failed(e) => return Ok(Err(e)),
        }
    }
}
