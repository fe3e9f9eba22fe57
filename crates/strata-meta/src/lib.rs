//! The cluster's metadata: one openraft group whose log and state machine live
//! in rocksdb. It holds the cluster map (nodes, disks, the versioned ring),
//! identities, and account and container records, as tables of a small
//! transactional key-value state machine.
//!
//! Owns consensus and linearizability. It must not know what the values in its
//! tables mean: the identity, object and cluster code above it encode them.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

mod network;
mod node;
mod service;
mod store;

pub use network::MembershipRequest;
pub use node::Meta;
use std::path::PathBuf;
use strata_types::NodeId;

/// One mutation of the state machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Put {
        table: String,
        key: String,
        value: Vec<u8>,
    },
    Delete {
        table: String,
        key: String,
    },
}

/// A precondition checked atomically with the ops of a [`Txn`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Check {
    Absent {
        table: String,
        key: String,
    },
    Present {
        table: String,
        key: String,
    },
    Equals {
        table: String,
        key: String,
        value: Vec<u8>,
    },
}

/// Checks and ops applied atomically: the ops apply only if every check holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    pub checks: Vec<Check>,
    pub ops: Vec<Op>,
}

/// What a committed [`Txn`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnOutcome {
    /// False when a check failed and no op was applied.
    pub succeeded: bool,
    /// Raft log index of the entry.
    pub log_index: u64,
}

/// How the meta group of one node is configured.
#[derive(Debug, Clone)]
pub struct MetaConfig {
    pub node_id: NodeId,
    /// Directory of the rocksdb holding the Raft log and the state machine.
    pub dir: PathBuf,
    /// The initial voters, this node included: node id to rpc address (`host:port`).
    pub voters: BTreeMap<NodeId, String>,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
}

/// A snapshot of the group as this node sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetaStatus {
    pub node_id: NodeId,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    pub voters: Vec<NodeId>,
}

/// Errors of the meta group.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("no leader is known for the meta group")]
    NoLeader,
    #[error("meta group did not answer within {timeout_ms} ms")]
    Timeout { timeout_ms: u64 },
    #[error("raft: {0}")]
    Raft(String),
    #[error("rpc to node {node}: {message}")]
    Rpc { node: NodeId, message: String },
    #[error("storage: {0}")]
    Storage(String),
    #[error("codec: {0}")]
    Codec(String),
}

pub type Result<T> = std::result::Result<T, MetaError>;

/// The table-level view of the meta group that the crates above it use, so
/// they can run on [`MemMeta`] in unit tests and on the Raft group for real.
pub trait MetaStore: Send + Sync + 'static {
    /// Commit a transaction. Returns once it is applied on this node, so a
    /// read here right after sees it.
    fn write(&self, txn: Txn) -> futures::future::BoxFuture<'_, Result<TxnOutcome>>;
    /// Linearizable read of one key.
    fn get<'a>(
        &'a self,
        table: &'a str,
        key: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Option<Vec<u8>>>>;
    /// Linearizable scan of keys in `table` that start with `prefix` and sort
    /// after `start_after` (if given), in key order, at most `limit` of them.
    #[allow(clippy::type_complexity)]
    fn scan<'a>(
        &'a self,
        table: &'a str,
        prefix: &'a str,
        start_after: Option<&'a str>,
        limit: usize,
    ) -> futures::future::BoxFuture<'a, Result<Vec<(String, Vec<u8>)>>>;
    /// Read of this node's applied state: cheap, possibly behind the leader.
    fn get_local(&self, table: &str, key: &str) -> Option<Vec<u8>>;
    /// Scan of this node's applied state (see [`MetaStore::scan`]).
    fn scan_local(
        &self,
        table: &str,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Vec<(String, Vec<u8>)>;
}

/// Apply a transaction to an ordered map of `(table, key) -> value`. The one
/// definition of transaction semantics, shared by the Raft state machine and
/// [`MemMeta`].
pub fn apply_txn(state: &mut BTreeMap<(String, String), Vec<u8>>, txn: &Txn) -> bool {
    let holds = txn.checks.iter().all(|c| match c {
        Check::Absent { table, key } => !state.contains_key(&(table.clone(), key.clone())),
        Check::Present { table, key } => state.contains_key(&(table.clone(), key.clone())),
        Check::Equals { table, key, value } => {
            state.get(&(table.clone(), key.clone())) == Some(value)
        }
    });
    if !holds {
        return false;
    }
    for op in &txn.ops {
        match op {
            Op::Put { table, key, value } => {
                state.insert((table.clone(), key.clone()), value.clone());
            }
            Op::Delete { table, key } => {
                state.remove(&(table.clone(), key.clone()));
            }
        }
    }
    true
}

/// Scan an ordered map the way [`MetaStore::scan`] defines it.
pub fn scan_map(
    state: &BTreeMap<(String, String), Vec<u8>>,
    table: &str,
    prefix: &str,
    start_after: Option<&str>,
    limit: usize,
) -> Vec<(String, Vec<u8>)> {
    use std::ops::Bound;
    let lower = match start_after {
        Some(s) if s >= prefix => Bound::Excluded((table.to_string(), s.to_string())),
        _ => Bound::Included((table.to_string(), prefix.to_string())),
    };
    state
        .range((lower, Bound::Unbounded))
        .take_while(|((t, k), _)| t == table && k.starts_with(prefix))
        .take(limit)
        .map(|((_, k), v)| (k.clone(), v.clone()))
        .collect()
}

/// An in-memory, single-process [`MetaStore`] for unit tests of the crates above.
#[derive(Debug, Default)]
pub struct MemMeta {
    state: std::sync::Mutex<BTreeMap<(String, String), Vec<u8>>>,
    index: std::sync::atomic::AtomicU64,
}

impl MemMeta {
    pub fn new() -> Self {
        Self::default()
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), Vec<u8>>> {
        // A panic while holding the lock cannot leave the map half-updated:
        // apply_txn checks before it mutates.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl MetaStore for MemMeta {
    fn write(&self, txn: Txn) -> futures::future::BoxFuture<'_, Result<TxnOutcome>> {
        let succeeded = apply_txn(&mut self.lock(), &txn);
        let log_index = self.index.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        Box::pin(async move {
            Ok(TxnOutcome {
                succeeded,
                log_index,
            })
        })
    }
    fn get<'a>(
        &'a self,
        table: &'a str,
        key: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Option<Vec<u8>>>> {
        let v = self.get_local(table, key);
        Box::pin(async move { Ok(v) })
    }
    fn scan<'a>(
        &'a self,
        table: &'a str,
        prefix: &'a str,
        start_after: Option<&'a str>,
        limit: usize,
    ) -> futures::future::BoxFuture<'a, Result<Vec<(String, Vec<u8>)>>> {
        let v = self.scan_local(table, prefix, start_after, limit);
        Box::pin(async move { Ok(v) })
    }
    fn get_local(&self, table: &str, key: &str) -> Option<Vec<u8>> {
        self.lock()
            .get(&(table.to_string(), key.to_string()))
            .cloned()
    }
    fn scan_local(
        &self,
        table: &str,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Vec<(String, Vec<u8>)> {
        scan_map(&self.lock(), table, prefix, start_after, limit)
    }
}

#[cfg(test)]
mod txn_tests {
    use super::*;

    fn put(t: &str, k: &str, v: &[u8]) -> Op {
        Op::Put {
            table: t.into(),
            key: k.into(),
            value: v.to_vec(),
        }
    }

    #[test]
    fn failed_check_applies_nothing() {
        let mut s = BTreeMap::new();
        let txn = Txn {
            checks: vec![Check::Present {
                table: "t".into(),
                key: "missing".into(),
            }],
            ops: vec![put("t", "a", b"1")],
        };
        assert!(!apply_txn(&mut s, &txn));
        assert!(s.is_empty());
    }

    #[test]
    fn scan_respects_prefix_marker_and_limit() {
        let mut s = BTreeMap::new();
        let ops = ["a/1", "a/2", "a/3", "b/1"]
            .iter()
            .map(|k| put("t", k, b"x"))
            .collect();
        assert!(apply_txn(
            &mut s,
            &Txn {
                checks: vec![],
                ops
            }
        ));
        let keys = |v: Vec<(String, Vec<u8>)>| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(
            keys(scan_map(&s, "t", "a/", None, 10)),
            ["a/1", "a/2", "a/3"]
        );
        assert_eq!(keys(scan_map(&s, "t", "a/", Some("a/1"), 1)), ["a/2"]);
        assert_eq!(keys(scan_map(&s, "t", "", Some("a/3"), 10)), ["b/1"]);
        assert!(scan_map(&s, "u", "", None, 10).is_empty());
    }
}
