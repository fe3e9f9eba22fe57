//! Freeing layers nothing references any more: every block of such a layer is trimmed on
//! every replica of every extent it could have, then the layer leaves the garbage queue.
//!
//! A layer unreferenced by a linearizable scan stays unreferenced (new records only name
//! layers that existing records already name), so freeing it cannot race a clone. Trims are
//! idempotent: two nodes collecting the same layer, or a collection cut short by a crash and
//! redone, do no harm.

use std::sync::Arc;
use std::time::Duration;
use strata_data::DataPlane;
use strata_meta::MetaStore;

use crate::{records, VolumeError, EXTENT_BYTES};

const BLOCKS_PER_EXTENT: u64 = EXTENT_BYTES / strata_disk::BLOCK_BYTES as u64;

/// Trim every block of `layer` (which covered `size_bytes`) on every replica.
pub async fn free_layer(data: &DataPlane, layer: u64, size_bytes: u64) -> Result<(), String> {
    for extent in 0..size_bytes.div_ceil(EXTENT_BYTES) {
        let key = format!("vol/{layer}/{extent}");
        let replicas = data.placement(key.as_bytes()).map_err(|e| e.to_string())?;
        for r in replicas {
            data.replica_trim_blocks(r, layer, extent * BLOCKS_PER_EXTENT, BLOCKS_PER_EXTENT)
                .await
                .map_err(|e| format!("extent {extent} on disk {}: {e}", r.disk))?;
        }
    }
    Ok(())
}

/// One pass over the garbage queue. Returns how many layers were freed.
pub async fn collect_once(meta: &dyn MetaStore, data: &DataPlane) -> Result<usize, VolumeError> {
    let queued = records::garbage(meta).await?;
    if queued.is_empty() {
        return Ok(0);
    }
    let referenced = records::referenced_layers(meta).await?;
    let mut freed = 0;
    for (layer, size) in queued {
        if referenced.contains(&layer) {
            // Still read by a volume, clone or snapshot: it is queued again when that goes.
            records::forget_garbage(meta, layer).await?;
            continue;
        }
        match free_layer(data, layer, size).await {
            Ok(()) => {
                records::forget_garbage(meta, layer).await?;
                tracing::info!(layer, size, "volume layer freed");
                freed += 1;
            }
            // A replica is down: try again next pass.
            Err(e) => tracing::warn!(layer, error = %e, "cannot free volume layer yet"),
        }
    }
    Ok(freed)
}

/// Run [`collect_once`] every `every`.
pub fn spawn_collector(meta: Arc<dyn MetaStore>, data: Arc<DataPlane>, every: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = collect_once(meta.as_ref(), &data).await {
                tracing::warn!(error = %e, "volume garbage collection failed");
            }
        }
    });
}
