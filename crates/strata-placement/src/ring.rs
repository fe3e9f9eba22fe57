//! The partition table computed from a [`RingSpec`], and lookups into it.

use crate::select::{Selector, Topology};
use crate::spec::{Device, PlacementError, RingSpec};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use strata_types::{DiskId, NodeId};

/// A [`RingSpec`] with its partition table precomputed. Built from the same
/// spec, it is identical on every machine.
#[derive(Clone)]
pub struct Ring {
    spec: RingSpec,
    topo: Topology,
    /// Copies per partition: `replicas`, or fewer if fewer disks have weight.
    width: usize,
    /// Partition `p`'s replicas are `table[p * width..(p + 1) * width]`.
    table: Vec<DiskId>,
    /// Disk id to its index in `spec.devices`, drained disks included.
    by_id: BTreeMap<DiskId, usize>,
}

impl Ring {
    pub fn new(spec: RingSpec) -> Result<Ring, PlacementError> {
        spec.validate()?;
        let topo = Topology::new(&spec.devices);
        let width = usize::from(spec.replicas).min(topo.disk_count());
        let table = build_table(&topo, 1u32 << spec.part_power, width);
        let by_id = spec
            .devices
            .iter()
            .enumerate()
            .map(|(i, d)| (d.id, i))
            .collect();
        Ok(Ring {
            spec,
            topo,
            width,
            table,
            by_id,
        })
    }

    pub fn spec(&self) -> &RingSpec {
        &self.spec
    }

    pub fn version(&self) -> u64 {
        self.spec.version
    }

    pub fn partition_count(&self) -> u32 {
        1 << self.spec.part_power
    }

    /// The partition holding `key`: the top `part_power` bits of a stable hash,
    /// so raising the part power splits each partition in two in place.
    pub fn partition_of(&self, key: &[u8]) -> u32 {
        let hash = blake3::hash(key);
        let mut top = [0u8; 8];
        top.copy_from_slice(&hash.as_bytes()[..8]);
        (u64::from_be_bytes(top) >> (64 - u32::from(self.spec.part_power))) as u32
    }

    /// The disks holding `part`, primary first. Empty if `part` is out of range.
    pub fn replicas(&self, part: u32) -> &[DiskId] {
        let start = part as usize * self.width;
        self.table.get(start..start + self.width).unwrap_or(&[])
    }

    pub fn replicas_for_key(&self, key: &[u8]) -> &[DiskId] {
        self.replicas(self.partition_of(key))
    }

    /// Every other weighted disk, in the order `part` prefers them after its
    /// replicas: where to write when a replica is down, and where to look
    /// when repairing. Computed on demand, in O(disks^2).
    pub fn handoffs(&self, part: u32) -> Vec<DiskId> {
        if part >= self.partition_count() {
            return Vec::new();
        }
        let mut sel = Selector::new(&self.topo);
        sel.start(part);
        std::iter::from_fn(|| sel.next_disk())
            .skip(self.width)
            .map(|i| self.topo.id(i))
            .collect()
    }

    /// Any device of the spec, drained ones included.
    pub fn device(&self, id: DiskId) -> Option<&Device> {
        self.by_id.get(&id).map(|&i| &self.spec.devices[i])
    }

    pub fn node_of(&self, id: DiskId) -> Option<NodeId> {
        self.device(id).map(|d| d.node)
    }
}

impl fmt::Debug for Ring {
    // The table can hold millions of entries; show only what identifies the ring.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("version", &self.spec.version)
            .field("part_power", &self.spec.part_power)
            .field("replicas", &self.width)
            .field("devices", &self.spec.devices.len())
            .finish_non_exhaustive()
    }
}

fn build_table(topo: &Topology, partitions: u32, width: usize) -> Vec<DiskId> {
    let mut table = Vec::with_capacity(partitions as usize * width);
    let mut sel = Selector::new(topo);
    for part in 0..partitions {
        sel.start(part);
        for _ in 0..width {
            // width <= disk count, so a disk is always left to pick.
            let disk = sel.next_disk().expect("fewer picks than weighted disks");
            table.push(topo.id(disk));
        }
    }
    table
}

/// Fraction of partition replicas of `a` that are not in the same stretch of
/// key space in `b`: for each partition, each device of `a`'s replica set that
/// `b`'s set lacks counts as one moved replica. Reordering within a set is not
/// movement. Rings of different part powers are compared over the finer
/// partitioning, so every stretch of key space counts in proportion to its size.
pub fn moved_fraction(a: &Ring, b: &Ring) -> f64 {
    let (pa, pb) = (a.spec.part_power, b.spec.part_power);
    let fine = pa.max(pb);
    let (mut moved, mut total) = (0u64, 0u64);
    for q in 0..1u32 << fine {
        let ra = a.replicas(q >> (fine - pa));
        let rb: BTreeSet<DiskId> = b.replicas(q >> (fine - pb)).iter().copied().collect();
        total += ra.len() as u64;
        moved += ra.iter().filter(|d| !rb.contains(d)).count() as u64;
    }
    if total == 0 {
        0.0
    } else {
        moved as f64 / total as f64
    }
}

#[cfg(test)]
mod tests;
