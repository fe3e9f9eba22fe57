//! Tracking ordinary block writes to a local disk while a resync copies a layer onto it.
//!
//! A resync copies a layer's blocks from an in-sync replica to this node's stale copy while
//! writes keep arriving. A copied block must never overwrite a newer one an ordinary write
//! put there meanwhile: while a layer is tracked, every ordinary write or trim of it on this
//! disk runs under the layer's lock and records the blocks it changed, and the copier holds
//! the same lock from reading the source until it has written the blocks that no ordinary
//! write touched.

use bytes::Bytes;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use strata_disk::{Disk, DiskError};
use strata_types::DiskId;

type Dirty = Arc<tokio::sync::Mutex<BTreeSet<u64>>>;

/// Layers of local disks being resynced.
#[derive(Default)]
pub(crate) struct Tracker {
    layers: Mutex<HashMap<(DiskId, u64), Dirty>>,
}

impl Tracker {
    fn get(&self, disk: DiskId, layer: u64) -> Option<Dirty> {
        self.layers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(disk, layer))
            .cloned()
    }

    pub(crate) fn start(self: &Arc<Self>, disk: DiskId, layer: u64) -> LayerTracking {
        let dirty: Dirty = Arc::default();
        self.layers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((disk, layer), dirty.clone());
        LayerTracking {
            tracker: self.clone(),
            disk,
            layer,
            dirty,
        }
    }

    /// An ordinary write of whole blocks (`blocks[i]` gets the `i`th 4 KiB of the parts laid
    /// end to end) to a local disk.
    pub(crate) async fn write(
        &self,
        disk: &Disk,
        id: DiskId,
        layer: u64,
        blocks: &[u64],
        parts: &[Bytes],
        synced: bool,
    ) -> Result<(), DiskError> {
        let write = || async {
            if synced {
                disk.write_block_parts(layer, blocks, parts).await
            } else {
                disk.write_block_parts_unsynced(layer, blocks, parts).await
            }
        };
        match self.get(id, layer) {
            None => write().await,
            Some(dirty) => {
                let mut g = dirty.lock().await;
                write().await?;
                g.extend(blocks.iter().copied());
                Ok(())
            }
        }
    }

    /// An ordinary trim of a local disk.
    pub(crate) async fn trim(
        &self,
        disk: &Disk,
        id: DiskId,
        layer: u64,
        first: u64,
        count: u64,
    ) -> Result<(), DiskError> {
        match self.get(id, layer) {
            None => disk.trim_blocks(layer, first, count).await,
            Some(dirty) => {
                let mut g = dirty.lock().await;
                disk.trim_blocks(layer, first, count).await?;
                g.extend(first..first + count);
                Ok(())
            }
        }
    }
}

/// A layer of a local disk under resync; tracking ends when this is dropped.
pub struct LayerTracking {
    tracker: Arc<Tracker>,
    disk: DiskId,
    layer: u64,
    dirty: Dirty,
}

impl LayerTracking {
    /// Hold off ordinary writes of the layer; the guard holds the blocks they changed since
    /// tracking began.
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, BTreeSet<u64>> {
        self.dirty.lock().await
    }
}

impl Drop for LayerTracking {
    fn drop(&mut self) {
        let mut map = self
            .tracker
            .layers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if map
            .get(&(self.disk, self.layer))
            .is_some_and(|d| Arc::ptr_eq(d, &self.dirty))
        {
            map.remove(&(self.disk, self.layer));
        }
    }
}
