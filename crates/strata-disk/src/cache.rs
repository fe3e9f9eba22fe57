//! The read cache of a disk: whole chunks recently read, least recently used out first.
//!
//! Reads fill it and writes do not (a large upload would only push out what readers use).
//! A chunk enters already checked against its checksums, so a hit is answered from memory
//! without touching the disk. A chunk id names one content until the chunk is deleted or
//! stored again; both drop it from the cache after the index changed, and a read that raced
//! with them only inserts what it read if the index still holds the entry it read, checked
//! under the cache's lock (see [`ReadCache::insert_if`]).

use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use strata_types::ChunkId;

/// One cached chunk: its bytes, the blake3 recorded when it was written, and its place in
/// the eviction order.
struct Entry {
    data: Bytes,
    blake3: [u8; 32],
    tick: u64,
}

#[derive(Default)]
struct Inner {
    map: HashMap<ChunkId, Entry>,
    /// Last use -> chunk; the first is evicted first.
    order: BTreeMap<u64, ChunkId>,
    bytes: u64,
    tick: u64,
}

pub(crate) struct ReadCache {
    capacity: u64,
    inner: Mutex<Inner>,
}

impl ReadCache {
    pub(crate) fn new(capacity_bytes: u64) -> Self {
        ReadCache {
            capacity: capacity_bytes,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn get(&self, id: &ChunkId) -> Option<(Bytes, [u8; 32])> {
        if self.capacity == 0 {
            return None;
        }
        let mut g = self.lock();
        let inner = &mut *g;
        inner.tick += 1;
        let tick = inner.tick;
        let e = inner.map.get_mut(id)?;
        inner.order.remove(&e.tick);
        e.tick = tick;
        inner.order.insert(tick, *id);
        Some((e.data.clone(), e.blake3))
    }

    /// Caches a chunk just read if `still_current` (asked under the lock) says the index
    /// still holds what was read. A chunk above an eighth of the capacity is not cached.
    pub(crate) fn insert_if(
        &self,
        id: ChunkId,
        data: &Bytes,
        blake3: [u8; 32],
        still_current: impl FnOnce() -> bool,
    ) {
        let len = data.len() as u64;
        if self.capacity == 0 || len > self.capacity / 8 {
            return;
        }
        let mut g = self.lock();
        if !still_current() {
            return;
        }
        let inner = &mut *g;
        inner.tick += 1;
        let tick = inner.tick;
        if let Some(old) = inner.map.insert(
            id,
            Entry {
                data: data.clone(),
                blake3,
                tick,
            },
        ) {
            inner.order.remove(&old.tick);
            inner.bytes -= old.data.len() as u64;
        }
        inner.order.insert(tick, id);
        inner.bytes += len;
        while inner.bytes > self.capacity {
            let Some((_, victim)) = inner.order.pop_first() else {
                break;
            };
            if let Some(e) = inner.map.remove(&victim) {
                inner.bytes -= e.data.len() as u64;
            }
        }
    }

    /// Drops a chunk; called after the index stopped naming (or renamed) its bytes.
    pub(crate) fn remove(&self, id: &ChunkId) {
        if self.capacity == 0 {
            return;
        }
        let mut g = self.lock();
        let inner = &mut *g;
        if let Some(e) = inner.map.remove(id) {
            inner.order.remove(&e.tick);
            inner.bytes -= e.data.len() as u64;
        }
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> u64 {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ChunkId {
        ChunkId([n; 32])
    }

    #[test]
    fn least_recently_used_goes_first_and_capacity_holds() {
        let c = ReadCache::new(8 * 100);
        for n in 0..8u8 {
            c.insert_if(id(n), &Bytes::from(vec![n; 100]), [n; 32], || true);
        }
        assert_eq!(c.bytes(), 800);
        // Touch 0, then add one more: 1 is the least recently used.
        assert_eq!(c.get(&id(0)).map(|(d, h)| (d[0], h[0])), Some((0, 0)));
        c.insert_if(id(8), &Bytes::from(vec![8; 100]), [8; 32], || true);
        assert!(c.get(&id(1)).is_none());
        assert!(c.get(&id(0)).is_some() && c.get(&id(8)).is_some());
        assert_eq!(c.bytes(), 800);
        c.remove(&id(0));
        assert!(c.get(&id(0)).is_none());
        assert_eq!(c.bytes(), 700);
        // Replacing an entry does not count it twice.
        c.insert_if(id(8), &Bytes::from(vec![9; 100]), [9; 32], || true);
        assert_eq!(c.bytes(), 700);
        assert_eq!(c.get(&id(8)).map(|(d, _)| d[0]), Some(9));
    }

    #[test]
    fn stale_reads_and_large_chunks_stay_out_and_zero_disables() {
        let c = ReadCache::new(800);
        c.insert_if(id(1), &Bytes::from(vec![1; 100]), [1; 32], || false);
        assert!(c.get(&id(1)).is_none());
        c.insert_if(id(2), &Bytes::from(vec![2; 101]), [2; 32], || true);
        assert!(c.get(&id(2)).is_none());
        let off = ReadCache::new(0);
        off.insert_if(id(3), &Bytes::from(vec![3; 1]), [3; 32], || true);
        assert!(off.get(&id(3)).is_none());
        assert_eq!(off.bytes(), 0);
    }
}
