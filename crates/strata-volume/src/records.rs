//! Volume and snapshot records in the meta group, and the transactions that change them.
//!
//! A volume's blocks live in *layers*: block-index namespaces on the disks, each placed by
//! the ring extent by extent (placement key `vol/<layer>/<extent>`). A volume record names
//! its writable layer (`id`) and the frozen layers below it (`parents`, oldest first).
//! Taking a snapshot freezes the writable layer and gives the volume a fresh, empty one; the
//! snapshot record keeps the frozen chain. A clone is a new volume whose parents are a
//! snapshot's chain. A layer is freed (its blocks trimmed on every replica) once no volume
//! and no snapshot names it: deletes queue the layers they released in `block.garbage`, and
//! the collector frees those that a linearizable scan shows unreferenced.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use strata_disk::BLOCK_BYTES;
use strata_meta::{Check, MetaStore, Op, Txn};

use crate::VolumeError;

/// Meta table of volume records, keyed by volume name (the NBD export name).
pub const VOLUMES_TABLE: &str = "block.volumes";
/// Meta table of snapshot records, keyed by snapshot name.
pub const SNAPSHOTS_TABLE: &str = "block.snapshots";
/// Meta table of replicas that missed writes of a layer, keyed `<layer>/<disk>` (see
/// `insync`); the value changes whenever the replica misses another write.
pub const STALE_TABLE: &str = "block.stale";
/// Meta table of the extents each stale replica missed writes of, keyed
/// `<layer>/<disk>/<extent>` (empty values): what its resync copies.
pub const STALE_EXTENTS_TABLE: &str = "block.stale_extents";
/// Meta table of layers waiting to be freed, keyed by layer id; the value is the size in
/// bytes the layer covered.
pub const GARBAGE_TABLE: &str = "block.garbage";

const BLOCK: u64 = BLOCK_BYTES as u64;

/// A volume record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSpec {
    /// The writable layer. Random, so a volume re-created under an old name starts empty.
    pub id: u64,
    pub name: String,
    pub size_bytes: u64,
    /// Frozen layers below `id`, oldest first: snapshots taken of this volume, and the
    /// chain of the snapshot it was cloned from.
    #[serde(default)]
    pub parents: Vec<u64>,
    /// Served as an NBD export (and vhost-user-blk socket) by every node.
    #[serde(default = "default_true")]
    pub exported: bool,
}

fn default_true() -> bool {
    true
}

impl VolumeSpec {
    /// Every layer, newest (the writable one) first: the order reads resolve blocks in.
    pub fn layers_newest_first(&self) -> impl Iterator<Item = u64> + '_ {
        std::iter::once(self.id).chain(self.parents.iter().rev().copied())
    }
}

/// A snapshot record: a frozen chain of layers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotSpec {
    pub name: String,
    /// The volume it was taken of (its name).
    pub volume: String,
    pub size_bytes: u64,
    /// Oldest first; the last is the layer the snapshot froze.
    pub layers: Vec<u64>,
}

impl SnapshotSpec {
    /// A read-only view of the frozen chain as a volume spec (unexported), for reading the
    /// snapshot's blocks through a [`crate::Volume`]. Never write through it.
    pub fn frozen(&self) -> VolumeSpec {
        let mut layers = self.layers.clone();
        let top = layers.pop().unwrap_or(0);
        VolumeSpec {
            id: top,
            name: self.name.clone(),
            size_bytes: self.size_bytes,
            parents: layers,
            exported: false,
        }
    }
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, VolumeError> {
    serde_json::to_vec(v).map_err(|e| VolumeError::Codec(e.to_string()))
}

fn decode<T: for<'de> Deserialize<'de>>(raw: &[u8]) -> Result<T, VolumeError> {
    serde_json::from_slice(raw).map_err(|e| VolumeError::Codec(e.to_string()))
}

fn new_layer_id() -> u64 {
    // Positive in an i64 too, for tools that print it.
    rand::random::<u64>() >> 1
}

fn check_name(name: &str) -> Result<(), VolumeError> {
    if name.is_empty() || name.len() > 255 || name.contains(['\0', '/']) {
        return Err(VolumeError::Invalid(format!("bad name {name:?}")));
    }
    Ok(())
}

fn check_size(size_bytes: u64) -> Result<(), VolumeError> {
    if size_bytes == 0 || !size_bytes.is_multiple_of(BLOCK) {
        return Err(VolumeError::Invalid(format!(
            "size {size_bytes} is not a positive multiple of 4096"
        )));
    }
    Ok(())
}

/// The transaction that creates a volume record: `extra` ops (the caller's own records) are
/// applied atomically with it. Fails with `Exists` if the name is taken.
pub async fn create_with(
    meta: &dyn MetaStore,
    spec: VolumeSpec,
    mut checks: Vec<Check>,
    extra: Vec<Op>,
) -> Result<VolumeSpec, VolumeError> {
    check_name(&spec.name)?;
    check_size(spec.size_bytes)?;
    checks.push(Check::Absent {
        table: VOLUMES_TABLE.into(),
        key: spec.name.clone(),
    });
    let mut ops = vec![Op::Put {
        table: VOLUMES_TABLE.into(),
        key: spec.name.clone(),
        value: encode(&spec)?,
    }];
    ops.extend(extra);
    if !meta.write(Txn { checks, ops }).await?.succeeded {
        return Err(VolumeError::Conflict(format!(
            "volume {} exists or its source changed",
            spec.name
        )));
    }
    Ok(spec)
}

/// A new, empty volume spec (exported or not).
pub fn new_volume(name: &str, size_bytes: u64, exported: bool) -> VolumeSpec {
    VolumeSpec {
        id: new_layer_id(),
        name: name.into(),
        size_bytes,
        parents: Vec::new(),
        exported,
    }
}

/// Create an empty, exported volume.
pub async fn create(
    meta: &dyn MetaStore,
    name: &str,
    size_bytes: u64,
) -> Result<VolumeSpec, VolumeError> {
    create_with(meta, new_volume(name, size_bytes, true), vec![], vec![])
        .await
        .map_err(|e| match e {
            VolumeError::Conflict(_) => VolumeError::Exists(name.into()),
            e => e,
        })
}

/// A volume spec that starts as a copy-on-write clone of `snap` (nothing is copied), with
/// a size of at least the snapshot's.
pub fn clone_of(
    snap: &SnapshotSpec,
    name: &str,
    size_bytes: u64,
    exported: bool,
) -> Result<(VolumeSpec, Check), VolumeError> {
    if size_bytes < snap.size_bytes {
        return Err(VolumeError::Invalid(format!(
            "a clone of {} bytes cannot be smaller than its snapshot ({} bytes)",
            size_bytes, snap.size_bytes
        )));
    }
    let spec = VolumeSpec {
        id: new_layer_id(),
        name: name.into(),
        size_bytes,
        parents: snap.layers.clone(),
        exported,
    };
    // The snapshot must still exist when the clone is recorded: its layers are then
    // referenced without a gap, so the collector never frees them under the clone.
    let check = Check::Equals {
        table: SNAPSHOTS_TABLE.into(),
        key: snap.name.clone(),
        value: encode(snap)?,
    };
    Ok((spec, check))
}

/// Volume record as this node has applied it.
pub fn get_local(meta: &dyn MetaStore, name: &str) -> Result<Option<VolumeSpec>, VolumeError> {
    meta.get_local(VOLUMES_TABLE, name)
        .map(|raw| decode(&raw))
        .transpose()
}

/// Volume record, linearizable.
pub async fn get(meta: &dyn MetaStore, name: &str) -> Result<Option<VolumeSpec>, VolumeError> {
    meta.get(VOLUMES_TABLE, name)
        .await?
        .map(|raw| decode(&raw))
        .transpose()
}

/// Snapshot record, linearizable.
pub async fn get_snapshot(
    meta: &dyn MetaStore,
    name: &str,
) -> Result<Option<SnapshotSpec>, VolumeError> {
    meta.get(SNAPSHOTS_TABLE, name)
        .await?
        .map(|raw| decode(&raw))
        .transpose()
}

/// Every volume record, as this node has applied them.
pub fn list_local(meta: &dyn MetaStore) -> Vec<VolumeSpec> {
    meta.scan_local(VOLUMES_TABLE, "", None, usize::MAX)
        .into_iter()
        .filter_map(|(k, v)| match decode(&v) {
            Ok(spec) => Some(spec),
            Err(e) => {
                tracing::error!(volume = %k, error = %e, "unreadable volume record");
                None
            }
        })
        .collect()
}

/// Apply `change` to a volume record with optimistic concurrency: read, change, write if
/// unchanged meanwhile, retry otherwise. `extra` builds further ops from the new spec.
async fn update(
    meta: &dyn MetaStore,
    name: &str,
    change: &(dyn Fn(&mut VolumeSpec) -> Result<Vec<Op>, VolumeError> + Sync),
) -> Result<VolumeSpec, VolumeError> {
    for _ in 0..16 {
        let raw = meta
            .get(VOLUMES_TABLE, name)
            .await?
            .ok_or_else(|| VolumeError::NotFound(name.into()))?;
        let mut spec: VolumeSpec = decode(&raw)?;
        let mut ops = change(&mut spec)?;
        ops.insert(
            0,
            Op::Put {
                table: VOLUMES_TABLE.into(),
                key: name.into(),
                value: encode(&spec)?,
            },
        );
        let txn = Txn {
            checks: vec![Check::Equals {
                table: VOLUMES_TABLE.into(),
                key: name.into(),
                value: raw,
            }],
            ops,
        };
        if meta.write(txn).await?.succeeded {
            return Ok(spec);
        }
    }
    Err(VolumeError::Conflict(format!(
        "volume {name} keeps changing; try again"
    )))
}

/// Grow a volume (online: exports pick the new size up; connected NBD clients see it when
/// they reconnect). Shrinking is refused.
pub async fn extend(
    meta: &dyn MetaStore,
    name: &str,
    size_bytes: u64,
) -> Result<VolumeSpec, VolumeError> {
    check_size(size_bytes)?;
    update(meta, name, &|spec| {
        if size_bytes < spec.size_bytes {
            return Err(VolumeError::Invalid(format!(
                "new size {size_bytes} is smaller than the current {}",
                spec.size_bytes
            )));
        }
        spec.size_bytes = size_bytes;
        Ok(vec![])
    })
    .await
}

/// Export a volume over NBD (and vhost-user-blk) on every node, or stop exporting it.
pub async fn set_exported(
    meta: &dyn MetaStore,
    name: &str,
    exported: bool,
) -> Result<VolumeSpec, VolumeError> {
    update(meta, name, &|spec| {
        spec.exported = exported;
        Ok(vec![])
    })
    .await
}

/// Take a snapshot named `snap` of volume `name`: freeze its writable layer, give the volume
/// a new one. Instant: no block is copied.
pub async fn snapshot(
    meta: &dyn MetaStore,
    name: &str,
    snap: &str,
) -> Result<SnapshotSpec, VolumeError> {
    check_name(snap)?;
    let taken = std::sync::Mutex::new(None);
    update(meta, name, &|spec| {
        let mut layers = spec.parents.clone();
        layers.push(spec.id);
        let record = SnapshotSpec {
            name: snap.into(),
            volume: spec.name.clone(),
            size_bytes: spec.size_bytes,
            layers,
        };
        spec.parents.push(spec.id);
        spec.id = new_layer_id();
        let value = encode(&record)?;
        *taken.lock().unwrap_or_else(|e| e.into_inner()) = Some(record);
        Ok(vec![Op::Put {
            table: SNAPSHOTS_TABLE.into(),
            key: snap.into(),
            value,
        }])
    })
    .await?;
    taken
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .ok_or_else(|| VolumeError::Codec("snapshot record missing".into()))
}

/// Turn volume `name` into the snapshot record `snap` of `size_bytes` (at most the
/// volume's size), in one transaction with the caller's `checks` and `extra` ops: the
/// volume record goes, its whole chain is kept under the snapshot, and nothing is copied
/// or freed. For data written once through a hidden volume and then only read (images).
pub async fn freeze_with(
    meta: &dyn MetaStore,
    name: &str,
    snap: &str,
    size_bytes: u64,
    mut checks: Vec<Check>,
    extra: Vec<Op>,
) -> Result<SnapshotSpec, VolumeError> {
    check_name(snap)?;
    check_size(size_bytes)?;
    let raw = meta
        .get(VOLUMES_TABLE, name)
        .await?
        .ok_or_else(|| VolumeError::NotFound(name.into()))?;
    let spec: VolumeSpec = decode(&raw)?;
    if size_bytes > spec.size_bytes {
        return Err(VolumeError::Invalid(format!(
            "a snapshot of {size_bytes} bytes cannot be larger than volume {name} ({} bytes)",
            spec.size_bytes
        )));
    }
    let mut layers = spec.parents.clone();
    layers.push(spec.id);
    let record = SnapshotSpec {
        name: snap.into(),
        volume: name.into(),
        size_bytes,
        layers,
    };
    checks.push(Check::Equals {
        table: VOLUMES_TABLE.into(),
        key: name.into(),
        value: raw,
    });
    checks.push(Check::Absent {
        table: SNAPSHOTS_TABLE.into(),
        key: snap.into(),
    });
    let mut ops = vec![
        Op::Delete {
            table: VOLUMES_TABLE.into(),
            key: name.into(),
        },
        Op::Put {
            table: SNAPSHOTS_TABLE.into(),
            key: snap.into(),
            value: encode(&record)?,
        },
    ];
    ops.extend(extra);
    if !meta.write(Txn { checks, ops }).await?.succeeded {
        return Err(VolumeError::Conflict(format!(
            "volume {name} or snapshot {snap} changed while being frozen"
        )));
    }
    Ok(record)
}

fn garbage_ops(layers: &[u64], size_bytes: u64) -> Vec<Op> {
    layers
        .iter()
        .map(|l| Op::Put {
            table: GARBAGE_TABLE.into(),
            key: l.to_string(),
            value: size_bytes.to_string().into_bytes(),
        })
        .collect()
}

/// Delete a volume record with `extra` ops in the same transaction; its layers are queued
/// for the collector, which frees those nothing else references.
pub async fn delete_with(
    meta: &dyn MetaStore,
    name: &str,
    checks: Vec<Check>,
    extra: Vec<Op>,
) -> Result<(), VolumeError> {
    let raw = meta
        .get(VOLUMES_TABLE, name)
        .await?
        .ok_or_else(|| VolumeError::NotFound(name.into()))?;
    let spec: VolumeSpec = decode(&raw)?;
    let mut all_checks = vec![Check::Equals {
        table: VOLUMES_TABLE.into(),
        key: name.into(),
        value: raw,
    }];
    all_checks.extend(checks);
    let mut ops = vec![Op::Delete {
        table: VOLUMES_TABLE.into(),
        key: name.into(),
    }];
    let layers: Vec<u64> = spec.layers_newest_first().collect();
    ops.extend(garbage_ops(&layers, spec.size_bytes));
    ops.extend(extra);
    if !meta
        .write(Txn {
            checks: all_checks,
            ops,
        })
        .await?
        .succeeded
    {
        return Err(VolumeError::Conflict(format!(
            "volume {name} changed while being deleted"
        )));
    }
    Ok(())
}

/// Delete a snapshot record with `extra` ops in the same transaction; its layers are queued
/// for the collector (the volume and clones still reading them keep them alive).
pub async fn delete_snapshot_with(
    meta: &dyn MetaStore,
    snap: &str,
    extra: Vec<Op>,
) -> Result<(), VolumeError> {
    delete_snapshot_checked(meta, snap, vec![], extra).await
}

/// [`delete_snapshot_with`], also conditional on the caller's `checks`.
pub async fn delete_snapshot_checked(
    meta: &dyn MetaStore,
    snap: &str,
    mut checks: Vec<Check>,
    extra: Vec<Op>,
) -> Result<(), VolumeError> {
    let raw = meta
        .get(SNAPSHOTS_TABLE, snap)
        .await?
        .ok_or_else(|| VolumeError::NotFound(snap.into()))?;
    let spec: SnapshotSpec = decode(&raw)?;
    let mut ops = vec![Op::Delete {
        table: SNAPSHOTS_TABLE.into(),
        key: snap.into(),
    }];
    ops.extend(garbage_ops(&spec.layers, spec.size_bytes));
    ops.extend(extra);
    checks.push(Check::Equals {
        table: SNAPSHOTS_TABLE.into(),
        key: snap.into(),
        value: raw,
    });
    let txn = Txn { checks, ops };
    if !meta.write(txn).await?.succeeded {
        return Err(VolumeError::Conflict(format!(
            "snapshot {snap} changed while being deleted"
        )));
    }
    Ok(())
}

/// Layers some volume or snapshot still names, by a linearizable scan.
pub async fn referenced_layers(meta: &dyn MetaStore) -> Result<BTreeSet<u64>, VolumeError> {
    let mut out = BTreeSet::new();
    for (_, raw) in meta.scan(VOLUMES_TABLE, "", None, usize::MAX).await? {
        let spec: VolumeSpec = decode(&raw)?;
        out.extend(spec.layers_newest_first());
    }
    for (_, raw) in meta.scan(SNAPSHOTS_TABLE, "", None, usize::MAX).await? {
        let spec: SnapshotSpec = decode(&raw)?;
        out.extend(spec.layers);
    }
    Ok(out)
}

/// Layers queued for freeing: `(layer, size in bytes)`.
pub async fn garbage(meta: &dyn MetaStore) -> Result<Vec<(u64, u64)>, VolumeError> {
    let rows = meta.scan(GARBAGE_TABLE, "", None, usize::MAX).await?;
    Ok(rows
        .into_iter()
        .filter_map(|(k, v)| {
            let layer = k.parse().ok()?;
            let size = std::str::from_utf8(&v).ok()?.parse().ok()?;
            Some((layer, size))
        })
        .collect())
}

/// Drop a layer from the garbage queue once it is freed (or found still in use).
pub async fn forget_garbage(meta: &dyn MetaStore, layer: u64) -> Result<(), VolumeError> {
    meta.write(Txn {
        checks: vec![],
        ops: vec![Op::Delete {
            table: GARBAGE_TABLE.into(),
            key: layer.to_string(),
        }],
    })
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_meta::MemMeta;

    #[tokio::test]
    async fn snapshot_freezes_the_writable_layer_and_clone_reads_through_it() {
        let meta = MemMeta::new();
        let v = create(&meta, "v", 8 << 20).await.unwrap();
        let s = snapshot(&meta, "v", "s1").await.unwrap();
        assert_eq!(s.layers, vec![v.id]);
        let after = get(&meta, "v").await.unwrap().unwrap();
        assert_eq!(after.parents, vec![v.id]);
        assert_ne!(after.id, v.id);

        let (c, check) = clone_of(&s, "c", 16 << 20, false).unwrap();
        let c = create_with(&meta, c, vec![check], vec![]).await.unwrap();
        assert_eq!(
            c.layers_newest_first().collect::<Vec<_>>(),
            vec![c.id, v.id]
        );
        assert!(matches!(
            clone_of(&s, "small", 4 << 20, false),
            Err(VolumeError::Invalid(_))
        ));

        // The snapshot's layer stays referenced by the volume and the clone after the
        // snapshot record goes; the volume's own layer goes with the volume.
        delete_snapshot_with(&meta, "s1", vec![]).await.unwrap();
        delete_with(&meta, "v", vec![], vec![]).await.unwrap();
        let refs = referenced_layers(&meta).await.unwrap();
        assert!(refs.contains(&v.id) && refs.contains(&c.id));
        assert!(!refs.contains(&after.id));
        let queued: Vec<u64> = garbage(&meta).await.unwrap().iter().map(|g| g.0).collect();
        assert!(queued.contains(&after.id) && queued.contains(&v.id));
    }

    #[tokio::test]
    async fn freeze_turns_a_volume_into_a_snapshot_of_its_used_size() {
        let meta = MemMeta::new();
        let v = create_with(&meta, new_volume("hidden", 1 << 30, false), vec![], vec![])
            .await
            .unwrap();
        assert!(matches!(
            freeze_with(&meta, "hidden", "img", 2 << 30, vec![], vec![]).await,
            Err(VolumeError::Invalid(_))
        ));
        assert!(matches!(
            freeze_with(&meta, "hidden", "img", 100, vec![], vec![]).await,
            Err(VolumeError::Invalid(_))
        ));
        let s = freeze_with(&meta, "hidden", "img", 8192, vec![], vec![])
            .await
            .unwrap();
        assert_eq!((s.layers.clone(), s.size_bytes), (vec![v.id], 8192));
        assert_eq!(get(&meta, "hidden").await.unwrap(), None);
        assert_eq!(get_snapshot(&meta, "img").await.unwrap(), Some(s.clone()));
        // Nothing was queued for freeing: the snapshot holds the layer.
        assert!(garbage(&meta).await.unwrap().is_empty());
        assert!(referenced_layers(&meta).await.unwrap().contains(&v.id));
        // A second freeze finds no volume.
        assert!(matches!(
            freeze_with(&meta, "hidden", "img", 8192, vec![], vec![]).await,
            Err(VolumeError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn extend_grows_only_and_names_are_checked() {
        let meta = MemMeta::new();
        create(&meta, "v", 4096).await.unwrap();
        assert_eq!(extend(&meta, "v", 8192).await.unwrap().size_bytes, 8192);
        assert!(matches!(
            extend(&meta, "v", 4096).await,
            Err(VolumeError::Invalid(_))
        ));
        assert!(matches!(
            extend(&meta, "nope", 8192).await,
            Err(VolumeError::NotFound(_))
        ));
        assert!(matches!(
            create(&meta, "v", 4096).await,
            Err(VolumeError::Exists(_))
        ));
        assert!(matches!(
            create(&meta, "a/b", 4096).await,
            Err(VolumeError::Invalid(_))
        ));
        assert!(matches!(
            create(&meta, "odd", 4095).await,
            Err(VolumeError::Invalid(_))
        ));
    }
}
