//! Failure-domain-aware straw2 selection for one partition.
//!
//! Every weighted disk gets a straw2 draw for the partition; a zone's draw is
//! the best draw among its disks, a node's the best among its disks. Because
//! straw2 draws are exponential races, the best of a group is distributed
//! exactly like a single straw2 draw with the group's summed weight. So taking
//! the best disk among the allowed ones is the same as picking a zone by zone
//! weight, then a node in it by node weight, then a disk in it by disk weight,
//! while needing one draw per disk instead of one per level and attempt.
//!
//! The draws give each partition a fixed preference order over disks. Picks
//! walk that order under domain rules, so adding, removing or reweighting a
//! disk only changes the partitions where that disk's own rank crosses the
//! cut-off, which is what keeps data movement near the minimum.

use crate::hash;
use crate::spec::Device;
use std::collections::BTreeMap;
use strata_types::{DiskId, NodeId};

/// A disk that can hold partitions (weight > 0), with its domains as indexes.
#[derive(Clone, Debug)]
struct Candidate {
    id: DiskId,
    key: u64,
    weight: f64,
    node: usize,
    zone: usize,
}

/// The weighted disks of a ring, grouped into nodes and zones.
#[derive(Clone, Debug)]
pub(crate) struct Topology {
    /// Sorted by disk id, so that ties between equal draws go to the lower id
    /// regardless of the order devices were listed in.
    disks: Vec<Candidate>,
    nodes: usize,
    zones: usize,
}

impl Topology {
    pub(crate) fn new(devices: &[Device]) -> Topology {
        let mut weighted: Vec<&Device> = devices.iter().filter(|d| d.weight > 0.0).collect();
        weighted.sort_by_key(|d| d.id);
        let mut nodes: BTreeMap<NodeId, usize> = BTreeMap::new();
        let mut zones: BTreeMap<&str, usize> = BTreeMap::new();
        let disks = weighted
            .iter()
            .map(|d| {
                let next_node = nodes.len();
                let next_zone = zones.len();
                Candidate {
                    id: d.id,
                    key: hash::disk_key(d.id),
                    weight: d.weight,
                    node: *nodes.entry(d.node).or_insert(next_node),
                    zone: *zones.entry(d.zone.as_str()).or_insert(next_zone),
                }
            })
            .collect();
        Topology {
            disks,
            nodes: nodes.len(),
            zones: zones.len(),
        }
    }

    pub(crate) fn disk_count(&self) -> usize {
        self.disks.len()
    }

    pub(crate) fn id(&self, disk: usize) -> DiskId {
        self.disks[disk].id
    }
}

/// Picks disks for one partition at a time, best first. Reusable across
/// partitions so building a table allocates once.
pub(crate) struct Selector<'a> {
    topo: &'a Topology,
    draws: Vec<f64>,
    disk_used: Vec<bool>,
    node_used: Vec<bool>,
    zone_used: Vec<bool>,
    nodes_used: usize,
    zones_used: usize,
}

impl<'a> Selector<'a> {
    pub(crate) fn new(topo: &'a Topology) -> Selector<'a> {
        Selector {
            topo,
            draws: vec![0.0; topo.disks.len()],
            disk_used: vec![false; topo.disks.len()],
            node_used: vec![false; topo.nodes],
            zone_used: vec![false; topo.zones],
            nodes_used: 0,
            zones_used: 0,
        }
    }

    /// Forgets earlier picks and draws afresh for `part`.
    pub(crate) fn start(&mut self, part: u32) {
        let pk = hash::part_key(part);
        for (draw, d) in self.draws.iter_mut().zip(&self.topo.disks) {
            *draw = hash::draw(pk, d.key, d.weight);
        }
        self.disk_used.fill(false);
        self.node_used.fill(false);
        self.zone_used.fill(false);
        self.nodes_used = 0;
        self.zones_used = 0;
    }

    /// The next disk (as an index into the topology), or None when every
    /// weighted disk has been picked.
    ///
    /// A zone is reused only once every zone holds a pick, and a node only once
    /// every node does; a disk is never reused. So the picks span as many zones
    /// and nodes as they can, and no node holds two copies while there are at
    /// least as many weighted nodes as copies.
    pub(crate) fn next_disk(&mut self) -> Option<usize> {
        let need_new_zone = self.zones_used < self.topo.zones;
        let need_new_node = self.nodes_used < self.topo.nodes;
        let mut best: Option<usize> = None;
        for (i, d) in self.topo.disks.iter().enumerate() {
            let barred = self.disk_used[i]
                || (need_new_zone && self.zone_used[d.zone])
                || (need_new_node && self.node_used[d.node]);
            // Strictly greater: on a tie the earlier (lower id) disk stays.
            if !barred && !best.is_some_and(|b| self.draws[b] >= self.draws[i]) {
                best = Some(i);
            }
        }
        best.inspect(|&i| self.mark(i))
    }

    fn mark(&mut self, i: usize) {
        let d = &self.topo.disks[i];
        self.disk_used[i] = true;
        if !std::mem::replace(&mut self.node_used[d.node], true) {
            self.nodes_used += 1;
        }
        if !std::mem::replace(&mut self.zone_used[d.zone], true) {
            self.zones_used += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(id: DiskId, node: NodeId, zone: &str) -> Device {
        Device {
            id,
            node,
            zone: zone.into(),
            weight: 1.0,
        }
    }

    fn picks(topo: &Topology, part: u32) -> Vec<DiskId> {
        let mut sel = Selector::new(topo);
        sel.start(part);
        std::iter::from_fn(|| sel.next_disk())
            .map(|i| topo.id(i))
            .collect()
    }

    #[test]
    fn skips_drained_disks_and_groups_domains() {
        let mut devs = vec![dev(1, 1, "a"), dev(2, 1, "a"), dev(3, 2, "b")];
        devs.push(Device {
            weight: 0.0,
            ..dev(4, 3, "c")
        });
        let topo = Topology::new(&devs);
        assert_eq!(topo.disk_count(), 3);
        assert_eq!((topo.nodes, topo.zones), (2, 2));
    }

    #[test]
    fn order_covers_every_disk_once_and_alternates_domains() {
        let devs = vec![
            dev(1, 1, "a"),
            dev(2, 1, "a"),
            dev(3, 2, "b"),
            dev(4, 2, "b"),
        ];
        let topo = Topology::new(&devs);
        for part in 0..64 {
            let order = picks(&topo, part);
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, vec![1, 2, 3, 4]);
            // The first two picks are on different nodes (and zones).
            assert_ne!(
                (order[0] - 1) / 2,
                (order[1] - 1) / 2,
                "part {part}: {order:?}"
            );
        }
    }

    #[test]
    fn start_resets_previous_picks() {
        let topo = Topology::new(&[dev(1, 1, "a"), dev(2, 2, "a")]);
        let mut sel = Selector::new(&topo);
        sel.start(3);
        let first = sel.next_disk();
        sel.start(3);
        assert_eq!(sel.next_disk(), first);
    }
}
