//! Relocation: a volume range that a read found scattered over many short runs is written
//! again side by side, from the bytes the read just verified, and its index entries are
//! swapped over only if nothing changed the range meanwhile. See `docs/architecture.md`
//! ("Reads straighten fragmented ranges").

use crate::alloc::lock;
use crate::blocks::BlockRead;
use crate::buf::{AlignedBuf, BLOCK};
use crate::commit::{CommitOp, Counters};
use crate::disk::Disk;
use crate::index::BlockEntry;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::oneshot;

/// Write stamps per disk; a stamp covers the blocks whose `(volume, block >> SPAN_SHIFT)`
/// hashes to it.
const STAMPS: usize = 1024;
pub(crate) const SPAN_SHIFT: u32 = 8;
/// A read relocates only ranges of at least this many present blocks...
const MIN_BLOCKS: usize = 32;
/// ...whose mean run on disk is shorter than this many blocks.
const MEAN_RUN_MAX: usize = 16;
/// Relocations under way per disk; a fragmented read beyond them is not relocated.
const IN_FLIGHT_MAX: usize = 4;
/// Relocated blocks after which a relocation is committed synced: the blocks it moved away
/// from stay allocated until a synced round, so this bounds that space (64 MiB).
const UNSYNCED_BLOCKS_MAX: u64 = 16384;
/// No relocation while less than 1/`FREE_SHARE_MIN` of the data area is free: it briefly
/// needs room for a second copy, which writes should not have to wait for.
const FREE_SHARE_MIN: u64 = 16;

/// Counters the committer bumps whenever it plans a write or trim of the blocks they cover.
/// A relocation takes them before its read looks up the index and applies only if they are
/// unchanged (hash collisions only cost a relocation, never a lost write).
pub(crate) struct WriteStamps {
    stamps: Box<[AtomicU64]>,
    in_flight: AtomicUsize,
    /// Blocks relocated by unsynced commits since the last synced one.
    unsynced_blocks: AtomicU64,
}

/// What must still hold for a relocation to apply: every block at the location the read
/// found, and the stamps of the range as they were before that read.
pub(crate) struct Expect {
    pub addrs: Vec<u64>,
    pub stamps: Vec<(usize, u64)>,
}

impl WriteStamps {
    pub(crate) fn new() -> Self {
        WriteStamps {
            stamps: (0..STAMPS).map(|_| AtomicU64::new(0)).collect(),
            in_flight: AtomicUsize::new(0),
            unsynced_blocks: AtomicU64::new(0),
        }
    }

    fn slot(volume: u64, span: u64) -> usize {
        let h =
            (volume.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ span).wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        (h >> 54) as usize % STAMPS
    }

    /// The stamps covering blocks `first..first + count` (one may come up twice, which
    /// changes nothing for a bump or a check).
    fn slots(volume: u64, first: u64, count: u64) -> impl Iterator<Item = usize> {
        let (lo, hi) = (
            first >> SPAN_SHIFT,
            first.saturating_add(count.max(1) - 1) >> SPAN_SHIFT,
        );
        // A range over more spans than there are stamps covers every stamp.
        let every = hi - lo >= STAMPS as u64;
        let spans = (!every).then_some(lo..=hi).into_iter().flatten();
        spans
            .map(move |span| Self::slot(volume, span))
            .chain(every.then_some(0..STAMPS).into_iter().flatten())
    }

    /// The current stamps of a range, taken before a read that may relocate it: `None` when
    /// the read is too small to (random I/O pays nothing for relocation).
    pub(crate) fn take(&self, volume: u64, first: u64, count: u64) -> Option<Vec<(usize, u64)>> {
        (count >= MIN_BLOCKS as u64).then(|| {
            Self::slots(volume, first, count)
                .map(|s| (s, self.stamps[s].load(Ordering::SeqCst)))
                .collect()
        })
    }

    /// A write or trim of the range is planned.
    pub(crate) fn bump(&self, volume: u64, first: u64, count: u64) {
        for s in Self::slots(volume, first, count) {
            self.stamps[s].fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A write of the (ascending) `blocks` is planned.
    pub(crate) fn bump_blocks(&self, volume: u64, blocks: &[u64]) {
        if let (Some(&first), Some(&last)) = (blocks.first(), blocks.last()) {
            // Blocks of one request lie within one extent: the whole span is a few stamps.
            self.bump(volume, first, last - first + 1);
        }
    }

    pub(crate) fn unchanged(&self, taken: &[(usize, u64)]) -> bool {
        taken
            .iter()
            .all(|&(s, v)| self.stamps[s].load(Ordering::SeqCst) == v)
    }
}

impl Expect {
    /// Does the relocation still apply, given the blocks' current entries?
    pub(crate) fn holds(&self, stamps: &WriteStamps, current: &[Option<BlockEntry>]) -> bool {
        stamps.unchanged(&self.stamps)
            && current.len() == self.addrs.len()
            && current
                .iter()
                .zip(&self.addrs)
                .all(|(e, &addr)| e.is_some_and(|e| e.addr == addr))
    }
}

/// Releases a relocation slot when the relocation ends, however it ends.
struct Slot(Arc<WriteStamps>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Are the present blocks of a range (at least [`MIN_BLOCKS`] of them) scattered over runs
/// shorter than [`MEAN_RUN_MAX`] blocks on average?
pub(crate) fn scattered(entries: &BTreeMap<u64, BlockEntry>) -> bool {
    let n = entries.len();
    n >= MIN_BLOCKS && runs(entries) * MEAN_RUN_MAX > n
}

/// Runs of `entries` that are contiguous both in the volume and on disk.
fn runs(entries: &BTreeMap<u64, BlockEntry>) -> usize {
    let mut runs = 0;
    let mut prev: Option<(u64, u64)> = None;
    for (&block, e) in entries {
        if prev != Some((block, e.addr)) {
            runs += 1;
        }
        prev = Some((block + 1, e.addr + 1));
    }
    runs
}

impl Disk {
    /// Bytes of volume spans written in part that idle straightening has yet to look at.
    pub fn straighten_pending_bytes(&self) -> u64 {
        self.straighten.pending() as u64 * crate::straighten::SPAN_BLOCKS * BLOCK as u64
    }

    /// Could a relocation start now?
    pub(crate) fn relocation_slot_free(&self) -> bool {
        self.stamps.in_flight.load(Ordering::SeqCst) < IN_FLIGHT_MAX
    }

    /// After a verified read of blocks `first..` whose entries were `entries` (looked up after
    /// `stamps` were taken): if the present blocks lie in many short runs, write them side by
    /// side in the background and swap their entries over if nothing changed them meanwhile.
    pub(crate) fn offer_relocation(
        &self,
        volume: u64,
        first: u64,
        entries: &BTreeMap<u64, BlockEntry>,
        read: &BlockRead,
        stamps: Option<Vec<(usize, u64)>>,
    ) {
        let n = entries.len();
        let Some(stamps) = stamps else { return };
        if !scattered(entries) {
            return;
        }
        let Some(rt) = self
            .home
            .clone()
            .or_else(|| tokio::runtime::Handle::try_current().ok())
        else {
            return;
        };
        let Some(tx) = self.commit_sender() else {
            return;
        };
        if self.stamps.in_flight.fetch_add(1, Ordering::SeqCst) >= IN_FLIGHT_MAX {
            self.stamps.in_flight.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        let slot = Slot(self.stamps.clone());
        let ext = {
            let mut a = self.lock_alloc();
            if (a.data_blocks() - a.used_blocks()) * FREE_SHARE_MIN < a.data_blocks() {
                return;
            }
            match a.alloc(n as u64) {
                Some(ext) => ext,
                None => return,
            }
        };
        let moved = self
            .stamps
            .unsynced_blocks
            .fetch_add(n as u64, Ordering::SeqCst)
            + n as u64;
        let synced = moved >= UNSYNCED_BLOCKS_MAX;
        if synced {
            self.stamps.unsynced_blocks.store(0, Ordering::SeqCst);
        }
        let mut buf = AlignedBuf::for_overwrite(n);
        let (mut blocks, mut addrs, mut crcs) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for (i, (&block, e)) in entries.iter().enumerate() {
            let at = (block - first) as usize * BLOCK;
            buf.as_mut_slice()[i * BLOCK..(i + 1) * BLOCK]
                .copy_from_slice(&read.data[at..at + BLOCK]);
            blocks.push(block);
            addrs.push(e.addr);
            crcs.push(e.crc);
        }
        let (io, alloc) = (self.io.clone(), self.alloc.clone());
        rt.spawn(async move {
            let _slot = slot;
            if let Err(e) = io.write(ext.start * BLOCK as u64, buf).await {
                tracing::debug!(error = %e, "relocation write failed; range left as it is");
                lock(&alloc).free(ext);
                return;
            }
            // The disk closed meanwhile: nothing refers to the extent.
            let Some(tx) = tx.upgrade() else {
                lock(&alloc).free(ext);
                return;
            };
            let (reply, answer) = oneshot::channel();
            let op = CommitOp::WriteBlocks {
                volume,
                blocks,
                start: ext.start,
                crcs,
                synced,
                expect: Some(Expect { addrs, stamps }),
                reply,
            };
            // Not holding the sender while waiting lets a closing disk's committer finish.
            let sent = tx.send(op).await.is_ok();
            drop(tx);
            if !sent {
                // The committer is gone; the op never reached it, nor the extent the index.
                lock(&alloc).free(ext);
                return;
            }
            if let Ok(Err(e)) = answer.await {
                tracing::debug!(error = %e, "relocation not committed");
            }
        });
    }
}

/// Counters of relocations, kept by the committer.
pub(crate) fn note(counters: &Counters, applied: bool, blocks: usize) {
    if applied {
        counters
            .relocated_blocks
            .fetch_add(blocks as u64, Ordering::Relaxed);
    } else {
        counters.relocations_lost.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(addr: u64) -> BlockEntry {
        BlockEntry::synced(addr, 0)
    }

    #[test]
    fn runs_count_breaks_in_volume_or_on_disk() {
        let m: BTreeMap<u64, BlockEntry> = [
            (0, entry(10)),
            (1, entry(11)),
            (2, entry(50)),
            (4, entry(51)),
            (5, entry(52)),
        ]
        .into_iter()
        .collect();
        assert_eq!(runs(&m), 3);
        assert_eq!(runs(&BTreeMap::new()), 0);
    }

    #[test]
    fn stamps_change_with_writes_to_their_range_only() {
        let s = WriteStamps::new();
        let taken = s.take(7, 1000, 256).expect("a large read");
        assert!(s.unchanged(&taken));
        // Other volumes and distant blocks may share a stamp (a lost relocation, never a lost
        // write), but a write in the range always changes one.
        s.bump_blocks(7, &[1100]);
        assert!(!s.unchanged(&taken));
        let again = s.take(7, 1000, 256).expect("a large read");
        assert!(s.unchanged(&again));
        s.bump(7, 0, u64::MAX);
        assert!(
            !s.unchanged(&again),
            "a trim of everything changes every stamp"
        );
    }

    #[test]
    fn expect_needs_every_location_unchanged() {
        let s = WriteStamps::new();
        let x = Expect {
            addrs: vec![3, 9],
            stamps: s.take(1, 0, 64).expect("a large read"),
        };
        assert!(x.holds(&s, &[Some(entry(3)), Some(entry(9))]));
        assert!(!x.holds(&s, &[Some(entry(3)), Some(entry(10))]));
        assert!(!x.holds(&s, &[Some(entry(3)), None]));
        s.bump(1, 1, 1);
        assert!(!x.holds(&s, &[Some(entry(3)), Some(entry(9))]));
    }
}
