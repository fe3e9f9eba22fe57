//! Bitmap allocator of the data area's 4 KiB blocks. Each chunk gets one contiguous extent.
//!
//! Not persisted: it is rebuilt at open from the chunk index, which is the only authority on
//! which blocks hold data.

/// A set of blocks `[start, start + len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Extent {
    pub start: u64,
    pub len: u64,
}

/// Locks an allocator. Its state stays consistent across a panic (each method finishes its
/// updates before anything can panic), so a poisoned lock is still usable.
pub(crate) fn lock(a: &std::sync::Mutex<Allocator>) -> std::sync::MutexGuard<'_, Allocator> {
    a.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug)]
pub(crate) struct Allocator {
    words: Vec<u64>,
    /// Blocks below this are reserved (the superblock) and never handed out.
    first: u64,
    blocks: u64,
    used: u64,
    /// Next-fit cursor: searches start here so freshly freed space is not reused at once.
    cursor: u64,
}

impl Allocator {
    /// An allocator over `blocks` blocks, of which the first `reserved` are marked used.
    pub(crate) fn new(blocks: u64, reserved: u64) -> Self {
        let mut a = Allocator {
            words: vec![0; blocks.div_ceil(64) as usize],
            first: reserved.min(blocks),
            blocks,
            used: 0,
            cursor: reserved.min(blocks),
        };
        for b in 0..a.first {
            a.set(b);
        }
        a.used = a.first;
        a
    }

    pub(crate) fn total_blocks(&self) -> u64 {
        self.blocks
    }

    /// Blocks available to chunks (all but the reserved ones).
    pub(crate) fn data_blocks(&self) -> u64 {
        self.blocks - self.first
    }

    /// Blocks in use by chunks (including extents still being written or awaiting release).
    pub(crate) fn used_blocks(&self) -> u64 {
        self.used - self.first
    }

    fn is_set(&self, b: u64) -> bool {
        self.words[(b / 64) as usize] & (1 << (b % 64)) != 0
    }

    fn set(&mut self, b: u64) {
        self.words[(b / 64) as usize] |= 1 << (b % 64);
    }

    fn clear(&mut self, b: u64) {
        self.words[(b / 64) as usize] &= !(1 << (b % 64));
    }

    /// Marks an extent as used while rebuilding. Returns false (and marks nothing) if it lies
    /// outside the data area or overlaps blocks already in use.
    pub(crate) fn mark(&mut self, e: Extent) -> bool {
        let Some(end) = e.start.checked_add(e.len) else {
            return false;
        };
        if e.start < self.first || end > self.blocks {
            return false;
        }
        if (e.start..end).any(|b| self.is_set(b)) {
            return false;
        }
        for b in e.start..end {
            self.set(b);
        }
        self.used += e.len;
        true
    }

    /// A free contiguous extent of `len` blocks, marked used; `None` if there is none.
    pub(crate) fn alloc(&mut self, len: u64) -> Option<Extent> {
        if len == 0 {
            return Some(Extent { start: 0, len: 0 });
        }
        let start = self
            .find(self.cursor, self.blocks, len)
            .or_else(|| self.find(self.first, self.blocks, len))?;
        for b in start..start + len {
            self.set(b);
        }
        self.used += len;
        self.cursor = start + len;
        Some(Extent { start, len })
    }

    /// Returns an extent to the free pool.
    pub(crate) fn free(&mut self, e: Extent) {
        let end = e.start.saturating_add(e.len).min(self.blocks);
        for b in e.start.max(self.first)..end {
            if self.is_set(b) {
                self.clear(b);
                self.used -= 1;
            } else {
                tracing::error!(block = b, "freeing a block that is not allocated");
            }
        }
    }

    /// First run of `len` free blocks starting in `[from, to)`.
    fn find(&self, from: u64, to: u64, len: u64) -> Option<u64> {
        let mut run_start = from;
        let mut run = 0u64;
        let mut b = from;
        while b < to {
            if b & 63 == 0 && b + 64 <= to {
                let w = self.words[(b / 64) as usize];
                if w == u64::MAX {
                    run = 0;
                    b += 64;
                    run_start = b;
                    continue;
                }
                if w == 0 {
                    if run == 0 {
                        run_start = b;
                    }
                    run += 64;
                    b += 64;
                    if run >= len {
                        return Some(run_start);
                    }
                    continue;
                }
            }
            if self.is_set(b) {
                run = 0;
                run_start = b + 1;
            } else {
                if run == 0 {
                    run_start = b;
                }
                run += 1;
                if run >= len {
                    return Some(run_start);
                }
            }
            b += 1;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_free_reuse_and_full() {
        let mut a = Allocator::new(200, 1);
        assert_eq!(a.data_blocks(), 199);
        let x = a.alloc(100).unwrap();
        assert_eq!(x, Extent { start: 1, len: 100 });
        let y = a.alloc(99).unwrap();
        assert_eq!(y.start, 101);
        assert_eq!(a.used_blocks(), 199);
        assert!(a.alloc(1).is_none());
        a.free(x);
        assert_eq!(a.used_blocks(), 99);
        assert!(a.alloc(101).is_none());
        let z = a.alloc(70).unwrap();
        assert_eq!(z.start, 1);
        let w = a.alloc(30).unwrap();
        assert_eq!(w.start, 71);
        assert!(a.alloc(1).is_none());
    }

    #[test]
    fn mark_rejects_overlap_and_out_of_range() {
        let mut a = Allocator::new(1000, 1);
        assert!(a.mark(Extent { start: 10, len: 5 }));
        assert!(!a.mark(Extent { start: 14, len: 2 }));
        assert!(!a.mark(Extent { start: 0, len: 1 }));
        assert!(!a.mark(Extent { start: 999, len: 2 }));
        assert!(!a.mark(Extent {
            start: u64::MAX,
            len: 2
        }));
        assert_eq!(a.used_blocks(), 5);
        // Allocation skips the marked extent.
        let e = a.alloc(20).unwrap();
        assert!(e.start >= 15 || e.start + 20 <= 10);
    }

    #[test]
    fn runs_across_words() {
        let mut a = Allocator::new(64 * 10, 0);
        // Fill everything, then free a run spanning three words.
        let all = a.alloc(640).unwrap();
        assert_eq!(all.len, 640);
        a.free(Extent {
            start: 60,
            len: 140,
        });
        assert!(a.alloc(141).is_none());
        assert_eq!(
            a.alloc(140),
            Some(Extent {
                start: 60,
                len: 140
            })
        );
    }
}
