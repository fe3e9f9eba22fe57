//! Resync: copying a layer back onto a replica that left its in-sync set.
//!
//! Every node runs a resyncer for the stale records of its own disks. It copies every
//! extent of the layer that the disk is a replica of, piece by piece, from an in-sync
//! replica: blocks the source holds are written, blocks it lacks are trimmed. Ordinary
//! writes keep reaching the disk meanwhile; under the layer's tracking lock
//! (`DataPlane::track_layer`) the copier skips the blocks they changed, so a copy never
//! undoes a newer write. When the whole layer is copied the stale record is deleted, on
//! condition that it is unchanged: a write the replica missed during the copy changed it,
//! and the copy runs again.

use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use strata_data::DataPlane;
use strata_meta::{Check, MetaStore, Op, Txn};

use crate::insync::parse_stale_key;
use crate::records::{SnapshotSpec, VolumeSpec, SNAPSHOTS_TABLE, STALE_TABLE, VOLUMES_TABLE};
use crate::{InSync, EXTENT_BYTES};

const BLOCK: u64 = strata_disk::BLOCK_BYTES as u64;
/// Blocks copied under one hold of the tracking lock.
const PIECE_BLOCKS: u64 = 256;

/// The largest size any volume or snapshot gives `layer`; None when nothing names it.
fn layer_size(meta: &dyn MetaStore, layer: u64) -> Option<u64> {
    let vols = meta
        .scan_local(VOLUMES_TABLE, "", None, usize::MAX)
        .into_iter()
        .filter_map(|(_, v)| serde_json::from_slice::<VolumeSpec>(&v).ok())
        .filter(|s| s.layers_newest_first().any(|l| l == layer))
        .map(|s| s.size_bytes);
    let snaps = meta
        .scan_local(SNAPSHOTS_TABLE, "", None, usize::MAX)
        .into_iter()
        .filter_map(|(_, v)| serde_json::from_slice::<SnapshotSpec>(&v).ok())
        .filter(|s| s.layers.contains(&layer))
        .map(|s| s.size_bytes);
    vols.chain(snaps).max()
}

/// Copy `layer` onto local `disk` from in-sync replicas.
pub async fn copy_layer(
    data: &DataPlane,
    insync: &InSync,
    layer: u64,
    disk: u64,
    size_bytes: u64,
) -> Result<u64, String> {
    let (tracking, local) = data.track_layer(disk, layer).map_err(|e| e.to_string())?;
    let blocks_per_extent = EXTENT_BYTES / BLOCK;
    let total_blocks = size_bytes.div_ceil(BLOCK);
    let mut copied = 0u64;
    for extent in 0..size_bytes.div_ceil(EXTENT_BYTES) {
        let key = format!("vol/{layer}/{extent}");
        let replicas = data.placement(key.as_bytes()).map_err(|e| e.to_string())?;
        if !replicas.iter().any(|r| r.disk == disk) {
            continue;
        }
        let sources: Vec<_> = replicas
            .into_iter()
            .filter(|r| r.disk != disk && !insync.is_stale(layer, r.disk))
            .collect();
        if sources.is_empty() {
            return Err(format!(
                "extent {extent} has no in-sync replica to copy from"
            ));
        }
        let first = extent * blocks_per_extent;
        let end = (first + blocks_per_extent).min(total_blocks);
        let mut at = first;
        while at < end {
            let count = PIECE_BLOCKS.min(end - at);
            let dirty = tracking.lock().await;
            let mut read = None;
            let mut last = String::new();
            for src in &sources {
                match data.replica_read_blocks(*src, layer, at, count).await {
                    Ok(r) => {
                        read = Some(r);
                        break;
                    }
                    Err(e) => last = e.to_string(),
                }
            }
            let read = read.ok_or_else(|| format!("reading blocks at {at}: {last}"))?;
            // Runs of blocks no ordinary write touched, written or trimmed as the source has them.
            let mut i = 0u64;
            while i < count {
                let b = at + i;
                let present = read.present[i as usize];
                if dirty.contains(&b) {
                    i += 1;
                    continue;
                }
                let mut j = i + 1;
                while j < count && read.present[j as usize] == present && !dirty.contains(&(at + j))
                {
                    j += 1;
                }
                let result = if present {
                    let bytes = Bytes::copy_from_slice(
                        &read.data[(i * BLOCK) as usize..(j * BLOCK) as usize],
                    );
                    copied += j - i;
                    local.write_blocks(layer, b, bytes).await
                } else {
                    local.trim_blocks(layer, b, j - i).await
                };
                result.map_err(|e| format!("writing blocks at {b}: {e}"))?;
                i = j;
            }
            drop(dirty);
            at += count;
        }
    }
    Ok(copied)
}

/// One pass over the stale records of this node's disks.
pub async fn resync_once(meta: &dyn MetaStore, data: &DataPlane, insync: &InSync) {
    let rows = match meta.scan(STALE_TABLE, "", None, usize::MAX).await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list stale volume replicas");
            return;
        }
    };
    for (key, token) in rows {
        let Some((layer, disk)) = parse_stale_key(&key) else {
            continue;
        };
        if !data.local_disks().contains_key(&disk) {
            continue;
        }
        let done = match layer_size(meta, layer) {
            // The layer is gone: nothing to copy.
            None => Ok(0),
            Some(size) => copy_layer(data, insync, layer, disk, size).await,
        };
        match done {
            Ok(blocks) => {
                let txn = Txn {
                    checks: vec![Check::Equals {
                        table: STALE_TABLE.into(),
                        key: key.clone(),
                        value: token,
                    }],
                    ops: vec![Op::Delete {
                        table: STALE_TABLE.into(),
                        key: key.clone(),
                    }],
                };
                match meta.write(txn).await {
                    Ok(out) if out.succeeded => {
                        insync.reload();
                        tracing::info!(
                            layer,
                            disk,
                            blocks,
                            "volume layer resynced; replica back in sync"
                        );
                    }
                    Ok(_) => tracing::info!(
                        layer,
                        disk,
                        "replica missed writes during its resync; copying again"
                    ),
                    Err(e) => {
                        tracing::warn!(layer, disk, error = %e, "cannot record a finished resync")
                    }
                }
            }
            Err(e) => {
                tracing::warn!(layer, disk, error = %e, "volume layer resync failed; will retry")
            }
        }
    }
}

/// Resync this node's stale replicas every `every`, starting after `delay` (so that writes
/// that failed to reach this node before it came back have finished on their sources).
pub fn spawn_resyncer(
    meta: Arc<dyn MetaStore>,
    data: Arc<DataPlane>,
    insync: InSync,
    delay: Duration,
    every: Duration,
) {
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            resync_once(meta.as_ref(), &data, &insync).await;
        }
    });
}
