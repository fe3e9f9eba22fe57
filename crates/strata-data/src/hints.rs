//! Hinted handoff: a replica that missed a write (or was found stale by a
//! read) is remembered in a hint on the coordinator's own disk, and a
//! background task pushes the current copy to it once it answers again.
//!
//! Hint keys are `h/` + target disk (u64 BE) + the hinted item, so repeated
//! misses of one item collapse into one hint.

use crate::{DataError, DataPlane, Replica};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use strata_disk::Record;
use strata_proto::v1 as pb;
use strata_types::{ChunkId, DiskId};

const HINT_PREFIX: &[u8] = b"h/";
const HINT_PREFIX_END: &[u8] = b"h0";
/// Hints replayed per round, so one round never holds much memory.
const HINTS_PER_ROUND_MAX: usize = 512;

/// What a replica is missing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HintItem {
    Chunk(ChunkId),
    Record(Vec<u8>),
}

/// A repair owed to one replica of `placement_key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hint {
    pub placement_key: Vec<u8>,
    pub item: HintItem,
}

impl Hint {
    pub fn chunk(placement_key: &[u8], id: ChunkId) -> Self {
        Hint {
            placement_key: placement_key.to_vec(),
            item: HintItem::Chunk(id),
        }
    }
    pub fn record(placement_key: &[u8], key: &[u8]) -> Self {
        Hint {
            placement_key: placement_key.to_vec(),
            item: HintItem::Record(key.to_vec()),
        }
    }

    fn key(&self, target: DiskId) -> Vec<u8> {
        let mut k = HINT_PREFIX.to_vec();
        k.extend_from_slice(&target.to_be_bytes());
        match &self.item {
            HintItem::Chunk(id) => {
                k.push(b'c');
                k.extend_from_slice(&id.0);
            }
            HintItem::Record(key) => {
                k.push(b'r');
                k.extend_from_slice(&(self.placement_key.len() as u32).to_be_bytes());
                k.extend_from_slice(&self.placement_key);
                k.extend_from_slice(key);
            }
        }
        k
    }
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn target_of(key: &[u8]) -> Option<DiskId> {
    let b = key.get(HINT_PREFIX.len()..HINT_PREFIX.len() + 8)?;
    Some(u64::from_be_bytes(b.try_into().ok()?))
}

impl DataPlane {
    /// Remember that `target` misses `hint`'s item.
    pub(crate) async fn add_hint(&self, target: DiskId, hint: Hint) {
        let Some(disk) = self.disks.values().next() else {
            return;
        };
        let value = match bincode::serialize(&hint) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode hint");
                return;
            }
        };
        let rec = Record::live(now_micros(), value);
        if let Err(e) = disk.put_record(&hint.key(target), rec).await {
            tracing::error!(error = %e, target, "cannot store hint");
        }
    }

    /// Hints waiting on this node (bounded count, for status).
    pub fn pending_hints(&self) -> u64 {
        let Some(disk) = self.disks.values().next() else {
            return 0;
        };
        disk.scan_records(HINT_PREFIX, Some(HINT_PREFIX_END), 100_000)
            .map(|v| v.len() as u64)
            .unwrap_or(0)
    }

    /// This node's disks and hints, as the `NodeStatus` rpc reports them.
    pub fn local_status(&self) -> pb::NodeStatusResponse {
        let disks = self
            .disks
            .iter()
            .map(|(id, d)| {
                let u = d.usage();
                pb::DiskStatus {
                    disk_id: *id,
                    path: d.data_path().display().to_string(),
                    capacity_bytes: u.capacity_bytes,
                    used_bytes: u.used_bytes,
                    chunks: u.chunks,
                    io_backend: u.io_backend.to_string(),
                    relocated_bytes: d.commit_stats().relocated_blocks
                        * strata_disk::BLOCK_BYTES as u64,
                    straighten_pending_bytes: d.straighten_pending_bytes(),
                }
            })
            .collect();
        pb::NodeStatusResponse {
            node_id: self.cfg.node_id,
            disks,
            pending_hints: self.pending_hints(),
        }
    }

    /// Status of another node (or this one) for the admin view.
    pub async fn node_status(
        &self,
        node: strata_types::NodeId,
    ) -> crate::Result<pb::NodeStatusResponse> {
        if node == self.cfg.node_id {
            return Ok(self.local_status());
        }
        self.peers.node_status(node).await
    }

    /// Start the background hint replayer.
    pub fn spawn_hint_replayer(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let period = Duration::from_millis(me.cfg.hint_interval_ms.max(50));
            loop {
                tokio::time::sleep(period).await;
                me.replay_hints_once().await;
            }
        })
    }

    /// One round of replay. Returns how many hints were settled.
    pub async fn replay_hints_once(self: &Arc<Self>) -> usize {
        let Some(disk) = self.disks.values().next().cloned() else {
            return 0;
        };
        let hints = match disk.scan_records(HINT_PREFIX, Some(HINT_PREFIX_END), HINTS_PER_ROUND_MAX)
        {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read hints");
                return 0;
            }
        };
        let mut unreachable: HashSet<DiskId> = HashSet::new();
        let mut settled = 0;
        for (key, rec) in hints {
            let Some(target) = target_of(&key) else {
                continue;
            };
            if unreachable.contains(&target) {
                continue;
            }
            let Some(value) = rec.value else { continue };
            let hint: Hint = match bincode::deserialize(&value) {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(error = %e, "dropping undecodable hint");
                    let _ = disk.remove_record(&key).await;
                    continue;
                }
            };
            match self.replay(target, &hint).await {
                Ok(()) => {
                    // A newer miss of the same item may have rewritten the hint meanwhile.
                    if disk.get_record(&key).ok().flatten().map(|r| r.timestamp)
                        == Some(rec.timestamp)
                    {
                        let _ = disk.remove_record(&key).await;
                    }
                    settled += 1;
                }
                Err(e) => {
                    tracing::debug!(target, error = %e, "hint replay deferred");
                    unreachable.insert(target);
                }
            }
        }
        if settled > 0 {
            tracing::info!(settled, "replayed hints");
        }
        settled
    }

    async fn replay(self: &Arc<Self>, target: DiskId, hint: &Hint) -> crate::Result<()> {
        let replicas = self.replicas(&hint.placement_key)?;
        let Some(dest) = replicas.iter().copied().find(|r| r.disk == target) else {
            // The ring moved the item away from this disk: nothing is owed to it.
            return Ok(());
        };
        let others: Vec<Replica> = replicas.into_iter().filter(|r| r.disk != target).collect();
        match &hint.item {
            HintItem::Chunk(id) => self.replay_chunk(dest, &others, *id).await,
            HintItem::Record(key) => self.replay_record(dest, &others, key).await,
        }
    }

    async fn replay_chunk(
        &self,
        dest: Replica,
        others: &[Replica],
        id: ChunkId,
    ) -> crate::Result<()> {
        let mut absent_everywhere = true;
        for r in others {
            match self.replica_get_chunk(*r, id).await {
                Ok(Some(data)) => return self.replica_put_chunk(dest, id, data).await,
                Ok(None) => {}
                Err(_) => absent_everywhere = false,
            }
        }
        if absent_everywhere {
            // Every other replica answered that the chunk is gone: it was deleted.
            return self.replica_delete_chunk(dest, id).await;
        }
        Err(DataError::ChunkUnavailable { chunk: id })
    }

    async fn replay_record(
        &self,
        dest: Replica,
        others: &[Replica],
        key: &[u8],
    ) -> crate::Result<()> {
        let mut newest: Option<Record> = None;
        let mut answered = 0;
        for r in others {
            if let Ok(rec) = self.replica_get_record(*r, key).await {
                answered += 1;
                if let Some(rec) = rec {
                    if newest.as_ref().is_none_or(|n| rec.timestamp > n.timestamp) {
                        newest = Some(rec);
                    }
                }
            }
        }
        match newest {
            Some(rec) => self.replica_put_record(dest, key, rec).await,
            None if answered > 0 => Ok(()),
            None => Err(DataError::ReadQuorum {
                answered: 0,
                needed: 1,
            }),
        }
    }
}
