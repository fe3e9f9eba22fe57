//! Block volumes on the replicated core: a volume is a sequence of 4 MiB extents, each
//! placed by the ring (placement key `vol/<layer>/<extent>`) and written to every replica.
//! Volume and snapshot records live in the meta group (see [`records`]).
//!
//! Owns block semantics: extents, layers (snapshots and copy-on-write clones), thin
//! provisioning (unwritten blocks are holes that read as zeroes), write fan-out and read
//! fallback. It must not know wire protocols: it implements `strata_nbd::BlockTarget`,
//! which the NBD server and the vhost-user-blk backend drive.
//!
//! A write goes to every replica of its extent and is acknowledged once a write quorum of
//! in-sync replicas made it durable; a replica that fails it leaves the layer's in-sync set
//! first ([`insync`]) and is copied back by a resync ([`resync`]) before reads use it again.

pub mod gc;
pub mod insync;
pub mod records;
pub mod registry;
pub mod resync;

pub use insync::InSync;
pub use records::{
    create, get_local, list_local, SnapshotSpec, VolumeSpec, GARBAGE_TABLE, SNAPSHOTS_TABLE,
    VOLUMES_TABLE,
};
pub use registry::{Frontend, Registry};

use bytes::{Bytes, BytesMut};
use futures::future::{join_all, BoxFuture, FutureExt};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use strata_data::{DataError, DataPlane, Replica};
use strata_disk::{BLOCKS_PER_WRITE_MAX, BLOCK_BYTES};
use strata_meta::MetaError;
use strata_nbd::{BlockSizes, BlockTarget, Extent, NbdError, NbdResult};

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
/// flight on this node has finished, so no write acknowledged after a snapshot was taken
/// here lands in the snapshot's layer.
pub struct Volume {
    spec: tokio::sync::RwLock<VolumeSpec>,
    size_bytes: AtomicU64,
    data: Arc<DataPlane>,
    insync: InSync,
}

/// A piece of a request that stays inside one extent and one disk request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    extent: u64,
    first_block: u64,
    blocks: u64,
    /// Offset of the piece within the request's bytes.
    at: usize,
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
            at: ((block * BLOCK) - offset) as usize,
        });
        block += blocks;
    }
    out
}

fn io_err(e: DataError) -> NbdError {
    tracing::warn!(error = %e, "volume I/O failed");
    NbdError::Io(e.to_string())
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

impl Volume {
    pub fn new(spec: VolumeSpec, data: Arc<DataPlane>, insync: InSync) -> Arc<Self> {
        Arc::new(Volume {
            size_bytes: AtomicU64::new(spec.size_bytes),
            spec: tokio::sync::RwLock::new(spec),
            data,
            insync,
        })
    }

    /// The record this volume serves now.
    pub async fn spec(&self) -> VolumeSpec {
        self.spec.read().await.clone()
    }

    /// Serve a changed record of the same volume; waits for the I/O in flight.
    pub async fn update(&self, spec: VolumeSpec) {
        let mut g = self.spec.write().await;
        self.size_bytes.store(spec.size_bytes, Ordering::Release);
        *g = spec;
    }

    fn replicas(&self, layer: u64, extent: u64) -> NbdResult<Vec<Replica>> {
        let key = format!("vol/{layer}/{extent}");
        self.data.placement(key.as_bytes()).map_err(io_err)
    }

    /// Write one piece of a layer to every replica of its extent.
    async fn write_piece(&self, layer: u64, p: Piece, data: Bytes) -> NbdResult<()> {
        let replicas = self.replicas(layer, p.extent)?;
        let results = join_all(replicas.iter().map(|r| {
            self.data
                .replica_write_blocks(*r, layer, p.first_block, data.clone())
        }))
        .await;
        self.settle(layer, &replicas, results).await
    }

    /// Trim one piece of a layer on every replica of its extent.
    async fn trim_piece(&self, layer: u64, p: Piece) -> NbdResult<()> {
        let replicas = self.replicas(layer, p.extent)?;
        let results = join_all(replicas.iter().map(|r| {
            self.data
                .replica_trim_blocks(*r, layer, p.first_block, p.blocks)
        }))
        .await;
        self.settle(layer, &replicas, results).await
    }

    /// Decide a replicated change: every in-sync replica that failed leaves the in-sync set
    /// (committed before this returns), and the change stands once a write quorum of in-sync
    /// replicas made it durable. Stale replicas are written too but do not count.
    async fn settle(
        &self,
        layer: u64,
        replicas: &[Replica],
        results: Vec<Result<(), DataError>>,
    ) -> NbdResult<()> {
        let needed = self.data.write_quorum(replicas.len());
        let mut acked = 0;
        let mut last = None;
        for (r, res) in replicas.iter().zip(results) {
            let stale = self.insync.is_stale(layer, r.disk);
            match res {
                Ok(()) if !stale => acked += 1,
                Ok(()) => {}
                Err(e) => {
                    if stale {
                        tracing::debug!(layer, disk = r.disk, error = %e,
                            "stale replica missed a volume write");
                    } else {
                        tracing::warn!(layer, disk = r.disk, node = r.node, error = %e,
                            "in-sync replica missed a volume write");
                    }
                    if let Err(m) = self.insync.mark(layer, r.disk).await {
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
        Err(NbdError::Io(format!(
            "write reached {acked} of the {needed} in-sync replicas it needs{}",
            last.map(|e| format!(" (last error: {e})"))
                .unwrap_or_default()
        )))
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

    /// Read one piece through the layers: each block comes from the newest layer that holds
    /// it; a block no layer holds is a hole.
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
                at: 0,
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

    /// Make a range read as zeroes. With no lower layer that is a trim (the blocks become
    /// holes); over lower layers the zeroes are written, or the older data would show through.
    async fn zero_range(&self, spec: &VolumeSpec, offset: u64, len: u64) -> NbdResult<()> {
        for p in pieces(offset, len) {
            if spec.parents.is_empty() {
                self.trim_piece(spec.id, p).await?;
            } else {
                let zeroes = Bytes::from(vec![0u8; (p.blocks * BLOCK) as usize]);
                self.write_piece(spec.id, p, zeroes).await?;
            }
        }
        Ok(())
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
        // Every write is durable on a quorum of in-sync replicas before it is acknowledged.
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
            let ps = pieces(offset, len as u64);
            if let [p] = ps[..] {
                // One piece: its buffer is the answer.
                return Ok(self.read_piece(&spec, p).await?.data);
            }
            let mut out = BytesMut::with_capacity(len);
            for p in ps {
                let read = self.read_piece(&spec, p).await?;
                out.extend_from_slice(&read.data);
            }
            Ok(out.freeze())
        }
        .boxed()
    }

    fn write(&self, offset: u64, data: Bytes, _fua: bool) -> BoxFuture<'_, NbdResult<()>> {
        // Every write is durable on the in-sync replicas before it returns, so FUA costs
        // nothing more.
        async move {
            let spec = self.spec.read().await;
            check_range(spec.size_bytes, offset, data.len() as u64)?;
            for p in pieces(offset, data.len() as u64) {
                let bytes = data.slice(p.at..p.at + (p.blocks * BLOCK) as usize);
                self.write_piece(spec.id, p, bytes).await?;
            }
            Ok(())
        }
        .boxed()
    }

    fn flush(&self) -> BoxFuture<'_, NbdResult<()>> {
        // Nothing is cached: acknowledged writes are already durable.
        async { Ok(()) }.boxed()
    }

    fn trim(&self, offset: u64, len: u64, _fua: bool) -> BoxFuture<'_, NbdResult<()>> {
        async move {
            let spec = self.spec.read().await;
            check_range(spec.size_bytes, offset, len)?;
            self.zero_range(&spec, offset, len).await
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
            if !no_hole {
                return self.zero_range(&spec, offset, len).await;
            }
            for p in pieces(offset, len) {
                let zeroes = Bytes::from(vec![0u8; (p.blocks * BLOCK) as usize]);
                self.write_piece(spec.id, p, zeroes).await?;
            }
            Ok(())
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
            let mut extents: Vec<Extent> = Vec::new();
            for p in pieces(start, end - start) {
                let read = self.read_piece(&spec, p).await?;
                for present in read.present {
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
        assert_eq!((ps[0].extent, ps[0].blocks, ps[0].at), (0, 2, 0));
        assert_eq!(
            (ps[1].extent, ps[1].blocks, ps[1].at),
            (1, 2, 2 * BLOCK as usize)
        );
        let ps = pieces(0, 3 * EXTENT_BYTES);
        assert_eq!(ps.len(), 3);
        assert!(ps.iter().all(|p| p.blocks == EXTENT_BYTES / BLOCK));
        assert!(pieces(0, 0).is_empty());
    }
}
