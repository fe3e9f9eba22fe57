//! Generated prost/tonic code for node-to-node messages (`proto/strata.proto`).
//!
//! Owns the wire shape only. It must not know what the bytes inside a Raft
//! frame mean or how a record's value is laid out: the meta and data crates do.

#![allow(clippy::all)] // generated code is not ours to lint

pub mod v1 {
    tonic::include_proto!("strata.v1");
}
