//! Records of the object model and their encodings. Records that live in the
//! data plane are bincode with a leading version byte; those in the meta group
//! are JSON (small, and readable in `strata admin` dumps).

use crate::{ObjectError, Result};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::BTreeMap;
use strata_types::{ChunkId, Timestamp};

const BIN_FORMAT_V1: u8 = 1;

/// Account metadata (`X-Account-Meta-*`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AccountInfo {
    pub meta: BTreeMap<String, String>,
}

/// A container record in the meta group.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerInfo {
    pub created: Timestamp,
    /// `X-Container-Meta-*` (names lower-cased, without the prefix).
    pub meta: BTreeMap<String, String>,
    /// Other stored container headers (ACLs), full lower-case names.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// When the record last changed (PUT over it or POST); None: never since creation.
    #[serde(default)]
    pub modified: Option<Timestamp>,
    /// Its listing rows count in a tally group (object count and bytes used are one tally
    /// read); false for containers created before tallies, which are counted by a scan.
    #[serde(default)]
    pub tallied: bool,
}

impl ContainerInfo {
    /// Last change of the container record.
    pub fn last_modified(&self) -> Timestamp {
        self.modified.unwrap_or(self.created)
    }
}

/// An object record: what GET and HEAD answer, and where its bytes are.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjectInfo {
    pub size: u64,
    pub etag: String,
    pub content_type: String,
    pub timestamp: Timestamp,
    pub meta: BTreeMap<String, String>,
    pub headers: BTreeMap<String, String>,
    /// Chunk ids and lengths, in body order.
    pub chunks: Vec<(ChunkId, u64)>,
}

impl ObjectInfo {
    /// `X-Delete-At`, in Unix seconds.
    pub fn delete_at(&self) -> Option<u64> {
        self.headers.get("x-delete-at").and_then(|v| v.parse().ok())
    }
}

/// A container listing row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListingEntry {
    pub size: u64,
    pub etag: String,
    pub content_type: String,
    pub timestamp: Timestamp,
}

pub(crate) fn encode_bin<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = vec![BIN_FORMAT_V1];
    // Serialising plain structs into a Vec cannot fail.
    out.extend(bincode::serialize(v).unwrap_or_default());
    out
}

pub(crate) fn decode_bin<T: DeserializeOwned>(b: &[u8]) -> Result<T> {
    match b.split_first() {
        Some((&BIN_FORMAT_V1, rest)) => {
            bincode::deserialize(rest).map_err(|e| ObjectError::Codec(e.to_string()))
        }
        Some((v, _)) => Err(ObjectError::Codec(format!("unknown record format {v}"))),
        None => Err(ObjectError::Codec("empty record".into())),
    }
}

pub(crate) fn encode_json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

pub(crate) fn decode_json<T: DeserializeOwned>(b: &[u8]) -> Result<T> {
    serde_json::from_slice(b).map_err(|e| ObjectError::Codec(e.to_string()))
}
