//! Block volumes on the replicated core: a volume is a sequence of 4 MiB extents, each
//! placed by the ring (placement key `vol/<layer>/<extent>`) and written to every replica.
//! Volume and snapshot records live in the meta group (see [`records`]).
//!
//! Owns block semantics: extents, layers (snapshots and copy-on-write clones), thin
//! provisioning (unwritten blocks are holes that read as zeroes), write fan-out and read
//! fallback. It must not know wire protocols: it implements `strata_nbd::BlockTarget`,
//! which the NBD server and the vhost-user-blk backend drive.
//!
//! A write is acknowledged once it is in the volume's write-back cache ([`cache`]); the cache
//! writes it to every replica of its extent, and a FLUSH or FUA returns once a write quorum of
//! in-sync replicas made it durable; a replica that fails it leaves the layer's in-sync set
//! first ([`insync`]) and is copied back by a resync ([`resync`]) before reads use it again.

mod cache;
pub mod gc;
pub mod insync;
pub mod records;
pub mod registry;
pub mod resync;
mod syncs;

pub use insync::InSync;
pub use records::{
    create, get_local, list_local, SnapshotSpec, VolumeSpec, GARBAGE_TABLE, SNAPSHOTS_TABLE,
    VOLUMES_TABLE,
};
pub use registry::{Frontend, Registry};

use bytes::{Bytes, BytesMut};
use cache::{Batch, Cache, Take, PIPELINE};
use futures::future::{join_all, BoxFuture, FutureExt};
use futures::StreamExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use strata_data::{DataError, DataPlane, Replica};
use strata_disk::{BLOCKS_PER_WRITE_MAX, BLOCK_BYTES};
use strata_meta::MetaError;
use strata_nbd::{BlockSizes, BlockTarget, Extent, NbdError, NbdResult};
use syncs::SyncGroup;

/// Bytes of one extent: the unit of placement.
pub const EXTENT_BYTES: u64 = 4 << 20;
const BLOCK: u64 = BLOCK_BYTES as u64;

/// Errors of the volume service.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("volume {0} exists")]
    Exists(String),
    #[error("volume {0} not found")]
    NotFound(String),
    #[error("bad volume request: {0}")]
    Invalid(String),
    #[error("meta: {0}")]
    Meta(#[from] MetaError),
    #[error("stored volume record is unreadable: {0}")]
    Codec(String),
    #[error("conflict: {0}")]
    Conflict(String),
}

/// One volume, served by this node. Its record can change under it (a snapshot gives it a
/// new writable layer, an extend a new size): [`Volume::update`] swaps it in once the I/O in
/// flight on this node has finished and the write-back cache has written everything it held
/// into the old layer, so no write acknowledged after a snapshot was taken here lands in the
/// snapshot's layer, and every write acknowledged before does.
pub struct Volume {
    spec: tokio::sync::RwLock<VolumeSpec>,
    size_bytes: AtomicU64,
    io: Arc<Io>,
}

/// The replicated I/O of a volume and its write-back cache; shared with the writeback task.
struct Io {
    data: Arc<DataPlane>,
    insync: InSync,
    cache: Cache,
    /// The volume is no longer served (its `Volume` was dropped).
    closed: AtomicBool,
    /// Local disks holding writes of this volume that were answered before they were durable
    /// (see [`Io::write_blocks`]); a flush syncs them.
    unsynced: SyncGroup,
    /// The runtime the volume was created on: the writeback runs there, whichever runtime
    /// the write that starts it comes from (the NBD server gives each connection its own,
    /// which ends with the connection).
    home: Option<tokio::runtime::Handle>,
}

/// A piece of a request that stays inside one extent and one disk request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    extent: u64,
    first_block: u64,
    blocks: u64,
}

/// Cut `[offset, offset + len)` (block aligned) at extent boundaries and at the largest disk
/// request.
fn pieces(offset: u64, len: u64) -> Vec<Piece> {
    let blocks_per_extent = EXTENT_BYTES / BLOCK;
    let mut out = Vec::new();
    let mut block = offset / BLOCK;
    let end = (offset + len) / BLOCK;
    while block < end {
        let extent = block / blocks_per_extent;
        let extent_end = (extent + 1) * blocks_per_extent;
        let blocks = end.min(extent_end).min(block + BLOCKS_PER_WRITE_MAX) - block;
        out.push(Piece {
            extent,
            first_block: block,
            blocks,
        });
        block += blocks;
    }
    out
}

fn io_err(e: DataError) -> NbdError {
    tracing::warn!(error = %e, "volume I/O failed");
    if e.is_no_space() {
        // NBD_ENOSPC: QEMU's default `werror=enospc` pauses the guest instead of failing
        // its write, until space is freed and the guest resumed.
        NbdError::NoSpace(e.to_string())
    } else {
        NbdError::Io(e.to_string())
    }
}

fn check_range(size_bytes: u64, offset: u64, len: u64) -> NbdResult<()> {
    if !offset.is_multiple_of(BLOCK) || !len.is_multiple_of(BLOCK) {
        return Err(NbdError::InvalidArgument(format!(
            "{len} bytes at {offset}: not 4 KiB aligned"
        )));
    }
    match offset.checked_add(len) {
        Some(end) if end <= size_bytes => Ok(()),
        _ => Err(NbdError::InvalidArgument(format!(
            "{len} bytes at {offset}: past the end"
        ))),
    }
}

/// Writeback batches that fail in a row before a volume nobody serves any more gives up its
/// unwritten blocks (about one attempt a second).
const ORPHAN_ATTEMPTS: u32 = 60;
/// Extent writes of one writeback batch in flight at once.
const BATCH_PARALLEL: usize = 16;
/// Attempts to write back the old layer's blocks before a record change is served anyway.
const DRAIN_ATTEMPTS: u32 = 30;

impl Volume {
    pub fn new(spec: VolumeSpec, data: Arc<DataPlane>, insync: InSync) -> Arc<Self> {
        Arc::new(Volume {
            size_bytes: AtomicU64::new(spec.size_bytes),
            io: Arc::new(Io {
                data,
                insync,
                cache: Cache::new(spec.id),
                closed: AtomicBool::new(false),
                unsynced: SyncGroup::default(),
                home: tokio::runtime::Handle::try_current().ok(),
            }),
            spec: tokio::sync::RwLock::new(spec),
        })
    }

    /// The record this volume serves now.
    pub async fn spec(&self) -> VolumeSpec {
        self.spec.read().await.clone()
    }

    /// Serve a changed record of the same volume. Waits for the I/O in flight and, when the
    /// writable layer changes, for the cache to write its blocks into the old layer.
    pub async fn update(&self, spec: VolumeSpec) {
        let mut g = self.spec.write().await;
        if g.id != spec.id {
            let mut attempt = 0;
            let lost = loop {
                attempt += 1;
                match self.io.flush().await {
                    Ok(()) => break None,
                    Err(e) if attempt >= DRAIN_ATTEMPTS => break Some(e),
                    Err(e) => {
                        tracing::warn!(volume = %spec.name, error = %e,
                            "cannot write back the cache before a layer change; retrying")
                    }
                }
            };
            if let Some(e) = &lost {
                tracing::error!(volume = %spec.name, layer = g.id, error = %e,
                    "unflushed writes of the old layer are lost");
            }
            self.io.cache.reset(
                spec.id,
                lost.map(|e| format!("unflushed writes lost at a layer change: {e}")),
            );
        }
        self.size_bytes.store(spec.size_bytes, Ordering::Release);
        *g = spec;
    }

    /// Drop what the cache holds without writing it (the volume's record is gone).
    pub async fn discard(&self) {
        let g = self.spec.write().await;
        let Ok(_all) = self.io.cache.slots.acquire_many(PIPELINE).await else {
            return;
        };
        let dirty = self.io.cache.dirty_bytes();
        if dirty > 0 {
            tracing::warn!(volume = %g.name, dirty, "volume deleted with unflushed writes; dropped");
        }
        self.io
            .cache
            .reset(g.id, Some("the volume was deleted".into()));
    }

    /// Make a range read as zeroes, durably, before it returns: a hole where nothing lies
    /// below (`hole_ok` and no parent layer), zero blocks otherwise, since over lower layers a
    /// hole would let older data show through. Holds every writeback slot (no batch in
    /// flight) and drops the cached blocks it supersedes, so a cached older write never lands
    /// after it.
    async fn zero_range(
        &self,
        spec: &VolumeSpec,
        offset: u64,
        len: u64,
        hole_ok: bool,
    ) -> NbdResult<()> {
        let _all = self
            .io
            .cache
            .slots
            .acquire_many(PIPELINE)
            .await
            .map_err(|e| NbdError::Io(e.to_string()))?;
        self.io.cache.remove_range(offset / BLOCK, len / BLOCK);
        let r = async {
            for p in pieces(offset, len) {
                if hole_ok && spec.parents.is_empty() {
                    self.io.trim_piece(spec.id, p).await?;
                } else {
                    let zeroes = Bytes::from(vec![0u8; (p.blocks * BLOCK) as usize]);
                    let blocks: Vec<u64> = (p.first_block..p.first_block + p.blocks).collect();
                    self.io
                        .write_blocks(spec.id, p.extent, &blocks, &[zeroes], true)
                        .await?;
                }
            }
            Ok(())
        }
        .await;
        self.io.cache.settled(r.as_ref().err().cloned());
        r
    }
}

impl Io {
    fn replicas(&self, layer: u64, extent: u64) -> NbdResult<Vec<Replica>> {
        let key = format!("vol/{layer}/{extent}");
        self.data.placement(key.as_bytes()).map_err(io_err)
    }

    /// Start the writeback unless it runs.
    fn kick(self: &Arc<Self>) {
        if self.cache.claim_writeback() {
            let me = self.clone();
            let writeback = async move { me.writeback().await };
            match &self.home {
                Some(rt) => drop(rt.spawn(writeback)),
                None => drop(tokio::spawn(writeback)),
            }
        }
    }

    /// Make every write taken in so far durable.
    async fn flush(self: &Arc<Self>) -> NbdResult<()> {
        let seq = self.cache.seq();
        self.kick();
        self.wait_durable(seq).await
    }

    /// Wait until every write up to `seq` is written back, then sync the local disks that
    /// took some of them unsynced.
    async fn wait_durable(&self, seq: u64) -> NbdResult<()> {
        self.cache.wait_written(seq).await?;
        self.sync_disks().await
    }

    /// Sync the local disks that took unsynced writes of this volume.
    async fn sync_disks(&self) -> NbdResult<()> {
        self.unsynced
            .sync(|disk| async move {
                self.data.local_sync(disk).await.map_err(|e| {
                    tracing::error!(disk, error = %e, "cannot sync a disk holding volume writes");
                    e.to_string()
                })
            })
            .await
            .map_err(NbdError::Io)
    }

    /// Write cached blocks out until nothing is dirty: each batch takes every dirty block no
    /// batch in flight is writing; at most [`PIPELINE`] batches are in flight.
    async fn writeback(self: Arc<Self>) {
        loop {
            let Ok(slot) = self.cache.slots.clone().acquire_owned().await else {
                return;
            };
            let progressed = self.cache.progressed();
            tokio::pin!(progressed);
            progressed.as_mut().enable();
            let give_up =
                self.closed.load(Ordering::Acquire) && self.cache.failing() >= ORPHAN_ATTEMPTS;
            match self.cache.take(give_up) {
                Take::Idle => return,
                Take::Busy => {
                    drop(slot);
                    progressed.await;
                }
                Take::Batch(batch) => {
                    let me = self.clone();
                    tokio::spawn(async move {
                        me.write_batch(&batch).await;
                        drop(slot);
                    });
                }
            }
        }
    }

    /// Write one batch: one request per extent (and replica), several extents at once; each
    /// extent's blocks leave the cache as soon as they are durable.
    async fn write_batch(&self, batch: &Batch) {
        let per_extent = EXTENT_BYTES / BLOCK;
        let mut groups: Vec<(u64, std::ops::Range<usize>)> = Vec::new();
        for (i, (block, _, _)) in batch.blocks.iter().enumerate() {
            let extent = block / per_extent;
            match groups.last_mut() {
                Some((e, r)) if *e == extent => r.end = i + 1,
                _ => groups.push((extent, i..i + 1)),
            }
        }
        let writes: Vec<BoxFuture<'_, ()>> = groups
            .into_iter()
            .map(|(extent, r)| {
                let part = &batch.blocks[r];
                let blocks: Vec<u64> = part.iter().map(|(b, _, _)| *b).collect();
                // The cached blocks as they are: slices of the NBD payloads, which the disk
                // writes in place (they are 4 KiB aligned).
                let data: Vec<Bytes> = part.iter().map(|(_, _, d)| d.clone()).collect();
                let layer = batch.layer;
                async move {
                    let res = self
                        .write_blocks(layer, extent, &blocks, &data, false)
                        .await;
                    let error = res.err();
                    if let Some(e) = &error {
                        tracing::warn!(layer, extent, error = %e,
                            "volume writeback failed; the blocks stay cached and are retried");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    self.cache.finish(part, error);
                }
                .boxed()
            })
            .collect();
        futures::stream::iter(writes)
            .buffer_unordered(BATCH_PARALLEL)
            .collect::<Vec<()>>()
            .await;
    }

    /// Write blocks of one extent of a layer (`blocks` ascending) to every replica. Not
    /// `durable`, an extent whose one replica is a disk of this node is written unsynced, as
    /// a page cache would: it is on that disk (and survives this process) when this returns,
    /// and durable once a flush has synced the disk. Replicated extents are always written
    /// durably, so replicas never disagree about a write they acknowledged.
    async fn write_blocks(
        &self,
        layer: u64,
        extent: u64,
        blocks: &[u64],
        data: &[Bytes],
        durable: bool,
    ) -> NbdResult<()> {
        let replicas = self.replicas(layer, extent)?;
        if let [r] = replicas[..] {
            if !durable && r.node == self.data.node_id() {
                self.unsynced.note(r.disk);
                let res = self
                    .data
                    .local_write_block_parts_unsynced(r.disk, layer, blocks, data)
                    .await;
                return self.settle(layer, extent, &replicas, vec![res]).await;
            }
        }
        let results = join_all(
            replicas
                .iter()
                .map(|r| self.data.replica_write_block_parts(*r, layer, blocks, data)),
        )
        .await;
        self.settle(layer, extent, &replicas, results).await
    }

    /// Trim one piece of a layer on every replica of its extent.
    async fn trim_piece(&self, layer: u64, p: Piece) -> NbdResult<()> {
        let replicas = self.replicas(layer, p.extent)?;
        let results = join_all(replicas.iter().map(|r| {
            self.data
                .replica_trim_blocks(*r, layer, p.first_block, p.blocks)
        }))
        .await;
        self.settle(layer, p.extent, &replicas, results).await
    }

    /// Decide a replicated change: every in-sync replica that failed leaves the in-sync set
    /// (committed before this returns), and the change stands once a write quorum of in-sync
    /// replicas made it durable. Stale replicas are written too but do not count.
    async fn settle(
        &self,
        layer: u64,
        extent: u64,
        replicas: &[Replica],
        results: Vec<Result<(), DataError>>,
    ) -> NbdResult<()> {
        let needed = self.data.write_quorum(replicas.len());
        let mut acked = 0;
        let mut last = None;
        // A disk that refused for lack of space wrote nothing: while no replica took the
        // write, every replica still holds the same blocks and none is stale.
        let taken = results.iter().any(Result::is_ok);
        let mut no_space = false;
        for (r, res) in replicas.iter().zip(results) {
            let stale = self.insync.is_stale(layer, r.disk);
            match res {
                Ok(()) if !stale => acked += 1,
                Ok(()) => {}
                Err(e) if e.is_no_space() && !taken => {
                    tracing::warn!(layer, disk = r.disk, node = r.node, error = %e,
                        "a volume write found no space");
                    no_space = true;
                    last = Some(e);
                }
                Err(e) => {
                    if stale {
                        tracing::debug!(layer, disk = r.disk, error = %e,
                            "stale replica missed a volume write");
                    } else {
                        tracing::warn!(layer, disk = r.disk, node = r.node, error = %e,
                            "in-sync replica missed a volume write");
                    }
                    if let Err(m) = self.insync.mark(layer, r.disk, extent).await {
                        // Unrecorded, the replica could serve stale reads later: fail.
                        tracing::error!(layer, disk = r.disk, error = %m,
                            "cannot record a replica as stale");
                        return Err(NbdError::Io(format!("cannot record a stale replica: {m}")));
                    }
                    last = Some(e);
                }
            }
        }
        if acked >= needed {
            return Ok(());
        }
        let msg = format!(
            "write reached {acked} of the {needed} in-sync replicas it needs{}",
            last.map(|e| format!(" (last error: {e})"))
                .unwrap_or_default()
        );
        Err(if no_space {
            NbdError::NoSpace(msg)
        } else {
            NbdError::Io(msg)
        })
    }

    /// Read one piece of one layer from the first in-sync replica that answers with verified
    /// blocks.
    async fn read_layer(&self, layer: u64, p: Piece) -> NbdResult<strata_disk::BlockRead> {
        let mut last = NbdError::Io("no in-sync replica".into());
        for r in self.replicas(layer, p.extent)? {
            if self.insync.is_stale(layer, r.disk) {
                continue;
            }
            match self
                .data
                .replica_read_blocks(r, layer, p.first_block, p.blocks)
                .await
            {
                Ok(read) => return Ok(read),
                Err(e) => last = io_err(e),
            }
        }
        Err(last)
    }

    /// Read one piece through the layers on disk: each block comes from the newest layer that
    /// holds it; a block no layer holds is a hole.
    async fn read_piece(&self, spec: &VolumeSpec, p: Piece) -> NbdResult<strata_disk::BlockRead> {
        let mut layers = spec.layers_newest_first();
        let top = layers.next().unwrap_or(spec.id);
        let mut out = self.read_layer(top, p).await?;
        for layer in layers {
            if out.present.iter().all(|&b| b) {
                break;
            }
            // Ask the lower layer only for the span of blocks still missing.
            let first = out.present.iter().position(|&b| !b).unwrap_or(0) as u64;
            let last = out.present.iter().rposition(|&b| !b).unwrap_or(0) as u64;
            let sub = Piece {
                extent: p.extent,
                first_block: p.first_block + first,
                blocks: last - first + 1,
            };
            let lower = self.read_layer(layer, sub).await?;
            let mut data = BytesMut::from(&out.data[..]);
            for (i, &present) in lower.present.iter().enumerate() {
                let at = first as usize + i;
                if present && !out.present[at] {
                    let dst = at * BLOCK as usize;
                    let src = i * BLOCK as usize;
                    data[dst..dst + BLOCK as usize]
                        .copy_from_slice(&lower.data[src..src + BLOCK as usize]);
                    out.present[at] = true;
                }
            }
            out.data = data.freeze();
        }
        Ok(out)
    }

    /// Read a range (block aligned, in range) as a client sees it: the disks' blocks with the
    /// cached ones laid over them. The cached blocks are copied first, so a block the writeback
    /// writes out meanwhile is still found in the copy.
    async fn read(&self, spec: &VolumeSpec, offset: u64, len: u64) -> NbdResult<Bytes> {
        let first = offset / BLOCK;
        let cached = self.cache.overlay(first, len / BLOCK);
        let from_disks = if cached.len() as u64 == len / BLOCK {
            None
        } else {
            let ps = pieces(offset, len);
            if let ([p], true) = (&ps[..], cached.is_empty()) {
                // One piece and nothing cached: its buffer is the answer.
                return Ok(self.read_piece(spec, *p).await?.data);
            }
            let mut out = BytesMut::with_capacity(len as usize);
            for p in ps {
                out.extend_from_slice(&self.read_piece(spec, p).await?.data);
            }
            Some(out)
        };
        let mut out = from_disks.unwrap_or_else(|| BytesMut::zeroed(len as usize));
        for (block, data) in cached {
            let at = ((block - first) * BLOCK) as usize;
            out[at..at + BLOCK as usize].copy_from_slice(&data);
        }
        Ok(out.freeze())
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        // The writeback finishes what is cached; if it keeps failing it may now give up.
        self.io.closed.store(true, Ordering::Release);
    }
}

impl BlockTarget for Volume {
    fn size_bytes(&self) -> u64 {
        self.size_bytes.load(Ordering::Acquire)
    }

    fn block_sizes(&self) -> BlockSizes {
        BlockSizes {
            min: BLOCK_BYTES as u32,
            preferred: BLOCK_BYTES as u32,
            max: 32 << 20,
        }
    }

    fn can_multi_conn(&self) -> bool {
        // Every connection to this node shares the volume's one cache: a FLUSH on any of
        // them covers the writes all of them had acknowledged.
        true
    }

    fn description(&self) -> Option<String> {
        let spec = self.spec.try_read().ok()?;
        Some(format!(
            "strata volume {} ({} bytes)",
            spec.name, spec.size_bytes
        ))
    }

    fn read(&self, offset: u64, len: usize) -> BoxFuture<'_, NbdResult<Bytes>> {
        async move {
            let spec = self.spec.read().await;
            check_range(spec.size_bytes, offset, len as u64)?;
            self.io.read(&spec, offset, len as u64).await
        }
        .boxed()
    }

    fn write(&self, offset: u64, data: Bytes, fua: bool) -> BoxFuture<'_, NbdResult<()>> {
        async move {
            let seq = {
                let spec = self.spec.read().await;
                check_range(spec.size_bytes, offset, data.len() as u64)?;
                self.io.cache.wait_room(data.len()).await?;
                let seq = self.io.cache.insert(offset / BLOCK, &data);
                self.io.kick();
                seq
            };
            if fua {
                self.io.wait_durable(seq).await?;
            }
            Ok(())
        }
        .boxed()
    }

    fn flush(&self) -> BoxFuture<'_, NbdResult<()>> {
        async move { self.io.flush().await }.boxed()
    }

    fn trim(&self, offset: u64, len: u64, _fua: bool) -> BoxFuture<'_, NbdResult<()>> {
        // Durable before it returns, so FUA adds nothing.
        async move {
            let spec = self.spec.read().await;
            check_range(spec.size_bytes, offset, len)?;
            self.zero_range(&spec, offset, len, true).await
        }
        .boxed()
    }

    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        _fua: bool,
        no_hole: bool,
    ) -> BoxFuture<'_, NbdResult<()>> {
        async move {
            let spec = self.spec.read().await;
            check_range(spec.size_bytes, offset, len)?;
            self.zero_range(&spec, offset, len, !no_hole).await
        }
        .boxed()
    }

    fn block_status(&self, offset: u64, len: u64) -> BoxFuture<'_, NbdResult<Vec<Extent>>> {
        async move {
            let spec = self.spec.read().await;
            // Whole blocks covering the request, at most one extent's worth per answer
            // (clients ask again for the rest).
            let start = offset / BLOCK * BLOCK;
            let end = (offset.saturating_add(len))
                .min(spec.size_bytes)
                .div_ceil(BLOCK)
                * BLOCK;
            let end = end
                .min(start + EXTENT_BYTES - start % EXTENT_BYTES)
                .max(start + BLOCK);
            let first = start / BLOCK;
            let cached = self.io.cache.overlay(first, (end - start) / BLOCK);
            let mut extents: Vec<Extent> = Vec::new();
            for p in pieces(start, end - start) {
                let mut present = self.io.read_piece(&spec, p).await?.present;
                for (block, _) in &cached {
                    if let Some(i) = block.checked_sub(p.first_block) {
                        if let Some(slot) = present.get_mut(i as usize) {
                            *slot = true;
                        }
                    }
                }
                for present in present {
                    let hole = !present;
                    match extents.last_mut() {
                        Some(e) if e.hole == hole => e.len += BLOCK,
                        _ => extents.push(Extent {
                            len: BLOCK,
                            hole,
                            zero: hole,
                        }),
                    }
                }
            }
            Ok(extents)
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_split_at_extents_and_request_limits() {
        let ps = pieces(EXTENT_BYTES - 2 * BLOCK, 4 * BLOCK);
        assert_eq!(ps.len(), 2);
        let per_extent = EXTENT_BYTES / BLOCK;
        assert_eq!(
            (ps[0].extent, ps[0].blocks, ps[0].first_block),
            (0, 2, per_extent - 2)
        );
        assert_eq!(
            (ps[1].extent, ps[1].blocks, ps[1].first_block),
            (1, 2, per_extent)
        );
        let ps = pieces(0, 3 * EXTENT_BYTES);
        assert_eq!(ps.len(), 3);
        assert!(ps.iter().all(|p| p.blocks == EXTENT_BYTES / BLOCK));
        assert!(pieces(0, 0).is_empty());
    }
}
