//! The group committer: one thread that makes writes durable in batches.
//!
//! Each round takes every write waiting in the queue (bounded by [`MAX_BATCH_OPS`] and
//! [`MAX_BATCH_BYTES`]), issues one fdatasync of the data file for all chunk data written by
//! the batch, then one synced rocksdb `WriteBatch` with all index and record changes, and only
//! then answers the writers. Blocks released by the batch (deleted or overwritten chunks)
//! return to the allocator after that `WriteBatch` is durable.
//!
//! Volume block writes may ask for less (`synced: false`): a round made only of those skips
//! the fdatasync and writes its `WriteBatch` unsynced, so it survives a crash of the process
//! but not of the machine. Its entries carry the round's generation and the durable entry they
//! replaced, whose block stays allocated until a synced round (any other op, a
//! [`CommitOp::Sync`], or [`UNSYNCED_BYTES_MAX`] of unsynced data) records the generation as
//! durable. Opening the disk checks the blocks of entries newer than that (see
//! `blocks::mark_blocks`). A round of only `Sync` ops syncs the data file and the WAL side
//! by side and records the generation unsynced (see `Committer::sync_round`).

use crate::alloc::{Allocator, Extent};
use crate::buf::BLOCK;
use crate::index::{self, BlockEntry, ChunkEntry, CF_BLOCKS, CF_CHUNKS, CF_RECORDS, CF_TALLIES};
use crate::io::IoEngine;
use crate::relocate::{self, Expect, WriteStamps};
use crate::{DiskError, Record, Result, Tally, TallyTotals};
use rocksdb::{WriteBatch, WriteOptions, DB};
use std::collections::{BTreeMap, HashMap};
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
/// Unsynced volume data after which the next round is synced anyway: bounds what opening the
/// disk after an unclean stop has to check.
pub(crate) const UNSYNCED_BYTES_MAX: u64 = 4 << 30;

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
    /// `start + i`. `synced: false` lets the answer come before the write is durable.
    WriteBlocks {
        volume: u64,
        blocks: Vec<u64>,
        start: u64,
        crcs: Vec<u32>,
        synced: bool,
        /// A relocation: applies only if this still holds, else its extent is freed.
        expect: Option<Expect>,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Make every write answered so far durable.
    Sync { reply: oneshot::Sender<Result<()>> },
    /// A synced round that also syncs the index, whatever else it carries, so that blocks
    /// replaced by unsynced writes (`deferred`, `deferred_pending`) are released. Sent when an
    /// allocation finds the disk full.
    Reclaim { reply: oneshot::Sender<Result<()>> },
    /// Volume blocks `first..first + count` become holes.
    TrimBlocks {
        volume: u64,
        first: u64,
        count: u64,
        reply: oneshot::Sender<Result<()>>,
    },
}

impl CommitOp {
    /// Does the round carrying this op have to be synced?
    fn needs_sync(&self) -> bool {
        !matches!(self, CommitOp::WriteBlocks { synced: false, .. })
    }

    /// Unsynced data this op adds.
    fn unsynced_bytes(&self) -> u64 {
        match self {
            CommitOp::WriteBlocks {
                synced: false,
                crcs,
                ..
            } => (crcs.len() * BLOCK) as u64,
            _ => 0,
        }
    }

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
    pub relocated_blocks: AtomicU64,
    pub relocations_lost: AtomicU64,
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
    /// Generation of the unsynced rounds since the last synced one (the synced generation
    /// plus one). Only the index stage changes it.
    pub gen: AtomicU64,
    /// Index stage: some entry of generation `gen` was written.
    pub gen_used: std::sync::atomic::AtomicBool,
    /// Blocks of durable entries replaced by unsynced ones: released by the next synced round.
    pub deferred: Mutex<Vec<Extent>>,
    /// Deferred blocks whose generation a sync-only round made durable but recorded unsynced:
    /// released by the next round that syncs the index.
    pub deferred_pending: Mutex<Vec<Extent>>,
    /// Bumped as writes and trims are planned; relocations check them.
    pub stamps: Arc<WriteStamps>,
}

/// A batch on its way from the sync stage to the index stage.
pub(crate) struct Round {
    batch: Vec<CommitOp>,
    /// Extents the batch's writes filled.
    new_extents: Vec<Extent>,
    /// Was its data fdatasync'd, and will its `WriteBatch` be synced?
    synced: bool,
    /// A round of only [`CommitOp::Sync`]: the index stage syncs the data file and the index
    /// together. Carries whether data of unsynced rounds awaits an fdatasync.
    sync_only: Option<bool>,
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
        let (to_index, index_rx) = std::sync::mpsc::sync_channel::<Round>(1);
        let index_stage = {
            let this = this.clone();
            std::thread::Builder::new()
                .name("strata-disk-index".into())
                .spawn(move || {
                    for round in index_rx {
                        this.write_index(round);
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
        // Data written by unsynced rounds since the last fdatasync.
        let mut unsynced = 0u64;
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
            let added: u64 = batch.iter().map(CommitOp::unsynced_bytes).sum();
            let synced =
                batch.iter().any(CommitOp::needs_sync) || unsynced + added >= UNSYNCED_BYTES_MAX;
            let Some(round) = this.sync_data(batch, synced, unsynced > 0) else {
                continue;
            };
            unsynced = if synced { 0 } else { unsynced + added };
            match &index_stage {
                Some((to_index, _)) => {
                    if let Err(std::sync::mpsc::SendError(round)) = to_index.send(round) {
                        this.write_index(round);
                    }
                }
                None => this.write_index(round),
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

    /// First stage: one fdatasync for all data of a synced round, and of the unsynced rounds
    /// before it (`earlier_unsynced`).
    fn sync_data(
        &self,
        batch: Vec<CommitOp>,
        synced: bool,
        earlier_unsynced: bool,
    ) -> Option<Round> {
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

        if batch.iter().all(|op| matches!(op, CommitOp::Sync { .. })) {
            return Some(Round {
                batch,
                new_extents,
                synced,
                sync_only: Some(earlier_unsynced),
            });
        }
        if synced && (!new_extents.is_empty() || earlier_unsynced) {
            self.counters.data_syncs.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = self.io.datasync_blocking() {
                tracing::error!(error = %e, "fdatasync of the data file failed; refusing writes");
                self.set_failure(format!("fdatasync: {e}"));
                self.free(&new_extents);
                fail_all(batch, |_| self.io_err(&e));
                return None;
            }
        }
        Some(Round {
            batch,
            new_extents,
            synced,
            sync_only: None,
        })
    }

    /// Index stage of a round of only [`CommitOp::Sync`] (a FLUSH): the fdatasync of the data
    /// file and the sync of the index's log run at once, as each waits for the device to flush
    /// its cache and one after the other they doubled a FLUSH's latency. The entries of the
    /// unsynced rounds are durable after both; the generation is then recorded as synced
    /// without a sync of its own. Should that record be lost, opening the disk checks the
    /// generation's blocks, which are intact, so the blocks its entries replaced stay allocated
    /// until the record is durable: the next round that syncs the index releases them.
    fn sync_round(&self, batch: Vec<CommitOp>, data_unsynced: bool) {
        let Some(batch) = self.refuse_if_failed(batch, &[]) else {
            return;
        };
        let gen = self.gen.load(Ordering::Relaxed);
        let gen_used = self.gen_used.load(Ordering::Relaxed);
        let mut released = Vec::new();
        if gen_used || data_unsynced {
            self.counters.data_syncs.fetch_add(1, Ordering::Relaxed);
            let sync_index = || {
                if !gen_used {
                    return Ok(());
                }
                self.counters.index_syncs.fetch_add(1, Ordering::Relaxed);
                self.db.flush_wal(true).map_err(|e| e.into_string())
            };
            // The data file's fdatasync runs while this thread syncs the index.
            let pending = self.io.datasync_start();
            let index = sync_index();
            let data = pending.wait();
            if let Err(e) = data {
                tracing::error!(error = %e, "fdatasync of the data file failed; refusing writes");
                self.set_failure(format!("fdatasync: {e}"));
                fail_all(batch, |_| self.io_err(&e));
                return;
            }
            if let Err(msg) = index {
                tracing::error!(error = %msg, "index sync failed; refusing writes");
                self.set_failure(format!("index sync: {msg}"));
                fail_all(batch, |_| DiskError::Index(msg.clone()));
                return;
            }
            if gen_used {
                // Every generation recorded before this sync is durable now.
                released.append(
                    &mut self
                        .deferred_pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()),
                );
            }
        }
        if gen_used {
            let mut wb = WriteBatch::default();
            let recorded = index::cf(&self.db, index::CF_META).and_then(|meta| {
                wb.put_cf(meta, index::META_SYNCED_GEN, gen.to_be_bytes());
                self.db
                    .write_opt(wb, &WriteOptions::default())
                    .map_err(index::index_err)
            });
            if let Err(e) = recorded {
                let msg = e.to_string();
                tracing::error!(error = %msg, "index write failed; refusing writes");
                self.set_failure(format!("index write: {msg}"));
                self.free(&released);
                fail_all(batch, |_| DiskError::Index(msg.clone()));
                return;
            }
            self.gen.store(gen + 1, Ordering::Relaxed);
            self.gen_used.store(false, Ordering::Relaxed);
            let deferred =
                std::mem::take(&mut *self.deferred.lock().unwrap_or_else(|p| p.into_inner()));
            self.deferred_pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(deferred);
        }
        self.free(&released);
        self.counters.rounds.fetch_add(1, Ordering::Relaxed);
        self.counters
            .ops
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        for op in batch {
            answer(op, Outcome::Done);
        }
    }

    /// Second stage: one `WriteBatch` for all index and record changes of the batch (synced
    /// if the round is), then release of the blocks it freed, then the answers.
    fn write_index(&self, round: Round) {
        let Round {
            batch,
            new_extents,
            synced,
            sync_only,
        } = round;
        if let Some(data_unsynced) = sync_only {
            return self.sync_round(batch, data_unsynced);
        }
        let Some(batch) = self.refuse_if_failed(batch, &new_extents) else {
            return;
        };

        let planned = self.plan(&batch, synced);
        let (mut wb, outcomes, mut released, unused, chunk_delta, deferred) = match planned {
            Ok(p) => p,
            Err(e) => {
                let msg = e.to_string();
                self.free(&new_extents);
                fail_all(batch, |_| DiskError::Index(msg.clone()));
                return;
            }
        };

        let gen = self.gen.load(Ordering::Relaxed);
        // Entries of generation `gen` exist if an earlier unsynced round wrote some or this
        // one does (an unsynced round's batch holds only such entries).
        let gen_used = self.gen_used.load(Ordering::Relaxed) || (!synced && !wb.is_empty());
        if synced && gen_used {
            match index::cf(&self.db, index::CF_META) {
                Ok(meta) => wb.put_cf(meta, index::META_SYNCED_GEN, gen.to_be_bytes()),
                Err(e) => {
                    let msg = e.to_string();
                    self.free(&new_extents);
                    fail_all(batch, |_| DiskError::Index(msg.clone()));
                    return;
                }
            }
        }
        let wb_was_empty = wb.is_empty();
        if !wb_was_empty {
            let mut wo = WriteOptions::default();
            wo.set_sync(synced);
            if synced {
                self.counters.index_syncs.fetch_add(1, Ordering::Relaxed);
            }
            if let Err(e) = self.db.write_opt(wb, &wo) {
                // Whether the batch reached the WAL is unknown: release nothing, ack nothing.
                let msg = e.into_string();
                tracing::error!(error = %msg, "index write failed; refusing writes");
                self.set_failure(format!("index write: {msg}"));
                fail_all(batch, |_| DiskError::Index(msg.clone()));
                return;
            }
        }

        // Durable (or, unsynced, replacing entries that were not): extents that no index
        // entry refers to any more can be reused now.
        released.extend(unused);
        if synced {
            if gen_used {
                self.gen.store(gen + 1, Ordering::Relaxed);
                self.gen_used.store(false, Ordering::Relaxed);
            }
            released.append(&mut self.deferred.lock().unwrap_or_else(|p| p.into_inner()));
            let mut pending = self
                .deferred_pending
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if wb_was_empty && !pending.is_empty() {
                // Nothing was written, so the generation a sync-only round recorded unsynced
                // is made durable by a sync of the index's log alone.
                self.counters.index_syncs.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = self.db.flush_wal(true) {
                    tracing::warn!(error = %e, "index sync failed; replaced blocks stay reserved");
                } else {
                    released.append(&mut pending);
                }
            } else if !wb_was_empty {
                // The synced write made every generation recorded before it durable.
                released.append(&mut pending);
            }
            drop(pending);
        } else {
            self.gen_used.store(gen_used, Ordering::Relaxed);
            self.deferred
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(deferred);
        }
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
    /// Unsynced, it also returns the blocks of durable entries its block writes replaced
    /// (released by the next synced round).
    #[allow(clippy::type_complexity)]
    fn plan(
        &self,
        batch: &[CommitOp],
        synced: bool,
    ) -> Result<(
        WriteBatch,
        Vec<Outcome>,
        Vec<Extent>,
        Vec<Extent>,
        i64,
        Vec<Extent>,
    )> {
        let gen = self.gen.load(Ordering::Relaxed);
        let mut deferred = Vec::new();
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
        // Timestamp and tally of each record as of the ops planned so far.
        let mut record_state: HashMap<&[u8], Option<(u64, Option<Tally>)>> = HashMap::new();
        let mut tally_changes: HashMap<&[u8], TallyChange> = HashMap::new();
        // Ordered, not hashed: a round carries up to hundreds of thousands of mostly
        // adjacent blocks, and a trim asks for a range of them.
        let mut block_state: BTreeMap<(u64, u64), Option<BlockEntry>> = BTreeMap::new();

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
                    match self.record_head(&record_state, records, key) {
                        Ok(Some(head)) if head.0 >= rec.timestamp => {
                            record_state.insert(key.as_slice(), Some(head));
                            Outcome::Applied(false)
                        }
                        Ok(old) => {
                            wb.put_cf(records, key, index::encode_record(rec));
                            let new = rec.value.as_ref().and(rec.tally);
                            let old = old.and_then(|(_, t)| t);
                            note_tally(&mut tally_changes, key, old, -1, rec.timestamp);
                            note_tally(&mut tally_changes, key, new, 1, rec.timestamp);
                            record_state.insert(key.as_slice(), Some((rec.timestamp, new)));
                            Outcome::Applied(true)
                        }
                        Err(e) => Outcome::Failed(e),
                    }
                }
                CommitOp::RemoveRecord { key, .. } => {
                    // An undecodable record counted in no tally this disk can read.
                    let old = self.record_head(&record_state, records, key).ok().flatten();
                    if let Some((ts, Some(t))) = old {
                        note_tally(&mut tally_changes, key, Some(t), -1, ts);
                    }
                    wb.delete_cf(records, key);
                    record_state.insert(key.as_slice(), None);
                    Outcome::Done
                }
                CommitOp::WriteBlocks {
                    volume,
                    blocks: numbers,
                    start,
                    crcs,
                    expect,
                    ..
                } => {
                    let current = self.block_entries(&mut block_state, blocks, *volume, numbers);
                    let lost = match (&current, expect) {
                        (Ok(olds), Some(x)) => {
                            let holds = x.holds(&self.stamps, olds);
                            relocate::note(&self.counters, holds, numbers.len());
                            !holds
                        }
                        _ => false,
                    };
                    if !lost {
                        self.stamps.bump_blocks(*volume, numbers);
                    }
                    match current {
                        Ok(_) if lost => {
                            // Nothing refers to the relocation's extent.
                            unused.push(Extent {
                                start: *start,
                                len: crcs.len() as u64,
                            });
                            Outcome::Done
                        }
                        Ok(olds) => {
                            for (i, (old, crc)) in olds.into_iter().zip(crcs).enumerate() {
                                let block = numbers[i];
                                let addr = start + i as u64;
                                let entry = if synced {
                                    // An unsynced entry's `prev` block is already deferred.
                                    if let Some(old) = old {
                                        released.push(Extent {
                                            start: old.addr,
                                            len: 1,
                                        });
                                    }
                                    BlockEntry::synced(addr, *crc)
                                } else {
                                    let prev = match old {
                                        None => None,
                                        Some(o) if o.gen == gen => {
                                            released.push(Extent {
                                                start: o.addr,
                                                len: 1,
                                            });
                                            o.prev
                                        }
                                        Some(o) => {
                                            deferred.push(Extent {
                                                start: o.addr,
                                                len: 1,
                                            });
                                            Some((o.addr, o.crc))
                                        }
                                    };
                                    BlockEntry {
                                        addr,
                                        crc: *crc,
                                        gen,
                                        prev,
                                    }
                                };
                                wb.put_cf(blocks, index::block_key(*volume, block), entry.encode());
                                block_state.insert((*volume, block), Some(entry));
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
                        self.stamps.bump(*volume, *first, *count);
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
                CommitOp::Sync { .. } | CommitOp::Reclaim { .. } => Outcome::Done,
            };
            outcomes.push(outcome);
        }
        if !tally_changes.is_empty() {
            let tallies = index::cf(&self.db, CF_TALLIES)?;
            for (group, change) in tally_changes {
                let current = self.tally(tallies, group)?;
                wb.put_cf(tallies, group, index::encode_tally(&change.apply(current)));
            }
        }
        Ok((wb, outcomes, released, unused, delta, deferred))
    }

    /// A tally group's totals as committed (zero if none). An undecodable entry restarts from
    /// zero rather than refuse every write to its group.
    fn tally(&self, tallies: &rocksdb::ColumnFamily, group: &[u8]) -> Result<TallyTotals> {
        let raw = self
            .db
            .get_pinned_cf(tallies, group)
            .map_err(index::index_err)?;
        Ok(match raw {
            None => TallyTotals::default(),
            Some(v) => index::decode_tally(&v).unwrap_or_else(|| {
                tracing::warn!(group = %String::from_utf8_lossy(group), "undecodable tally entry; counting again from zero");
                TallyTotals::default()
            }),
        })
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
    fn block_entry(
        &self,
        state: &mut BTreeMap<(u64, u64), Option<BlockEntry>>,
        blocks: &rocksdb::ColumnFamily,
        volume: u64,
        block: u64,
    ) -> Result<Option<BlockEntry>> {
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
                Some(e) => Some(e),
                None => {
                    tracing::warn!(volume, block, "replacing an undecodable block index entry");
                    None
                }
            },
        };
        state.insert((volume, block), current);
        Ok(current)
    }

    /// [`Committer::block_entry`] for each of `numbers`. A run of consecutive blocks is read
    /// with one seek through the index rather than a lookup per block: a 1 MiB write is 256
    /// blocks, and per-block lookups were the largest part of the index's CPU on that path.
    fn block_entries(
        &self,
        state: &mut BTreeMap<(u64, u64), Option<BlockEntry>>,
        blocks: &rocksdb::ColumnFamily,
        volume: u64,
        numbers: &[u64],
    ) -> Result<Vec<Option<BlockEntry>>> {
        const RUN_MIN: usize = 4;
        let mut out = Vec::with_capacity(numbers.len());
        let mut i = 0;
        while i < numbers.len() {
            let first = numbers[i];
            let mut len = 1;
            while i + len < numbers.len() && numbers[i + len] == first.wrapping_add(len as u64) {
                len += 1;
            }
            let run = &numbers[i..i + len];
            i += len;
            if len < RUN_MIN || run.iter().all(|b| state.contains_key(&(volume, *b))) {
                for &b in run {
                    out.push(self.block_entry(state, blocks, volume, b)?);
                }
                continue;
            }
            // The committed entries of the run, in block order, then the planned ones over them.
            let mut stored: Vec<Option<BlockEntry>> = vec![None; len];
            let from = index::block_key(volume, first);
            let mut opts = rocksdb::ReadOptions::default();
            opts.set_iterate_upper_bound(
                index::block_key(volume, first.saturating_add(len as u64)).to_vec(),
            );
            let mut it = self.db.raw_iterator_cf_opt(blocks, opts);
            it.seek(from);
            while it.valid() {
                let (Some(k), Some(v)) = (it.key(), it.value()) else {
                    break;
                };
                if let Some((vol, b)) = index::decode_block_key(k) {
                    if vol == volume && b >= first && b - first < len as u64 {
                        stored[(b - first) as usize] = BlockEntry::decode(v).or_else(|| {
                            tracing::warn!(
                                volume,
                                block = b,
                                "replacing an undecodable block index entry"
                            );
                            None
                        });
                    }
                }
                it.next();
            }
            it.status().map_err(index::index_err)?;
            for (&b, committed) in run.iter().zip(stored) {
                let current = *state.entry((volume, b)).or_insert(committed);
                out.push(current);
            }
        }
        Ok(out)
    }

    /// Volume blocks in `first..first + count` that hold data, with their addresses, as of
    /// the committed index plus the ops planned so far.
    fn blocks_in(
        &self,
        state: &BTreeMap<(u64, u64), Option<BlockEntry>>,
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
        for (&(_, b), entry) in state.range((volume, first)..(volume, end)) {
            found.insert(b, entry.map(|e| e.addr));
        }
        Ok(found
            .into_iter()
            .filter_map(|(b, a)| a.map(|a| (b, a)))
            .collect())
    }

    /// The record's timestamp and, if it is live, its tally (`None`: no record), as of the ops
    /// planned so far (`state`) or else as stored.
    fn record_head(
        &self,
        state: &HashMap<&[u8], Option<(u64, Option<Tally>)>>,
        records: &rocksdb::ColumnFamily,
        key: &[u8],
    ) -> Result<Option<(u64, Option<Tally>)>> {
        if let Some(head) = state.get(key) {
            return Ok(*head);
        }
        match self
            .db
            .get_pinned_cf(records, key)
            .map_err(index::index_err)?
        {
            None => Ok(None),
            Some(v) => match index::decode_record(&v) {
                Some(r) => Ok(Some((r.timestamp, r.value.and(r.tally)))),
                None => Err(index::corrupt_record(key)),
            },
        }
    }
}

/// What one round changes in a tally group.
#[derive(Default)]
struct TallyChange {
    count: i64,
    weight: i128,
    stamp: u64,
}

impl TallyChange {
    fn apply(&self, t: TallyTotals) -> TallyTotals {
        let clamp = |v: i128| v.clamp(0, u64::MAX as i128) as u64;
        TallyTotals {
            count: clamp(t.count as i128 + self.count as i128),
            weight: clamp(t.weight as i128 + self.weight),
            stamp: t.stamp.max(self.stamp),
        }
    }
}

/// Adds (`sign` 1) or takes out (`sign` -1) a record's tally in its group, stamped `ts`. A
/// tally whose group would be longer than the key counts nowhere (`Disk::put_record` refuses
/// those).
fn note_tally<'k>(
    changes: &mut HashMap<&'k [u8], TallyChange>,
    key: &'k [u8],
    tally: Option<Tally>,
    sign: i64,
    ts: u64,
) {
    let Some(t) = tally else { return };
    let Some(group) = key.get(..t.group_len as usize) else {
        return;
    };
    let c = changes.entry(group).or_default();
    c.count += sign;
    c.weight += sign as i128 * t.weight as i128;
    c.stamp = c.stamp.max(ts);
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
        | CommitOp::TrimBlocks { reply, .. }
        | CommitOp::Sync { reply }
        | CommitOp::Reclaim { reply } => reply.send(unit(outcome)).is_ok(),
    };
    if !sent {
        tracing::debug!("writer stopped waiting before its write was acknowledged");
    }
}
