//! Straightening in idle time: the 1 MiB spans of volumes that writes touched in part are
//! remembered, and once the disk has served no volume read or write for a while, each is
//! looked up in the index and, if its blocks lie in many short runs, read and relocated
//! like a read of it by a client would (see `relocate.rs`). See `docs/architecture.md`
//! ("Idle disks straighten what random writes scattered").

use crate::disk::Disk;
use crate::relocate::SPAN_SHIFT;
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Weak};
use std::time::{Duration, Instant};

/// Blocks in a span.
pub(crate) const SPAN_BLOCKS: u64 = 1 << SPAN_SHIFT;
/// Spans remembered at most (256 GiB of volume data); a span past it is not remembered, and
/// is straightened only when a read finds it scattered.
const PENDING_MAX: usize = 1 << 18;
/// How often a disk with nothing to straighten checks that it is still open.
const TICK_MAX: Duration = Duration::from_millis(100);

/// The spans to look at, and when the disk last served a volume read or write.
pub(crate) struct Straighten {
    idle: Duration,
    pending: Mutex<Pending>,
    epoch: Instant,
    /// Microseconds from `epoch` to the last volume read or write.
    last_io: AtomicU64,
}

#[derive(Default)]
struct Pending {
    order: VecDeque<(u64, u64)>,
    set: HashSet<(u64, u64)>,
}

impl Straighten {
    /// `idle`: how long the disk must have served no volume I/O before it straightens
    /// (zero: never).
    pub(crate) fn new(idle: Duration) -> Self {
        Straighten {
            idle,
            pending: Mutex::new(Pending::default()),
            epoch: Instant::now(),
            last_io: AtomicU64::new(0),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        !self.idle.is_zero()
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// A client's volume read or write: straightening waits for the disk to be idle again.
    pub(crate) fn busy(&self) {
        if self.enabled() {
            self.last_io.store(self.now_us(), Ordering::Relaxed);
        }
    }

    fn idle_for(&self) -> Duration {
        Duration::from_micros(
            self.now_us()
                .saturating_sub(self.last_io.load(Ordering::Relaxed)),
        )
    }

    /// A write of the (ascending) `blocks` of `volume`: every span it covers only in part
    /// may now be scattered.
    pub(crate) fn wrote(&self, volume: u64, blocks: &[u64]) {
        if !self.enabled() || blocks.is_empty() {
            return;
        }
        let mut partial = Vec::new();
        let mut i = 0;
        while i < blocks.len() {
            let span = blocks[i] >> SPAN_SHIFT;
            let start = i;
            while i < blocks.len() && blocks[i] >> SPAN_SHIFT == span {
                i += 1;
            }
            // Ascending and distinct: the whole span is covered exactly when it has all of
            // its blocks, which are then one run in the new extent.
            if (i - start) as u64 != SPAN_BLOCKS {
                partial.push((volume, span));
            }
        }
        if partial.is_empty() {
            return;
        }
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for s in partial {
            if p.set.len() < PENDING_MAX && p.set.insert(s) {
                p.order.push_back(s);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .order
            .is_empty()
    }

    fn pop(&self) -> Option<(u64, u64)> {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let s = p.order.pop_front()?;
        p.set.remove(&s);
        Some(s)
    }

    /// Spans waiting to be looked at.
    pub(crate) fn pending(&self) -> usize {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .order
            .len()
    }
}

/// The disk's straightener: runs on the disk's home runtime until the disk is gone. It
/// holds the disk only while it works on one span. With spans waiting it wakes when the
/// disk has been idle for `idle`; with none, every [`TICK_MAX`] (to notice a closed disk).
pub(crate) async fn run(disk: Weak<Disk>, idle: Duration) {
    loop {
        let Some(d) = disk.upgrade() else { return };
        let wait = if d.straighten.is_empty() {
            TICK_MAX
        } else if !d.relocation_slot_free() {
            Duration::from_millis(5)
        } else {
            idle.saturating_sub(d.straighten.idle_for())
        };
        if !wait.is_zero() {
            drop(d);
            tokio::time::sleep(wait).await;
            continue;
        }
        let Some((volume, span)) = d.straighten.pop() else {
            continue;
        };
        if let Err(e) = d.straighten_span(volume, span).await {
            tracing::debug!(volume, span, error = %e, "straightening a span failed");
        }
        drop(d);
        // A span found straight costs an index scan and no await: let the runtime's other
        // tasks run between spans.
        tokio::task::yield_now().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_spans_written_in_part_are_remembered() {
        let s = Straighten::new(Duration::from_millis(100));
        // A whole span (blocks 256..512) and part of the next.
        let whole: Vec<u64> = (256..512).collect();
        s.wrote(1, &whole);
        assert_eq!(s.pending(), 0);
        s.wrote(1, &[512, 700, 1000]);
        // 512 and 700 are span 2, 1000 span 3.
        assert_eq!(s.pending(), 2);
        s.wrote(1, &[513]);
        assert_eq!(s.pending(), 2, "a span is remembered once");
        s.wrote(2, &[513]);
        assert_eq!(s.pop(), Some((1, 2)));
        assert_eq!(s.pop(), Some((1, 3)));
        assert_eq!(s.pop(), Some((2, 2)));
        assert_eq!(s.pop(), None);
        s.wrote(1, &[512]);
        assert_eq!(s.pending(), 1, "a span looked at is remembered again");
    }

    #[test]
    fn a_disabled_straightener_remembers_nothing() {
        let s = Straighten::new(Duration::ZERO);
        s.wrote(1, &[1, 5, 9]);
        s.busy();
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn io_resets_the_idle_clock() {
        let s = Straighten::new(Duration::from_millis(100));
        std::thread::sleep(Duration::from_millis(20));
        assert!(s.idle_for() >= Duration::from_millis(20));
        s.busy();
        assert!(s.idle_for() < Duration::from_millis(20));
    }
}
