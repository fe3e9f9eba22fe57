//! Properties of rings built from random device sets.

use proptest::prelude::*;
use std::collections::BTreeSet;
use strata_placement::{moved_fraction, Device, PlacementError, Ring, RingSpec};

/// Per node: its zone index and the weights of its disks.
type Layout = Vec<(u64, Vec<f64>)>;

fn weight() -> impl Strategy<Value = f64> {
    // Mostly ordinary weights, sometimes a drained disk.
    prop_oneof![9 => 0.1f64..10.0, 1 => Just(0.0)]
}

fn layout() -> impl Strategy<Value = Layout> {
    (1u64..=5).prop_flat_map(|zones| {
        prop::collection::vec((0..zones, prop::collection::vec(weight(), 1..=4)), 1..=40)
    })
}

fn devices(layout: &Layout) -> Vec<Device> {
    let mut out = Vec::new();
    for (n, (zone, weights)) in layout.iter().enumerate() {
        let node = n as u64 + 1;
        for (i, &weight) in weights.iter().enumerate() {
            let id = node * 1000 + i as u64;
            out.push(Device {
                id,
                node,
                zone: format!("zone-{zone}"),
                weight,
            });
        }
    }
    out
}

fn spec_from(layout: &Layout, replicas: u8, part_power: u8) -> RingSpec {
    RingSpec {
        version: 3,
        part_power,
        replicas,
        devices: devices(layout),
    }
}

/// Builds the ring, or None when every disk happened to be drained.
fn build(spec: RingSpec) -> Option<Ring> {
    match Ring::new(spec) {
        Ok(r) => Some(r),
        Err(PlacementError::NoWeightedDevices) => None,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

fn distinct<T: Ord>(items: impl Iterator<Item = T>) -> usize {
    items.collect::<BTreeSet<_>>().len()
}

fn check_partition(ring: &Ring, part: u32, eligible: &[&Device]) -> Result<(), TestCaseError> {
    let reps = ring.replicas(part);
    let want = usize::from(ring.spec().replicas).min(eligible.len());
    prop_assert_eq!(reps.len(), want);
    let devs: Vec<&Device> = reps.iter().map(|&d| ring.device(d).unwrap()).collect();
    prop_assert!(devs.iter().all(|d| d.weight > 0.0));
    prop_assert_eq!(distinct(reps.iter()), reps.len(), "a disk holds two copies");
    let nodes = distinct(eligible.iter().map(|d| d.node));
    let zones = distinct(eligible.iter().map(|d| d.zone.as_str()));
    // No two copies on one node while there are enough nodes; otherwise as
    // many nodes as there are.
    prop_assert_eq!(distinct(devs.iter().map(|d| d.node)), want.min(nodes));
    prop_assert_eq!(
        distinct(devs.iter().map(|d| d.zone.as_str())),
        want.min(zones)
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn replicas_respect_failure_domains(layout in layout(), replicas in 1u8..=3) {
        let Some(ring) = build(spec_from(&layout, replicas, 7)) else { return Ok(()) };
        let eligible: Vec<&Device> =
            ring.spec().devices.iter().filter(|d| d.weight > 0.0).collect();
        for part in 0..ring.partition_count() {
            check_partition(&ring, part, &eligible)?;
        }
        // Replicas plus handoffs list every weighted disk exactly once.
        for part in [0, ring.partition_count() - 1] {
            let mut all: Vec<u64> = ring.replicas(part).to_vec();
            all.extend(ring.handoffs(part));
            let want: BTreeSet<u64> = eligible.iter().map(|d| d.id).collect();
            prop_assert_eq!(all.len(), want.len());
            prop_assert_eq!(all.into_iter().collect::<BTreeSet<_>>(), want);
        }
    }

    #[test]
    fn same_spec_gives_same_table(layout in layout(), replicas in 1u8..=3) {
        let spec = spec_from(&layout, replicas, 8);
        let mut shuffled = spec.clone();
        shuffled.devices.reverse();
        let (Some(a), Some(b), Some(c)) =
            (build(spec.clone()), build(spec), build(shuffled)) else { return Ok(()) };
        for part in 0..a.partition_count() {
            prop_assert_eq!(a.replicas(part), b.replicas(part));
            // Listing order of devices does not matter either.
            prop_assert_eq!(a.replicas(part), c.replicas(part));
        }
        prop_assert_eq!(moved_fraction(&a, &b), 0.0);
    }

    #[test]
    fn spec_roundtrips_through_serde(layout in layout(), replicas in 1u8..=3) {
        let spec = spec_from(&layout, replicas, 6);
        let bytes = bincode::serialize(&spec).unwrap();
        let back: RingSpec = bincode::deserialize(&bytes).unwrap();
        prop_assert_eq!(&back, &spec);
        if let (Some(a), Some(b)) = (build(spec), build(back)) {
            for part in 0..a.partition_count() {
                prop_assert_eq!(a.replicas(part), b.replicas(part));
            }
        }
    }

    #[test]
    fn arbitrary_specs_never_panic(
        // Valid powers kept small so each case builds fast.
        part_power in prop_oneof![0u8..=10, 21u8..=255],
        replicas in any::<u8>(),
        devs in prop::collection::vec((0u64..8, 0u64..4, 0u8..3, any::<f64>()), 0..8),
    ) {
        let devices = devs
            .into_iter()
            .map(|(id, node, zone, weight)| Device { id, node, zone: zone.to_string(), weight })
            .collect();
        let spec = RingSpec { version: 0, part_power, replicas, devices };
        if let Ok(ring) = Ring::new(spec) {
            let part = ring.partition_of(b"key");
            prop_assert!(part < ring.partition_count());
            prop_assert!(!ring.replicas(part).is_empty());
        }
    }
}
