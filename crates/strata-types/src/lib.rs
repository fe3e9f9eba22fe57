//! Shared vocabulary: node and disk ids, chunk ids, timestamps (a hybrid
//! logical clock), size units and hard limits.
//!
//! Pure data: no I/O, no async, nothing about how any of it is stored.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A node of the cluster. Stable across restarts; set in the node's config.
pub type NodeId = u64;

/// A disk of the cluster, unique across all nodes (`node_id * 1000 + index`).
pub type DiskId = u64;

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;
pub const GIB: u64 = 1024 * MIB;

/// The largest chunk the disk engine stores in one piece.
pub const CHUNK_SIZE_BYTES_MAX: usize = 4 * MIB as usize;

/// Objects are cut into chunks of this size on the way in.
pub const OBJECT_CHUNK_SIZE_BYTES: usize = MIB as usize;

/// Id of a stored chunk: 32 bytes, chosen by the writer (see `ChunkId::derive`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// A chunk id derived from the owner's key, the write's timestamp and the
    /// chunk's index, so an overwrite never reuses the chunks of the old version.
    pub fn derive(owner: &[u8], timestamp: Timestamp, index: u64) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(&(owner.len() as u64).to_be_bytes());
        h.update(owner);
        h.update(&timestamp.0.to_be_bytes());
        h.update(&index.to_be_bytes());
        ChunkId(*h.finalize().as_bytes())
    }

    pub fn from_slice(b: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(b).ok().map(ChunkId)
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Microseconds since the Unix epoch, made unique and monotonic per process by
/// [`Hlc`]. Orders last-writer-wins records across the cluster.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub fn as_micros(self) -> u64 {
        self.0
    }
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1e6
    }
    pub fn as_secs(self) -> u64 {
        self.0 / 1_000_000
    }
    /// Swift's `X-Timestamp` form: seconds with five decimals.
    pub fn to_swift(self) -> String {
        format!("{}.{:05}", self.0 / 1_000_000, (self.0 % 1_000_000) / 10)
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_swift())
    }
}

fn wall_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Hybrid logical clock: wall time in microseconds, bumped past anything seen
/// so two writes through one node never share a timestamp, and a node that has
/// seen a newer timestamp from a peer never issues an older one.
#[derive(Debug, Default)]
pub struct Hlc {
    last: AtomicU64,
}

impl Hlc {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn now(&self) -> Timestamp {
        let wall = wall_micros();
        let mut prev = self.last.load(Ordering::Relaxed);
        loop {
            let next = wall.max(prev + 1);
            match self
                .last
                .compare_exchange_weak(prev, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Timestamp(next),
                Err(p) => prev = p,
            }
        }
    }

    /// Fold in a timestamp seen from elsewhere.
    pub fn observe(&self, ts: Timestamp) {
        self.last.fetch_max(ts.0, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hlc_is_strictly_monotonic() {
        let c = Hlc::new();
        let mut last = c.now();
        for _ in 0..10_000 {
            let t = c.now();
            assert!(t > last);
            last = t;
        }
    }

    #[test]
    fn hlc_never_goes_behind_an_observed_timestamp() {
        let c = Hlc::new();
        let future = Timestamp(wall_micros() + 60_000_000);
        c.observe(future);
        assert!(c.now() > future);
    }

    #[test]
    fn swift_timestamp_has_five_decimals() {
        assert_eq!(
            Timestamp(1_700_000_000_123_456).to_swift(),
            "1700000000.12345"
        );
    }

    #[test]
    fn chunk_ids_differ_by_timestamp_and_index() {
        let a = ChunkId::derive(b"k", Timestamp(1), 0);
        assert_ne!(a, ChunkId::derive(b"k", Timestamp(2), 0));
        assert_ne!(a, ChunkId::derive(b"k", Timestamp(1), 1));
        assert_eq!(a, ChunkId::derive(b"k", Timestamp(1), 0));
    }
}
