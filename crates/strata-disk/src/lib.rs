//! One node's chunk store on one disk: a preallocated data file (or raw block
//! device) written and read with io_uring and O_DIRECT, a block allocator, and a
//! rocksdb index that also holds the node's last-writer-wins records.
//!
//! Owns durability on one disk. It must not know about replication, placement,
//! objects or volumes: callers hand it chunk ids, bytes and record keys.
//!
//! Durability rules:
//! - a chunk's data is written with O_DIRECT and fdatasync'd before its index entry is written
//!   (rocksdb `WriteBatch` with `sync = true`), and only then acknowledged, so the index never
//!   points at data that is not durable;
//! - blocks of a deleted or overwritten chunk are reused only after the index change that
//!   released them is durable;
//! - concurrent writers share syncs: a single committer makes every waiting write durable with
//!   one fdatasync and one index `WriteBatch` (group commit);
//! - every chunk read is verified (crc32c per 4 KiB block and blake3 of the whole chunk).

mod alloc;
mod blocks;
mod buf;
mod cache;
mod commit;
mod disk;
mod index;
mod io;
mod local;
mod relocate;
mod straighten;

pub use blocks::{BlockRead, BLOCKS_PER_WRITE_MAX, BLOCK_BYTES};
pub use disk::{CommitStats, Disk};

use std::path::PathBuf;
use strata_types::ChunkId;

/// Errors of the disk engine.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("io error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("rocksdb: {0}")]
    Index(String),
    #[error("chunk {chunk:?} is corrupt: {what}")]
    Corrupt { chunk: ChunkId, what: &'static str },
    #[error("block {block} of volume {volume} is corrupt: {what}")]
    CorruptBlock {
        volume: u64,
        block: u64,
        what: &'static str,
    },
    #[error("bad record: {0}")]
    BadRecord(String),
    #[error("bad block request: {0}")]
    BadBlockRange(String),
    #[error("chunk of {len} bytes is larger than the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("disk is full: {needed_bytes} bytes needed")]
    Full { needed_bytes: u64 },
    #[error("disk engine is shut down")]
    Closed,
}

pub type Result<T> = std::result::Result<T, DiskError>;

/// A last-writer-wins record. `value == None` is a tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub timestamp: u64,
    pub value: Option<Vec<u8>>,
    /// The tally group a live record counts in (ignored on a tombstone).
    pub tally: Option<Tally>,
}

impl Record {
    /// A live record counted in no tally group.
    pub fn live(timestamp: u64, value: Vec<u8>) -> Self {
        Record {
            timestamp,
            value: Some(value),
            tally: None,
        }
    }

    /// A tombstone.
    pub fn tombstone(timestamp: u64) -> Self {
        Record {
            timestamp,
            value: None,
            tally: None,
        }
    }
}

/// What a live record adds to its tally group: one to the group's count and `weight` to its
/// sum. The group is the first `group_len` bytes of the record's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub group_len: u32,
    pub weight: u64,
}

/// A tally group's totals on one disk: live tallied records, their summed weight, and the
/// newest timestamp applied to any record of the group (0: none yet).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TallyTotals {
    pub count: u64,
    pub weight: u64,
    pub stamp: u64,
}

/// How a disk is configured.
#[derive(Debug, Clone)]
pub struct DiskConfig {
    /// Directory for the index (`<dir>/index`) and, unless `device` is set, the
    /// data file (`<dir>/chunks.dat`).
    pub dir: PathBuf,
    /// A raw block device to use instead of `<dir>/chunks.dat`.
    pub device: Option<PathBuf>,
    /// Size of the data file to preallocate (ignored for a device).
    pub capacity_bytes: u64,
    /// Refuse io_uring even where the kernel offers it (tests of the fallback).
    pub force_syscall_io: bool,
    /// Memory for chunks recently read, answered again without a disk read; 0 turns the
    /// read cache off.
    pub read_cache_bytes: u64,
    /// Milliseconds without a volume read or write after which the disk straightens the
    /// volume ranges that writes scattered; 0 turns that off (reads still straighten what
    /// they find scattered).
    pub straighten_idle_ms: u64,
}

/// How long a disk waits without volume I/O before it straightens scattered ranges, unless
/// configured otherwise: 100 ms.
pub const STRAIGHTEN_IDLE_MS_DEFAULT: u64 = 100;

/// The read cache of a disk unless configured otherwise: 512 MiB.
pub const READ_CACHE_BYTES_DEFAULT: u64 = 512 << 20;

/// Usage figures of one disk.
#[derive(Debug, Clone, Default)]
pub struct DiskUsage {
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub chunks: u64,
    pub io_backend: &'static str,
    /// Bytes of chunks held by the read cache.
    pub read_cache_bytes: u64,
}
