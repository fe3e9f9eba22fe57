//! Block volumes on the replicated core: a volume is a sequence of 4 MiB extents, each
//! placed by the ring (placement key `vol/<id>/<extent>`) and written to every replica.
//! Volume records live in the meta group (table `block.volumes`).
//!
//! Owns block semantics: extents, thin provisioning (unwritten blocks are holes that read as
//! zeroes), write fan-out and read fallback. It must not know wire protocols: it implements
//! `strata_nbd::BlockTarget`, which the NBD server (and later vhost-user) drive.
//!
//! This version writes every block to all replicas of its extent and fails a write that any
//! replica refused; the in-sync set, resync, snapshots and clones described in
//! `docs/architecture.md` are not built yet.

use bytes::{Bytes, BytesMut};
use futures::future::{join_all, BoxFuture, FutureExt};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use strata_data::{DataError, DataPlane, Replica};
use strata_disk::{BLOCKS_PER_WRITE_MAX, BLOCK_BYTES};
use strata_meta::{Check, MetaError, MetaStore, Op, Txn};
use strata_nbd::{BlockSizes, BlockTarget, Extent, NbdError, NbdResult};

/// Meta table of volume records, keyed by name.
pub const VOLUMES_TABLE: &str = "block.volumes";
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
}

/// A volume record in the meta group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSpec {
    /// Random id; block keys use it, so a volume re-created under an old name starts empty.
    pub id: u64,
    pub name: String,
    pub size_bytes: u64,
}

/// Create a volume record. Sizes are whole 4 KiB blocks.
pub async fn create(
    meta: &dyn MetaStore,
    name: &str,
    size_bytes: u64,
) -> Result<VolumeSpec, VolumeError> {
    if name.is_empty() || name.len() > 255 || name.contains(['\0', '/']) {
        return Err(VolumeError::Invalid(format!("bad volume name {name:?}")));
    }
    if size_bytes == 0 || !size_bytes.is_multiple_of(BLOCK) {
        return Err(VolumeError::Invalid(format!(
            "size {size_bytes} is not a positive multiple of 4096"
        )));
    }
    let spec = VolumeSpec {
        id: rand::random::<u64>() >> 1,
        name: name.into(),
        size_bytes,
    };
    let value = serde_json::to_vec(&spec).map_err(|e| VolumeError::Codec(e.to_string()))?;
    let txn = Txn {
        checks: vec![Check::Absent {
            table: VOLUMES_TABLE.into(),
            key: name.into(),
        }],
        ops: vec![Op::Put {
            table: VOLUMES_TABLE.into(),
            key: name.into(),
            value,
        }],
    };
    if !meta.write(txn).await?.succeeded {
        return Err(VolumeError::Exists(name.into()));
    }
    Ok(spec)
}

/// Every volume record, as this node has applied them.
pub fn list_local(meta: &dyn MetaStore) -> Vec<VolumeSpec> {
    meta.scan_local(VOLUMES_TABLE, "", None, usize::MAX)
        .into_iter()
        .filter_map(|(k, v)| match serde_json::from_slice(&v) {
            Ok(spec) => Some(spec),
            Err(e) => {
                tracing::error!(volume = %k, error = %e, "unreadable volume record");
                None
            }
        })
        .collect()
}

/// One volume, served by this node.
pub struct Volume {
    spec: VolumeSpec,
    data: Arc<DataPlane>,
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

impl Volume {
    pub fn new(spec: VolumeSpec, data: Arc<DataPlane>) -> Arc<Self> {
        Arc::new(Volume { spec, data })
    }

    pub fn spec(&self) -> &VolumeSpec {
        &self.spec
    }

    fn replicas(&self, extent: u64) -> NbdResult<Vec<Replica>> {
        let key = format!("vol/{}/{extent}", self.spec.id);
        self.data.placement(key.as_bytes()).map_err(io_err)
    }

    fn check(&self, offset: u64, len: u64) -> NbdResult<()> {
        if !offset.is_multiple_of(BLOCK) || !len.is_multiple_of(BLOCK) {
            return Err(NbdError::InvalidArgument(format!(
                "{len} bytes at {offset}: not 4 KiB aligned"
            )));
        }
        match offset.checked_add(len) {
            Some(end) if end <= self.spec.size_bytes => Ok(()),
            _ => Err(NbdError::InvalidArgument(format!(
                "{len} bytes at {offset}: past the end"
            ))),
        }
    }

    /// Write one piece to every replica of its extent.
    async fn write_piece(&self, p: Piece, data: Bytes) -> NbdResult<()> {
        let replicas = self.replicas(p.extent)?;
        let results = join_all(replicas.iter().map(|r| {
            self.data
                .replica_write_blocks(*r, self.spec.id, p.first_block, data.clone())
        }))
        .await;
        for r in results {
            r.map_err(io_err)?;
        }
        Ok(())
    }

    /// Read one piece from the first replica that answers with verified blocks.
    async fn read_piece(&self, p: Piece) -> NbdResult<strata_disk::BlockRead> {
        let mut last = NbdError::Io("no replica".into());
        for r in self.replicas(p.extent)? {
            match self
                .data
                .replica_read_blocks(r, self.spec.id, p.first_block, p.blocks)
                .await
            {
                Ok(read) => return Ok(read),
                Err(e) => last = io_err(e),
            }
        }
        Err(last)
    }

    async fn trim_range(&self, offset: u64, len: u64) -> NbdResult<()> {
        for p in pieces(offset, len) {
            let replicas = self.replicas(p.extent)?;
            let results = join_all(replicas.iter().map(|r| {
                self.data
                    .replica_trim_blocks(*r, self.spec.id, p.first_block, p.blocks)
            }))
            .await;
            for r in results {
                r.map_err(io_err)?;
            }
        }
        Ok(())
    }
}

impl BlockTarget for Volume {
    fn size_bytes(&self) -> u64 {
        self.spec.size_bytes
    }

    fn block_sizes(&self) -> BlockSizes {
        BlockSizes {
            min: BLOCK_BYTES as u32,
            preferred: BLOCK_BYTES as u32,
            max: 32 << 20,
        }
    }

    fn can_multi_conn(&self) -> bool {
        // Every write is durable on all replicas before it is acknowledged.
        true
    }

    fn description(&self) -> Option<String> {
        Some(format!(
            "strata volume {} ({} bytes)",
            self.spec.name, self.spec.size_bytes
        ))
    }

    fn read(&self, offset: u64, len: usize) -> BoxFuture<'_, NbdResult<Bytes>> {
        async move {
            self.check(offset, len as u64)?;
            let mut out = BytesMut::with_capacity(len);
            for p in pieces(offset, len as u64) {
                let read = self.read_piece(p).await?;
                out.extend_from_slice(&read.data);
            }
            Ok(out.freeze())
        }
        .boxed()
    }

    fn write(&self, offset: u64, data: Bytes, _fua: bool) -> BoxFuture<'_, NbdResult<()>> {
        // Every write is durable on every replica before it returns, so FUA costs nothing more.
        async move {
            self.check(offset, data.len() as u64)?;
            for p in pieces(offset, data.len() as u64) {
                let bytes = data.slice(p.at..p.at + (p.blocks * BLOCK) as usize);
                self.write_piece(p, bytes).await?;
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
            self.check(offset, len)?;
            self.trim_range(offset, len).await
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
            self.check(offset, len)?;
            if !no_hole {
                return self.trim_range(offset, len).await;
            }
            for p in pieces(offset, len) {
                let zeroes = Bytes::from(vec![0u8; (p.blocks * BLOCK) as usize]);
                self.write_piece(p, zeroes).await?;
            }
            Ok(())
        }
        .boxed()
    }

    fn block_status(&self, offset: u64, len: u64) -> BoxFuture<'_, NbdResult<Vec<Extent>>> {
        async move {
            // Whole blocks covering the request, at most one extent's worth per answer
            // (clients ask again for the rest).
            let start = offset / BLOCK * BLOCK;
            let end = (offset.saturating_add(len))
                .min(self.spec.size_bytes)
                .div_ceil(BLOCK)
                * BLOCK;
            let end = end
                .min(start + EXTENT_BYTES - start % EXTENT_BYTES)
                .max(start + BLOCK);
            let mut extents: Vec<Extent> = Vec::new();
            for p in pieces(start, end - start) {
                let read = self.read_piece(p).await?;
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
