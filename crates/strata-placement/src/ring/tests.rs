use super::*;
use std::collections::HashMap;

fn dev(id: DiskId, node: NodeId, zone: &str, weight: f64) -> Device {
    Device {
        id,
        node,
        zone: zone.into(),
        weight,
    }
}

fn ring(part_power: u8, replicas: u8, devices: Vec<Device>) -> Ring {
    Ring::new(RingSpec {
        version: 1,
        part_power,
        replicas,
        devices,
    })
    .unwrap()
}

/// `n` nodes with one disk each, all in one zone.
fn flat(n: u64, weight: f64) -> Vec<Device> {
    (1..=n).map(|i| dev(i * 1000, i, "z", weight)).collect()
}

/// `n` nodes with one disk each, dealt round-robin over `zones` zones.
fn zoned(n: u64, zones: u64) -> Vec<Device> {
    (1..=n)
        .map(|i| dev(i * 1000, i, &format!("z{}", i % zones), 1.0))
        .collect()
}

/// Partition replicas held by each disk.
fn shares(r: &Ring) -> HashMap<DiskId, u64> {
    let mut counts = HashMap::new();
    for p in 0..r.partition_count() {
        for &d in r.replicas(p) {
            *counts.entry(d).or_insert(0) += 1;
        }
    }
    counts
}

fn set(r: &Ring, part: u32) -> BTreeSet<DiskId> {
    r.replicas(part).iter().copied().collect()
}

#[test]
fn adding_an_eleventh_node_moves_about_one_eleventh() {
    let before = ring(14, 3, flat(10, 1.0));
    let after = ring(14, 3, flat(11, 1.0));
    let moved = moved_fraction(&before, &after);
    println!(
        "add 11th of 11 equal nodes: moved_fraction = {moved:.4} (ideal {:.4})",
        1.0 / 11.0
    );
    assert!((0.07..=0.13).contains(&moved), "moved {moved}");
    // Everything that moved went to the new disk.
    for p in 0..after.partition_count() {
        let gained: Vec<_> = set(&after, p)
            .difference(&set(&before, p))
            .copied()
            .collect();
        assert!(
            gained.is_empty() || gained == [11_000],
            "part {p}: {gained:?}"
        );
    }
}

#[test]
fn adding_a_node_across_zones_moves_little() {
    let before = ring(14, 3, zoned(10, 3));
    let after = ring(14, 3, zoned(11, 3));
    let moved = moved_fraction(&before, &after);
    println!("add 11th node, 3 zones: moved_fraction = {moved:.4}");
    assert!((0.07..=0.13).contains(&moved), "moved {moved}");
}

#[test]
fn removing_one_node_of_eleven_moves_about_one_eleventh() {
    let before = ring(14, 3, flat(11, 1.0));
    let mut devices = flat(11, 1.0);
    devices.remove(4);
    let after = ring(14, 3, devices);
    let moved = moved_fraction(&before, &after);
    println!("remove 1 of 11 equal nodes: moved_fraction = {moved:.4}");
    assert!((0.07..=0.13).contains(&moved), "moved {moved}");
    // Only the removed disk's replicas moved.
    for p in 0..before.partition_count() {
        let lost: Vec<_> = set(&before, p)
            .difference(&set(&after, p))
            .copied()
            .collect();
        assert!(lost.is_empty() || lost == [5_000], "part {p}: {lost:?}");
    }
}

#[test]
fn draining_a_device_moves_only_its_replicas() {
    let before = ring(12, 3, flat(8, 1.0));
    let mut devices = flat(8, 1.0);
    devices[2].weight = 0.0;
    let after = ring(12, 3, devices);
    assert!(!shares(&after).contains_key(&3_000));
    assert!(after.device(3_000).is_some());
    for p in 0..before.partition_count() {
        let lost: Vec<_> = set(&before, p)
            .difference(&set(&after, p))
            .copied()
            .collect();
        assert!(lost.is_empty() || lost == [3_000], "part {p}: {lost:?}");
    }
}

/// Doubling device `x`'s weight must only move replicas onto `x`.
fn assert_reweight_moves_only_onto(devices: Vec<Device>, x: DiskId) {
    let before = ring(13, 3, devices.clone());
    let heavier = devices
        .into_iter()
        .map(|d| {
            if d.id == x {
                Device {
                    weight: d.weight * 2.0,
                    ..d
                }
            } else {
                d
            }
        })
        .collect();
    let after = ring(13, 3, heavier);
    let mut changed = 0;
    for p in 0..before.partition_count() {
        let (b, a) = (set(&before, p), set(&after, p));
        let gained: Vec<_> = a.difference(&b).copied().collect();
        assert!(
            gained.is_empty() || gained == [x],
            "part {p}: gained {gained:?}"
        );
        changed += usize::from(!gained.is_empty());
    }
    assert!(changed > 0);
    assert!(moved_fraction(&before, &after) < 0.2);
}

#[test]
fn doubling_a_weight_moves_data_only_to_that_device() {
    assert_reweight_moves_only_onto(flat(10, 1.0), 4_000);
    // One zone per replica: zone choice is forced, so the rule holds too.
    assert_reweight_moves_only_onto(zoned(12, 3), 4_000);
}

/// Asserts every disk's share is within `tol` of `expected(weight)`.
fn assert_balanced(r: &Ring, tol: f64) {
    let counts = shares(r);
    let total: u64 = counts.values().sum();
    let weight_sum: f64 = r.spec().devices.iter().map(|d| d.weight).sum();
    for d in &r.spec().devices {
        let expected = total as f64 * d.weight / weight_sum;
        let got = counts.get(&d.id).copied().unwrap_or(0) as f64;
        let dev = (got - expected).abs() / expected;
        assert!(
            dev <= tol,
            "disk {} weight {}: {got} vs {expected:.0}",
            d.id,
            d.weight
        );
    }
}

#[test]
fn equal_weights_share_equally() {
    assert_balanced(&ring(14, 3, flat(10, 1.0)), 0.10);
    assert_balanced(&ring(14, 3, zoned(12, 3)), 0.10);
    // Several disks per node, several nodes per zone.
    let devs = (0..24)
        .map(|i| dev(i, i / 2, &format!("z{}", i / 8), 1.0))
        .collect();
    assert_balanced(&ring(14, 3, devs), 0.10);
}

#[test]
fn shares_follow_weights() {
    // Alternating weights 1 and 2 spread over three zones.
    let devs: Vec<_> = (0..18)
        .map(|i| {
            dev(
                i,
                i,
                &format!("z{}", i % 3),
                if i % 2 == 0 { 1.0 } else { 2.0 },
            )
        })
        .collect();
    let r = ring(14, 3, devs);
    assert_balanced(&r, 0.10);
    // One zone with more disks than copies: several picks from one weighted
    // pool pull heavy disks' shares slightly towards the mean.
    let devs: Vec<_> = (0..20)
        .map(|i| dev(i, i, "z", if i % 2 == 0 { 1.0 } else { 2.0 }))
        .collect();
    let r = ring(14, 3, devs);
    let counts = shares(&r);
    let light: u64 = (0..20).step_by(2).map(|i| counts[&i]).sum();
    let heavy: u64 = (1..20).step_by(2).map(|i| counts[&i]).sum();
    let ratio = heavy as f64 / light as f64;
    println!("weights 1:2 in one zone, 3 of 20: share ratio {ratio:.3}");
    assert!((1.8..=2.2).contains(&ratio), "ratio {ratio}");
}

#[test]
fn builds_a_large_table_quickly() {
    let devs: Vec<_> = (0..120)
        .map(|i| dev(i, i / 3, &format!("z{}", i / 3 % 4), 1.0))
        .collect();
    let start = std::time::Instant::now();
    let r = ring(16, 3, devs);
    let took = start.elapsed();
    println!("2^16 partitions x 3 over 120 disks: {took:?}");
    assert_eq!(r.replicas(65_535).len(), 3);
    assert!(took.as_secs() < 10);
}

#[test]
fn partition_of_takes_top_bits_of_blake3() {
    let r = ring(10, 1, flat(3, 1.0));
    for key in [&b""[..], b"a", b"bucket/object"] {
        let h = blake3::hash(key);
        let top = u64::from_be_bytes(h.as_bytes()[..8].try_into().unwrap());
        assert_eq!(r.partition_of(key), (top >> 54) as u32);
        assert_eq!(r.replicas_for_key(key), r.replicas(r.partition_of(key)));
    }
}

#[test]
fn part_power_one_and_twenty_keep_keys_in_range() {
    let r = ring(1, 2, flat(3, 1.0));
    assert_eq!(r.partition_count(), 2);
    assert!((0..1000u32).all(|k| r.partition_of(&k.to_be_bytes()) < 2));
}

#[test]
fn fewer_disks_than_replicas_uses_each_disk_once() {
    let r = ring(
        6,
        5,
        vec![
            dev(1, 1, "a", 1.0),
            dev(2, 1, "a", 1.0),
            dev(3, 2, "b", 0.0),
        ],
    );
    for p in 0..r.partition_count() {
        assert_eq!(set(&r, p), BTreeSet::from([1, 2]));
        assert!(r.handoffs(p).is_empty());
    }
}

#[test]
fn out_of_range_partitions_are_empty() {
    let r = ring(4, 3, flat(5, 1.0));
    assert!(r.replicas(16).is_empty());
    assert!(r.replicas(u32::MAX).is_empty());
    assert!(r.handoffs(16).is_empty());
}

#[test]
fn handoffs_continue_the_preference_order() {
    let r = ring(8, 3, zoned(9, 3));
    let two = ring(8, 2, zoned(9, 3));
    for p in 0..r.partition_count() {
        let hand = r.handoffs(p);
        assert_eq!(hand.len(), 6);
        assert!(hand.iter().all(|d| !r.replicas(p).contains(d)));
        // A ring with fewer copies prefers the same disks in the same order.
        assert_eq!(two.replicas(p), &r.replicas(p)[..2]);
        assert_eq!(two.handoffs(p)[0], r.replicas(p)[2]);
        assert_eq!(&two.handoffs(p)[1..], &hand[..]);
    }
}

#[test]
fn lookups_by_device() {
    let r = ring(
        4,
        2,
        vec![
            dev(7, 70, "a", 1.0),
            dev(8, 80, "b", 0.0),
            dev(9, 90, "b", 1.0),
        ],
    );
    assert_eq!(r.node_of(8), Some(80));
    assert_eq!(r.device(9).map(|d| d.zone.as_str()), Some("b"));
    assert_eq!(r.device(10), None);
    assert_eq!(r.node_of(10), None);
    assert_eq!(r.version(), 1);
    assert_eq!(r.spec().devices.len(), 3);
    assert!(format!("{r:?}").contains("part_power: 4"));
}

#[test]
fn bad_specs_are_errors() {
    let spec = RingSpec {
        version: 1,
        part_power: 30,
        replicas: 3,
        devices: flat(3, 1.0),
    };
    assert_eq!(
        Ring::new(spec).unwrap_err(),
        PlacementError::BadPartPower(30)
    );
    let spec = RingSpec {
        version: 1,
        part_power: 8,
        replicas: 3,
        devices: flat(3, f64::NAN),
    };
    assert!(matches!(
        Ring::new(spec),
        Err(PlacementError::BadWeight { .. })
    ));
}

#[test]
fn spec_roundtrips_through_json() {
    let spec = RingSpec {
        version: 9,
        part_power: 8,
        replicas: 3,
        devices: zoned(7, 2),
    };
    let json = serde_json::to_string(&spec).unwrap();
    let back: RingSpec = serde_json::from_str(&json).unwrap();
    assert_eq!(back, spec);
    let (a, b) = (Ring::new(spec).unwrap(), Ring::new(back).unwrap());
    assert_eq!(moved_fraction(&a, &b), 0.0);
}

#[test]
fn moved_fraction_compares_key_space_across_part_powers() {
    let coarse = ring(8, 3, flat(6, 1.0));
    assert_eq!(moved_fraction(&coarse, &coarse), 0.0);
    let fine = ring(9, 3, flat(6, 1.0));
    let m = moved_fraction(&coarse, &fine);
    assert!(m > 0.0 && m < 1.0);
}
