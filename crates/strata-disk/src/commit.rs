//! The group committer: one thread that makes writes durable in batches.
//!
//! Each round takes every write waiting in the queue (bounded by [`MAX_BATCH_OPS`] and
//! [`MAX_BATCH_BYTES`]), issues one fdatasync of the data file for all chunk data written by
//! the batch, then one synced rocksdb `WriteBatch` with all index and record changes, and only
//! then answers the writers. Blocks released by the batch (deleted or overwritten chunks)
//! return to the allocator after that `WriteBatch` is durable.

use crate::alloc::{Allocator, Extent};
use crate::buf::BLOCK;
use crate::index::{self, BlockEntry, ChunkEntry, CF_BLOCKS, CF_CHUNKS, CF_RECORDS};
use crate::io::IoEngine;
use crate::{DiskError, Record, Result};
use rocksdb::{WriteBatch, WriteOptions, DB};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use strata_types::ChunkId;
use tokio::sync::{mpsc, oneshot};

/// Writes waiting for the committer before writers wait for room.
pub(crate) const QUEUE_DEPTH: usize = 1024;
/// Most writes made durable by one round.
pub(crate) const MAX_BATCH_OPS: usize = 512;
/// Most record bytes carried by one round's `WriteBatch`.
pub(crate) const MAX_BATCH_BYTES: usize = 32 << 20;

pub(crate) enum CommitOp {
    /// Chunk data is written (not yet synced) at `entry.offset`.
    PutChunk {
        id: ChunkId,
        entry: ChunkEntry,
        reply: oneshot::Sender<Result<()>>,
    },
    DeleteChunk {
        id: ChunkId,
        reply: oneshot::Sender<Result<()>>,
    },
    PutRecord {
        key: Vec<u8>,
        rec: Record,
        reply: oneshot::Sender<Result<bool>>,
    },
    RemoveRecord {
        key: Vec<u8>,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Volume blocks `blocks[i]` are written (not yet synced) at data-area blocks
    /// `start + i`.
    WriteBlocks {
        volume: u64,
        blocks: Vec<u64>,
        start: u64,
        crcs: Vec<u32>,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Volume blocks `first..first + count` become holes.
    TrimBlocks {
        volume: u64,
        first: u64,
        count: u64,
        reply: oneshot::Sender<Result<()>>,
    },
}

impl CommitOp {
    fn weight(&self) -> usize {
        match self {
            CommitOp::PutRecord { key, rec, .. } => {
                key.len() + rec.value.as_ref().map_or(0, Vec::len) + 16
            }
            CommitOp::RemoveRecord { key, .. } => key.len() + 16,
            _ => 128,
        }
    }
}

/// Counters of the committer, for usage reports and benchmarks.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub chunks: AtomicU64,
    pub rounds: AtomicU64,
    pub data_syncs: AtomicU64,
    pub index_syncs: AtomicU64,
    pub chunk_puts: AtomicU64,
    pub ops: AtomicU64,
}

pub(crate) struct Committer {
    pub db: Arc<DB>,
    pub io: Arc<IoEngine>,
    pub alloc: Arc<Mutex<Allocator>>,
    pub counters: Arc<Counters>,
    pub data_path: PathBuf,
    /// Set after a failed sync: what reached the disk is then unknown, so no further write is
    /// acknowledged until the disk is reopened (and its state rebuilt from the index).
    pub failed: Mutex<Option<String>>,
}

/// What a batch decided for one op, answered after the batch is durable.
enum Outcome {
    Done,
    Applied(bool),
    Failed(DiskError),
}

impl Committer {
    /// Runs the committer until the queue closes. Two stages overlap: while the index stage
    /// writes batch N's `WriteBatch`, this thread already fdatasyncs batch N+1's data.
    pub(crate) fn run(self, mut rx: mpsc::Receiver<CommitOp>) {
        let this = Arc::new(self);
        let (to_index, index_rx) = std::sync::mpsc::sync_channel::<(Vec<CommitOp>, Vec<Extent>)>(1);
        let index_stage = {
            let this = this.clone();
            std::thread::Builder::new()
                .name("strata-disk-index".into())
                .spawn(move || {
                    for (batch, new_extents) in index_rx {
                        this.write_index(batch, new_extents);
                    }
                })
        };
        let mut index_stage = match index_stage {
            Ok(handle) => Some((to_index, handle)),
            Err(e) => {
                tracing::warn!(error = %e, "no index stage thread; committing without overlap");
                None
            }
        };
        while let Some(first) = rx.blocking_recv() {
            let mut bytes = first.weight();
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH_OPS && bytes < MAX_BATCH_BYTES {
                match rx.try_recv() {
                    Ok(op) => {
                        bytes += op.weight();
                        batch.push(op);
                    }
                    Err(_) => break,
                }
            }
            let Some((batch, new_extents)) = this.sync_data(batch) else {
                continue;
            };
            match &index_stage {
                Some((to_index, _)) => {
                    if let Err(std::sync::mpsc::SendError((batch, new_extents))) =
                        to_index.send((batch, new_extents))
                    {
                        this.write_index(batch, new_extents);
                    }
                }
                None => this.write_index(batch, new_extents),
            }
        }
        if let Some((to_index, handle)) = index_stage.take() {
            drop(to_index);
            if handle.join().is_err() {
                tracing::error!("index stage thread panicked");
            }
        }
    }

    fn failure(&self) -> Option<String> {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_failure(&self, why: String) {
        *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    }

    /// Refuses the batch if the disk failed earlier. Its fresh extents never reached the index,
    /// so they can be reused.
    fn refuse_if_failed(
        &self,
        batch: Vec<CommitOp>,
        new_extents: &[Extent],
    ) -> Option<Vec<CommitOp>> {
        let Some(why) = self.failure() else {
            return Some(batch);
        };
        self.free(new_extents);
        fail_all(batch, |_| {
            DiskError::Index(format!("disk failed earlier: {why}"))
        });
        None
    }

    fn free(&self, extents: &[Extent]) {
        if extents.iter().all(|e| e.len == 0) {
            return;
        }
        match self.alloc.lock() {
            Ok(mut a) => extents
                .iter()
                .filter(|e| e.len > 0)
                .for_each(|e| a.free(*e)),
            Err(_) => tracing::error!("allocator lock poisoned; blocks not released"),
        }
    }

    fn io_err(&self, e: &std::io::Error) -> DiskError {
        DiskError::Io {
            path: self.data_path.clone(),
            source: std::io::Error::new(e.kind(), e.to_string()),
        }
    }

    /// First stage: one fdatasync for all chunk data of the batch.
    fn sync_data(&self, batch: Vec<CommitOp>) -> Option<(Vec<CommitOp>, Vec<Extent>)> {
        let new_extents: Vec<Extent> = batch
            .iter()
            .filter_map(|op| match op {
                CommitOp::PutChunk { entry, .. } => Some(extent_of(entry)),
                CommitOp::WriteBlocks { start, crcs, .. } => Some(Extent {
                    start: *start,
                    len: crcs.len() as u64,
                }),
                _ => None,
            })
            .collect();

        let batch = self.refuse_if_failed(batch, &new_extents)?;

        if !new_extents.is_empty() {
            self.counters.data_syncs.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = self.io.datasync_blocking() {
                tracing::error!(error = %e, "fdatasync of the data file failed; refusing writes");
                self.set_failure(format!("fdatasync: {e}"));
                self.free(&new_extents);
                fail_all(batch, |_| self.io_err(&e));
                return None;
            }
        }
        Some((batch, new_extents))
    }

    /// Second stage: one synced `WriteBatch` for all index and record changes of the batch,
    /// then release of the blocks it freed, then the answers.
    fn write_index(&self, batch: Vec<CommitOp>, new_extents: Vec<Extent>) {
        let Some(batch) = self.refuse_if_failed(batch, &new_extents) else {
            return;
        };

        let (wb, outcomes, mut released, unused, chunk_delta) = match self.plan(&batch) {
            Ok(p) => p,
            Err(e) => {
                let msg = e.to_string();
                self.free(&new_extents);
                fail_all(batch, |_| DiskError::Index(msg.clone()));
                return;
            }
        };

        if !wb.is_empty() {
            let mut wo = WriteOptions::default();
            wo.set_sync(true);
            self.counters.index_syncs.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = self.db.write_opt(wb, &wo) {
                // Whether the batch reached the WAL is unknown: release nothing, ack nothing.
                let msg = e.into_string();
                tracing::error!(error = %msg, "index write failed; refusing writes");
                self.set_failure(format!("index write: {msg}"));
                fail_all(batch, |_| DiskError::Index(msg.clone()));
                return;
            }
        }

        // Durable: extents that no index entry refers to any more can be reused now.
        released.extend(unused);
        self.free(&released);
        if chunk_delta >= 0 {
            self.counters
                .chunks
                .fetch_add(chunk_delta as u64, Ordering::Relaxed);
        } else {
            self.counters
                .chunks
                .fetch_sub(chunk_delta.unsigned_abs(), Ordering::Relaxed);
        }
        self.counters.rounds.fetch_add(1, Ordering::Relaxed);
        self.counters
            .chunk_puts
            .fetch_add(new_extents.len() as u64, Ordering::Relaxed);
        self.counters
            .ops
            .fetch_add(batch.len() as u64, Ordering::Relaxed);

        for (op, outcome) in batch.into_iter().zip(outcomes) {
            answer(op, outcome);
        }
    }

    /// Builds the batch's `WriteBatch`, applying ops in order against the committed index plus
    /// the changes of earlier ops of the same batch. Returns the batch, one outcome per op, the
    /// extents released once the batch is durable, extents of puts that failed (never referenced)
    /// and the change of the chunk count.
    #[allow(clippy::type_complexity)]
    fn plan(
        &self,
        batch: &[CommitOp],
    ) -> Result<(WriteBatch, Vec<Outcome>, Vec<Extent>, Vec<Extent>, i64)> {
        let chunks = index::cf(&self.db, CF_CHUNKS)?;
        let records = index::cf(&self.db, CF_RECORDS)?;
        let blocks = index::cf(&self.db, CF_BLOCKS)?;
        let mut wb = WriteBatch::default();
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut released = Vec::new();
        let mut unused = Vec::new();
        let mut delta = 0i64;
        // Current state as of the ops planned so far: `None` = absent.
        let mut chunk_state: HashMap<ChunkId, Option<Extent>> = HashMap::new();
        let mut record_state: HashMap<&[u8], Option<u64>> = HashMap::new();
        let mut block_state: HashMap<(u64, u64), Option<u64>> = HashMap::new();

        for op in batch {
            let outcome = match op {
                CommitOp::PutChunk { id, entry, .. } => {
                    match self.chunk_extent(&mut chunk_state, chunks, id) {
                        Ok(old) => {
                            if let Some(old) = old {
                                released.push(old);
                            } else {
                                delta += 1;
                            }
                            wb.put_cf(chunks, id.0, entry.encode());
                            chunk_state.insert(*id, Some(extent_of(entry)));
                            Outcome::Done
                        }
                        Err(e) => {
                            unused.push(extent_of(entry));
                            Outcome::Failed(e)
                        }
                    }
                }
                CommitOp::DeleteChunk { id, .. } => {
                    match self.chunk_extent(&mut chunk_state, chunks, id) {
                        Ok(Some(old)) => {
                            released.push(old);
                            delta -= 1;
                            wb.delete_cf(chunks, id.0);
                            chunk_state.insert(*id, None);
                            Outcome::Done
                        }
                        Ok(None) => Outcome::Done,
                        Err(e) => Outcome::Failed(e),
                    }
                }
                CommitOp::PutRecord { key, rec, .. } => {
                    let current = match record_state.get(key.as_slice()) {
                        Some(ts) => Ok(*ts),
                        None => self.record_ts(records, key),
                    };
                    match current {
                        Ok(Some(ts)) if ts >= rec.timestamp => {
                            record_state.insert(key.as_slice(), Some(ts));
                            Outcome::Applied(false)
                        }
                        Ok(_) => {
                            wb.put_cf(records, key, index::encode_record(rec));
                            record_state.insert(key.as_slice(), Some(rec.timestamp));
                            Outcome::Applied(true)
                        }
                        Err(e) => Outcome::Failed(e),
                    }
                }
                CommitOp::RemoveRecord { key, .. } => {
                    wb.delete_cf(records, key);
                    record_state.insert(key.as_slice(), None);
                    Outcome::Done
                }
                CommitOp::WriteBlocks {
                    volume,
                    blocks: numbers,
                    start,
                    crcs,
                    ..
                } => {
                    let olds: Result<Vec<Option<u64>>> = numbers
                        .iter()
                        .map(|&b| self.block_addr(&mut block_state, blocks, *volume, b))
                        .collect();
                    match olds {
                        Ok(olds) => {
                            for (i, (old, crc)) in olds.into_iter().zip(crcs).enumerate() {
                                let block = numbers[i];
                                let addr = start + i as u64;
                                if let Some(old) = old {
                                    released.push(Extent { start: old, len: 1 });
                                }
                                let entry = BlockEntry { addr, crc: *crc };
                                wb.put_cf(blocks, index::block_key(*volume, block), entry.encode());
                                block_state.insert((*volume, block), Some(addr));
                            }
                            Outcome::Done
                        }
                        Err(e) => {
                            unused.push(Extent {
                                start: *start,
                                len: crcs.len() as u64,
                            });
                            Outcome::Failed(e)
                        }
                    }
                }
                CommitOp::TrimBlocks {
                    volume,
                    first,
                    count,
                    ..
                } => match self.blocks_in(&block_state, blocks, *volume, *first, *count) {
                    Ok(present) => {
                        for (block, addr) in present {
                            released.push(Extent {
                                start: addr,
                                len: 1,
                            });
                            wb.delete_cf(blocks, index::block_key(*volume, block));
                            block_state.insert((*volume, block), None);
                        }
                        Outcome::Done
                    }
                    Err(e) => Outcome::Failed(e),
                },
            };
            outcomes.push(outcome);
        }
        Ok((wb, outcomes, released, unused, delta))
    }

    /// The extent a chunk currently occupies (`None` if absent).
    fn chunk_extent(
        &self,
        state: &mut HashMap<ChunkId, Option<Extent>>,
        chunks: &rocksdb::ColumnFamily,
        id: &ChunkId,
    ) -> Result<Option<Extent>> {
        if let Some(s) = state.get(id) {
            return Ok(*s);
        }
        let current = match self
            .db
            .get_pinned_cf(chunks, id.0)
            .map_err(index::index_err)?
        {
            None => None,
            Some(v) => match ChunkEntry::decode(&v) {
                Some(e) => Some(extent_of(&e)),
                None => {
                    // Its blocks are unknown (they were not marked at open either); the entry
                    // is simply replaced or removed.
                    tracing::warn!(chunk = ?id, "replacing an undecodable chunk index entry");
                    Some(Extent { start: 0, len: 0 })
                }
            },
        };
        state.insert(*id, current);
        Ok(current)
    }

    /// The data-area block a volume block currently occupies (`None`: a hole).
    fn block_addr(
        &self,
        state: &mut HashMap<(u64, u64), Option<u64>>,
        blocks: &rocksdb::ColumnFamily,
        volume: u64,
        block: u64,
    ) -> Result<Option<u64>> {
        if let Some(s) = state.get(&(volume, block)) {
            return Ok(*s);
        }
        let key = index::block_key(volume, block);
        let current = match self
            .db
            .get_pinned_cf(blocks, key)
            .map_err(index::index_err)?
        {
            None => None,
            Some(v) => match BlockEntry::decode(&v) {
                Some(e) => Some(e.addr),
                None => {
                    tracing::warn!(volume, block, "replacing an undecodable block index entry");
                    None
                }
            },
        };
        state.insert((volume, block), current);
        Ok(current)
    }

    /// Volume blocks in `first..first + count` that hold data, with their addresses, as of
    /// the committed index plus the ops planned so far.
    fn blocks_in(
        &self,
        state: &HashMap<(u64, u64), Option<u64>>,
        blocks: &rocksdb::ColumnFamily,
        volume: u64,
        first: u64,
        count: u64,
    ) -> Result<Vec<(u64, u64)>> {
        let end = first.saturating_add(count);
        let mut found: std::collections::BTreeMap<u64, Option<u64>> =
            std::collections::BTreeMap::new();
        let from = index::block_key(volume, first);
        let to = index::block_key(volume, end);
        for item in self.db.iterator_cf(
            blocks,
            rocksdb::IteratorMode::From(&from, rocksdb::Direction::Forward),
        ) {
            let (k, v) = item.map_err(index::index_err)?;
            if *k >= to[..] {
                break;
            }
            let Some((_, block)) = index::decode_block_key(&k) else {
                continue;
            };
            found.insert(block, BlockEntry::decode(&v).map(|e| e.addr));
        }
        for (&(v, b), addr) in state {
            if v == volume && (first..end).contains(&b) {
                found.insert(b, *addr);
            }
        }
        Ok(found
            .into_iter()
            .filter_map(|(b, a)| a.map(|a| (b, a)))
            .collect())
    }

    fn record_ts(&self, records: &rocksdb::ColumnFamily, key: &[u8]) -> Result<Option<u64>> {
        match self
            .db
            .get_pinned_cf(records, key)
            .map_err(index::index_err)?
        {
            None => Ok(None),
            Some(v) => match index::decode_record(&v) {
                Some(r) => Ok(Some(r.timestamp)),
                None => Err(index::corrupt_record(key)),
            },
        }
    }
}

pub(crate) fn extent_of(e: &ChunkEntry) -> Extent {
    Extent {
        start: e.offset / BLOCK as u64,
        len: e.blocks(),
    }
}

fn fail_all(batch: Vec<CommitOp>, mut err: impl FnMut(&CommitOp) -> DiskError) {
    for op in batch {
        let e = err(&op);
        answer(op, Outcome::Failed(e));
    }
}

fn answer(op: CommitOp, outcome: Outcome) {
    // A writer that stopped waiting (its future was dropped) just misses the answer.
    let unit = |o: Outcome| match o {
        Outcome::Failed(e) => Err(e),
        Outcome::Done | Outcome::Applied(_) => Ok(()),
    };
    let sent = match op {
        CommitOp::PutRecord { reply, .. } => reply
            .send(match outcome {
                Outcome::Applied(b) => Ok(b),
                Outcome::Done => Ok(true),
                Outcome::Failed(e) => Err(e),
            })
            .is_ok(),
        CommitOp::PutChunk { reply, .. }
        | CommitOp::DeleteChunk { reply, .. }
        | CommitOp::RemoveRecord { reply, .. }
        | CommitOp::WriteBlocks { reply, .. }
        | CommitOp::TrimBlocks { reply, .. } => reply.send(unit(outcome)).is_ok(),
    };
    if !sent {
        tracing::debug!("writer stopped waiting before its write was acknowledged");
    }
}
