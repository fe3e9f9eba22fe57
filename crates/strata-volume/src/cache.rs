//! The write-back cache of a served volume: the volatile write cache NBD and virtio-blk
//! advertise.
//!
//! A write is acknowledged once its blocks are in this node's cache. One writeback task per
//! volume writes the cached blocks out in batches: everything dirty when a batch starts,
//! grouped by extent, each group one request per replica that lands the scattered blocks side
//! by side on disk (`write_block_list`). So a stream of random 4 KiB writes reaches the disks
//! as a few large writes, and a FLUSH (or a FUA write) waits only until the batches holding
//! every write acknowledged before it are durable on a write quorum of in-sync replicas.
//!
//! Every change of the layer's blocks on disk goes through the writeback (writes) or runs
//! under its lock (trims and zeroing), so two versions of a block are never written at once
//! and an older one never lands after a newer one. Reads take a copy of the cached blocks of
//! their range before they read the disks, then lay the copy over what the disks returned.
//!
//! The cache is per node: clients of the same volume on two nodes do not see each other's
//! unflushed writes. If the node dies, unflushed writes are lost, which is what a volatile
//! write cache promises.

use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::Mutex;
use tokio::sync::Notify;

/// Most bytes a volume keeps dirty; a write that would pass it waits for the writeback.
pub(crate) const CACHE_BYTES_MAX: usize = 64 << 20;
const BLOCK: usize = strata_disk::BLOCK_BYTES;

#[derive(Clone)]
struct Entry {
    /// The write that put this version here.
    seq: u64,
    /// Exactly one block.
    data: Bytes,
}

struct State {
    /// The writable layer the cached blocks belong to.
    layer: u64,
    entries: BTreeMap<u64, Entry>,
    /// Bytes of `entries`.
    bytes: usize,
    /// The last write taken in.
    seq: u64,
    /// Every write up to this one is durable (or was superseded by a durable change).
    written: u64,
    /// Batches that failed; a waiter that sees this grow reports `last_error`.
    failures: u64,
    last_error: String,
    /// A writeback task is running.
    running: bool,
}

/// One batch of the writeback: the dirty blocks (ascending) when it started.
pub(crate) struct Batch {
    pub layer: u64,
    /// Every write up to this one is in the batch or superseded by a block in it.
    target: u64,
    pub blocks: Vec<(u64, u64, Bytes)>,
}

pub(crate) struct Cache {
    state: Mutex<State>,
    progress: Notify,
    /// Held by the writeback for each batch and by the paths that change disks directly
    /// (trims, zeroing), so changes of one block on disk never overlap.
    pub writer: tokio::sync::Mutex<()>,
}

impl Cache {
    pub fn new(layer: u64) -> Self {
        Cache {
            state: Mutex::new(State {
                layer,
                entries: BTreeMap::new(),
                bytes: 0,
                seq: 0,
                written: 0,
                failures: 0,
                last_error: String::new(),
                running: false,
            }),
            progress: Notify::new(),
            writer: tokio::sync::Mutex::new(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait until `cond` holds (`Ok`) or a batch fails (`Err` with its error).
    async fn wait(&self, cond: impl Fn(&State) -> bool) -> Result<(), String> {
        let failures = self.lock().failures;
        loop {
            let notified = self.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let s = self.lock();
                if cond(&s) {
                    return Ok(());
                }
                if s.failures > failures {
                    return Err(s.last_error.clone());
                }
            }
            notified.await;
        }
    }

    /// Wait until a write of `len` bytes fits.
    pub async fn wait_room(&self, len: usize) -> Result<(), String> {
        self.wait(|s| s.bytes == 0 || s.bytes + len <= CACHE_BYTES_MAX)
            .await
    }

    /// Wait until every write up to `seq` is durable.
    pub async fn wait_written(&self, seq: u64) -> Result<(), String> {
        self.wait(|s| s.written >= seq).await
    }

    /// Take in a write of whole blocks from block `first`; returns its sequence number.
    pub fn insert(&self, first: u64, data: &Bytes) -> u64 {
        let mut s = self.lock();
        s.seq += 1;
        let seq = s.seq;
        for (i, at) in (0..data.len()).step_by(BLOCK).enumerate() {
            let e = Entry {
                seq,
                data: data.slice(at..at + BLOCK),
            };
            if s.entries.insert(first + i as u64, e).is_none() {
                s.bytes += BLOCK;
            }
        }
        seq
    }

    /// The last write taken in.
    pub fn seq(&self) -> u64 {
        self.lock().seq
    }

    /// Copies of the cached blocks in `first..first + count`.
    pub fn overlay(&self, first: u64, count: u64) -> Vec<(u64, Bytes)> {
        let s = self.lock();
        s.entries
            .range(first..first.saturating_add(count))
            .map(|(b, e)| (*b, e.data.clone()))
            .collect()
    }

    /// Drop the cached blocks of a range a direct change (under `writer`) supersedes.
    pub fn remove_range(&self, first: u64, count: u64) {
        let mut s = self.lock();
        let doomed: Vec<u64> = s
            .entries
            .range(first..first.saturating_add(count))
            .map(|(b, _)| *b)
            .collect();
        for b in doomed {
            s.entries.remove(&b);
            s.bytes -= BLOCK;
        }
        drop(s);
        self.progress.notify_waiters();
    }

    /// Claim the writeback: `true` if the caller must start it.
    pub fn claim_writeback(&self) -> bool {
        let mut s = self.lock();
        if s.running || (s.entries.is_empty() && s.written >= s.seq) {
            return false;
        }
        s.running = true;
        true
    }

    /// The next batch (call under `writer`); `None` once nothing is dirty, which also ends
    /// the writeback's claim.
    pub fn take(&self) -> Option<Batch> {
        let mut s = self.lock();
        if s.entries.is_empty() {
            s.written = s.seq;
            s.running = false;
            drop(s);
            self.progress.notify_waiters();
            return None;
        }
        Some(Batch {
            layer: s.layer,
            target: s.seq,
            blocks: s
                .entries
                .iter()
                .map(|(b, e)| (*b, e.seq, e.data.clone()))
                .collect(),
        })
    }

    /// Record a batch's outcome: `done[i]` says whether `batch.blocks[i]` is durable.
    pub fn finish(&self, batch: &Batch, done: &[bool], error: Option<String>) {
        let mut s = self.lock();
        for ((block, seq, _), ok) in batch.blocks.iter().zip(done) {
            if *ok && s.entries.get(block).is_some_and(|e| e.seq == *seq) {
                s.entries.remove(block);
                s.bytes -= BLOCK;
            }
        }
        match error {
            None => s.written = s.written.max(batch.target),
            Some(e) => {
                s.failures += 1;
                s.last_error = e;
            }
        }
        drop(s);
        self.progress.notify_waiters();
    }

    /// End a writeback that gives up: its blocks stay cached, and the next one starts anew.
    pub fn release_writeback(&self) {
        self.lock().running = false;
    }

    /// Dirty bytes.
    pub fn dirty_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Point the cache at a new writable layer (it must hold nothing dirty) or drop what it
    /// holds: the unwritten blocks are lost and the next flush reports it.
    pub fn reset(&self, layer: u64, lost: Option<String>) {
        let mut s = self.lock();
        s.layer = layer;
        if let Some(why) = lost {
            s.entries.clear();
            s.bytes = 0;
            s.failures += 1;
            s.last_error = why;
        }
        drop(s);
        self.progress.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(n: usize, fill: u8) -> Bytes {
        Bytes::from(vec![fill; n * BLOCK])
    }

    #[test]
    fn newer_writes_survive_the_batch_that_wrote_older_ones() {
        let c = Cache::new(1);
        let s1 = c.insert(10, &blocks(2, 1));
        assert!(c.claim_writeback());
        assert!(!c.claim_writeback(), "one writeback at a time");
        let batch = c.take().expect("dirty");
        assert_eq!(batch.blocks.len(), 2);
        // Block 11 is written again while the batch is out.
        c.insert(11, &blocks(1, 2));
        c.finish(&batch, &[true, true], None);
        assert_eq!(c.dirty_bytes(), BLOCK);
        let over = c.overlay(0, 100);
        assert_eq!(over.len(), 1);
        assert_eq!((over[0].0, over[0].1[0]), (11, 2));
        let s = c.lock();
        assert!(s.written >= s1 && s.written < s.seq);
    }

    #[test]
    fn a_failed_batch_keeps_its_blocks_and_reports() {
        let c = Cache::new(1);
        c.insert(0, &blocks(3, 7));
        assert!(c.claim_writeback());
        let batch = c.take().expect("dirty");
        c.finish(&batch, &[true, false, true], Some("replica down".into()));
        assert_eq!(c.dirty_bytes(), BLOCK);
        let s = c.lock();
        assert_eq!((s.written, s.failures), (0, 1));
    }

    #[test]
    fn an_empty_take_ends_the_claim_and_marks_everything_written() {
        let c = Cache::new(1);
        let seq = c.insert(5, &blocks(1, 1));
        c.remove_range(0, 10);
        assert_eq!(c.dirty_bytes(), 0);
        assert!(c.claim_writeback(), "the removed write still needs a written mark");
        assert!(c.take().is_none());
        assert!(c.lock().written >= seq);
        assert!(!c.claim_writeback());
    }
}
