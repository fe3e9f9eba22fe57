//! Resync: copying a layer back onto a replica that left its in-sync set.
//!
//! Every node runs a resyncer for the stale records of its own disks. It copies the extents
//! the replica missed writes of (`block.stale_extents`; every extent of the layer the disk
//! is a replica of, for records that predate extent tracking), piece by piece, from an
//! in-sync replica: blocks the source holds are written, blocks it lacks are trimmed. Ordinary
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

use crate::insync::{parse_stale_key, tracks_extents};
use crate::records::{
    SnapshotSpec, VolumeSpec, SNAPSHOTS_TABLE, STALE_EXTENTS_TABLE, STALE_TABLE, VOLUMES_TABLE,
};
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

/// Copy `layer` onto local `disk` from in-sync replicas: the `only` extents, or all of them.
pub async fn copy_layer(
    data: &DataPlane,
    insync: &InSync,
    layer: u64,
    disk: u64,
    size_bytes: u64,
    only: Option<&[u64]>,
) -> Result<u64, String> {
    let (tracking, local) = data.track_layer(disk, layer).map_err(|e| e.to_string())?;
    let blocks_per_extent = EXTENT_BYTES / BLOCK;
    let total_blocks = size_bytes.div_ceil(BLOCK);
    let mut copied = 0u64;
    let extents: Vec<u64> = match only {
        Some(list) => list
            .iter()
            .copied()
            .filter(|&e| e < size_bytes.div_ceil(EXTENT_BYTES))
            .collect(),
        None => (0..size_bytes.div_ceil(EXTENT_BYTES)).collect(),
    };
    for extent in extents {
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
        // The extents the replica missed; read after the token, so a mark made after this
        // scan also changed the token and fails the conditional delete below.
        let prefix = format!("{key}/");
        let listed: Vec<(String, u64)> = match meta
            .scan(STALE_EXTENTS_TABLE, &prefix, None, usize::MAX)
            .await
        {
            Ok(rows) => rows
                .into_iter()
                .filter(|(k, _)| k.starts_with(&prefix))
                .filter_map(|(k, _)| Some((k.clone(), k[prefix.len()..].parse().ok()?)))
                .collect(),
            Err(e) => {
                tracing::warn!(layer, disk, error = %e, "cannot list a replica's missed extents");
                continue;
            }
        };
        let extents: Vec<u64> = listed.iter().map(|(_, e)| *e).collect();
        let only = tracks_extents(&token).then_some(extents.as_slice());
        let done = match layer_size(meta, layer) {
            // The layer is gone: nothing to copy.
            None => Ok(0),
            Some(size) => copy_layer(data, insync, layer, disk, size, only).await,
        };
        match done {
            Ok(blocks) => {
                let mut ops = vec![Op::Delete {
                    table: STALE_TABLE.into(),
                    key: key.clone(),
                }];
                ops.extend(listed.iter().map(|(k, _)| Op::Delete {
                    table: STALE_EXTENTS_TABLE.into(),
                    key: k.clone(),
                }));
                let txn = Txn {
                    checks: vec![Check::Equals {
                        table: STALE_TABLE.into(),
                        key: key.clone(),
                        value: token,
                    }],
                    ops,
                };
                match meta.write(txn).await {
                    Ok(out) if out.succeeded => {
                        insync.reload();
                        tracing::info!(
                            layer,
                            disk,
                            blocks,
                            extents = only.map(|e| e.len()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashMap};
    use strata_data::{DataConfig, Replica, Topology};
    use strata_disk::{Disk, DiskConfig};
    use strata_meta::MemMeta;
    use strata_placement::{Device, Ring, RingSpec};

    /// One node with two disks, every extent on both.
    fn two_disks(dir: &std::path::Path) -> Arc<DataPlane> {
        let disks = [1000u64, 1001]
            .into_iter()
            .map(|id| {
                let disk = Disk::open(DiskConfig {
                    dir: dir.join(id.to_string()),
                    device: None,
                    capacity_bytes: 128 << 20,
                    force_syscall_io: false,
                    read_cache_bytes: strata_disk::READ_CACHE_BYTES_DEFAULT,
                    straighten_idle_ms: strata_disk::STRAIGHTEN_IDLE_MS_DEFAULT,
                })
                .expect("disk opens");
                (id, disk)
            })
            .collect::<BTreeMap<_, _>>();
        let data = DataPlane::new(
            DataConfig {
                node_id: 1,
                write_quorum: 1,
                rpc_timeout_ms: 1000,
                hint_interval_ms: 1000,
            },
            disks,
        );
        let devices = [1000u64, 1001]
            .iter()
            .map(|&id| Device {
                id,
                node: 1,
                zone: "z".into(),
                weight: 1.0,
            })
            .collect();
        let ring = Ring::new(RingSpec {
            version: 1,
            part_power: 4,
            replicas: 2,
            devices,
        })
        .expect("ring");
        data.set_topology(Topology {
            ring: Arc::new(ring),
            addrs: HashMap::new(),
        });
        data
    }

    fn on(disk: u64) -> Replica {
        Replica { disk, node: 1 }
    }

    #[tokio::test]
    async fn resync_copies_only_the_extents_the_replica_missed() {
        let dir = tempfile::tempdir().unwrap();
        let data = two_disks(dir.path());
        let meta: Arc<dyn MetaStore> = Arc::new(MemMeta::new());
        let insync = InSync::new(meta.clone());
        let spec = crate::records::create(meta.as_ref(), "v", 3 * EXTENT_BYTES)
            .await
            .unwrap();
        let layer = spec.id;
        let per_extent = EXTENT_BYTES / BLOCK;
        for extent in 0..3 {
            let replicas = data
                .placement(format!("vol/{layer}/{extent}").as_bytes())
                .unwrap();
            assert_eq!(replicas.len(), 2, "every extent on both disks");
        }
        // Disk 1001 misses writes to extents 0 and 2; extent 1 differs on it too, but
        // nothing recorded that, so a resync must leave it (proving it copies no more than
        // the missed extents).
        let block = |b: u8| Bytes::from(vec![b; BLOCK as usize]);
        for (extent, byte) in [(0u64, 0xa0u8), (1, 0xa1), (2, 0xa2)] {
            let at = extent * per_extent + 3;
            data.replica_write_blocks(on(1000), layer, &[at], block(byte))
                .await
                .unwrap();
        }
        data.replica_write_blocks(on(1001), layer, &[per_extent + 3], block(0x11))
            .await
            .unwrap();
        insync.mark(layer, 1001, 0).await.unwrap();
        insync.mark(layer, 1001, 2).await.unwrap();
        assert!(insync.is_stale(layer, 1001));

        resync_once(meta.as_ref(), &data, &insync).await;
        assert!(!insync.is_stale(layer, 1001), "back in sync");
        assert!(meta
            .scan_local(STALE_EXTENTS_TABLE, "", None, usize::MAX)
            .is_empty());
        let read = |extent: u64| {
            let data = data.clone();
            async move {
                let r = data
                    .replica_read_blocks(on(1001), layer, extent * per_extent + 3, 1)
                    .await
                    .unwrap();
                (r.present[0], r.data[0])
            }
        };
        assert_eq!(read(0).await, (true, 0xa0));
        assert_eq!(
            read(1).await,
            (true, 0x11),
            "an unrecorded extent is not copied"
        );
        assert_eq!(read(2).await, (true, 0xa2));
    }
}
