//! The placement ring: 2^P partitions, each mapped to N replica disks spread
//! over failure domains (zone, node, disk) in proportion to weight.
//!
//! Pure: no I/O, no clocks, no randomness beyond hashing. It must not know how
//! nodes talk or what is stored.

mod hash;
mod ring;
mod select;
mod spec;

pub use ring::{moved_fraction, Ring};
pub use spec::{Device, PlacementError, RingSpec, PART_POWER_MAX, PART_POWER_MIN, REPLICAS_MAX};
