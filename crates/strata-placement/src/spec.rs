//! The ring's input: the device list and parameters, as stored in the
//! cluster's replicated state, and its validation.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use strata_types::{DiskId, NodeId};

/// Fewest bits of partition number a ring may use.
pub const PART_POWER_MIN: u8 = 1;
/// Most bits of partition number: 2^20 partitions keeps the table (and its
/// rebuild on every spec change) within tens of megabytes.
pub const PART_POWER_MAX: u8 = 20;
/// Most copies of a partition a ring may ask for.
pub const REPLICAS_MAX: u8 = 16;

/// One disk of the cluster as the ring sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Device {
    pub id: DiskId,
    pub node: NodeId,
    /// Failure domain above the node (a rack, room or site). Every disk of a
    /// node must name the same zone.
    pub zone: String,
    /// Relative capacity; a device's expected share of partition replicas is
    /// proportional to it. 0 means drained: the device gets no partitions.
    pub weight: f64,
}

/// Everything the partition table is computed from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RingSpec {
    /// Bumped by whoever edits the spec; carried through unchanged.
    pub version: u64,
    /// The ring has 2^part_power partitions.
    pub part_power: u8,
    /// Copies of each partition (fewer if fewer devices have weight).
    pub replicas: u8,
    pub devices: Vec<Device>,
}

/// Why a [`RingSpec`] cannot be turned into a ring.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum PlacementError {
    #[error("ring has no devices")]
    NoDevices,
    #[error("no device of the ring has a weight above zero")]
    NoWeightedDevices,
    #[error("replicas must be 1..={REPLICAS_MAX}, got {0}")]
    BadReplicas(u8),
    #[error("part_power must be {PART_POWER_MIN}..={PART_POWER_MAX}, got {0}")]
    BadPartPower(u8),
    #[error("device {0} appears more than once")]
    DuplicateDevice(DiskId),
    #[error("device {id} has weight {weight}; weights must be finite and >= 0")]
    BadWeight { id: DiskId, weight: f64 },
    #[error("node {node} has disks in zones {first:?} and {second:?}")]
    NodeInTwoZones {
        node: NodeId,
        first: String,
        second: String,
    },
}

impl RingSpec {
    /// Checks the spec without building the table, so a bad edit can be
    /// rejected before it is committed.
    pub fn validate(&self) -> Result<(), PlacementError> {
        self.check_params()?;
        self.check_devices()
    }

    fn check_params(&self) -> Result<(), PlacementError> {
        if !(PART_POWER_MIN..=PART_POWER_MAX).contains(&self.part_power) {
            return Err(PlacementError::BadPartPower(self.part_power));
        }
        if !(1..=REPLICAS_MAX).contains(&self.replicas) {
            return Err(PlacementError::BadReplicas(self.replicas));
        }
        if self.devices.is_empty() {
            return Err(PlacementError::NoDevices);
        }
        Ok(())
    }

    fn check_devices(&self) -> Result<(), PlacementError> {
        let mut ids = BTreeSet::new();
        let mut zone_of: BTreeMap<NodeId, &str> = BTreeMap::new();
        for d in &self.devices {
            if !ids.insert(d.id) {
                return Err(PlacementError::DuplicateDevice(d.id));
            }
            if !d.weight.is_finite() || d.weight < 0.0 {
                return Err(PlacementError::BadWeight {
                    id: d.id,
                    weight: d.weight,
                });
            }
            let first = *zone_of.entry(d.node).or_insert(&d.zone);
            if first != d.zone {
                return Err(PlacementError::NodeInTwoZones {
                    node: d.node,
                    first: first.to_owned(),
                    second: d.zone.clone(),
                });
            }
        }
        if !self.devices.iter().any(|d| d.weight > 0.0) {
            return Err(PlacementError::NoWeightedDevices);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(id: DiskId, node: NodeId, zone: &str, weight: f64) -> Device {
        Device {
            id,
            node,
            zone: zone.into(),
            weight,
        }
    }

    fn spec(devices: Vec<Device>) -> RingSpec {
        RingSpec {
            version: 1,
            part_power: 4,
            replicas: 3,
            devices,
        }
    }

    #[test]
    fn accepts_a_plain_spec() {
        let s = spec(vec![dev(1, 1, "a", 1.0), dev(2, 2, "b", 0.0)]);
        assert_eq!(s.validate(), Ok(()));
    }

    #[test]
    fn rejects_each_kind_of_bad_spec() {
        let good = || spec(vec![dev(1, 1, "a", 1.0)]);
        let cases: Vec<(RingSpec, PlacementError)> = vec![
            (spec(vec![]), PlacementError::NoDevices),
            (
                spec(vec![dev(1, 1, "a", 0.0)]),
                PlacementError::NoWeightedDevices,
            ),
            (
                RingSpec {
                    replicas: 0,
                    ..good()
                },
                PlacementError::BadReplicas(0),
            ),
            (
                RingSpec {
                    replicas: 17,
                    ..good()
                },
                PlacementError::BadReplicas(17),
            ),
            (
                RingSpec {
                    part_power: 0,
                    ..good()
                },
                PlacementError::BadPartPower(0),
            ),
            (
                RingSpec {
                    part_power: 21,
                    ..good()
                },
                PlacementError::BadPartPower(21),
            ),
            (
                spec(vec![dev(1, 1, "a", 1.0), dev(1, 2, "a", 1.0)]),
                PlacementError::DuplicateDevice(1),
            ),
            (
                spec(vec![dev(1, 1, "a", -1.0)]),
                PlacementError::BadWeight {
                    id: 1,
                    weight: -1.0,
                },
            ),
            (
                spec(vec![dev(1, 1, "a", f64::INFINITY)]),
                PlacementError::BadWeight {
                    id: 1,
                    weight: f64::INFINITY,
                },
            ),
            (
                spec(vec![dev(1, 1, "a", 1.0), dev(2, 1, "b", 1.0)]),
                PlacementError::NodeInTwoZones {
                    node: 1,
                    first: "a".into(),
                    second: "b".into(),
                },
            ),
        ];
        for (s, want) in cases {
            assert_eq!(s.validate(), Err(want));
        }
    }

    #[test]
    fn rejects_nan_weight() {
        let s = spec(vec![dev(9, 1, "a", f64::NAN)]);
        assert!(matches!(
            s.validate(),
            Err(PlacementError::BadWeight { id: 9, .. })
        ));
    }
}
