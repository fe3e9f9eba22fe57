//! Replicated chunk and record I/O across the cluster's disks.
//!
//! A coordinator on any node sends each write to the N replica disks that the
//! ring names for its placement key and acknowledges on a write quorum of
//! durable copies; reads take a read quorum (R = N - W + 1) and the newest
//! timestamp, or for chunks the first copy that passes its checksums. Failed
//! replica writes and stale replicas seen by reads become hints, replayed in
//! the background (hinted handoff with read repair).
//!
//! Owns replication. It must not know what records and chunks mean (objects,
//! listings, volumes): callers hand it placement keys, keys and bytes.

mod hints;
mod peer;
mod resync;
mod server;

pub use resync::LayerTracking;
pub use server::StorageService;

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use strata_disk::{BlockRead, Disk, DiskError, Record, TallyTotals};
use strata_placement::Ring;
use strata_types::{ChunkId, DiskId, NodeId};

pub use hints::Hint;

/// Errors of the replicated data plane.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("write reached {acked} of the {needed} replicas it needs")]
    Quorum { acked: usize, needed: usize },
    #[error("read reached {answered} of the {needed} replicas it needs")]
    ReadQuorum { answered: usize, needed: usize },
    #[error("chunk {chunk:?} is not readable on any replica")]
    ChunkUnavailable { chunk: ChunkId },
    #[error("no ring is loaded yet")]
    NoRing,
    #[error("disk: {0}")]
    Disk(#[from] DiskError),
    #[error("rpc to node {node}: {message}")]
    Rpc { node: NodeId, message: String },
    #[error("disk {disk} is not on this node")]
    UnknownDisk { disk: DiskId },
    #[error("node {node} has no space: {message}")]
    NoSpace { node: NodeId, message: String },
}

impl DataError {
    /// A disk refused the write for lack of space (before changing anything).
    pub fn is_no_space(&self) -> bool {
        matches!(
            self,
            DataError::Disk(DiskError::Full { .. }) | DataError::NoSpace { .. }
        )
    }
}

pub type Result<T> = std::result::Result<T, DataError>;

/// The ring and node addresses the data plane routes by.
#[derive(Clone)]
pub struct Topology {
    pub ring: Arc<Ring>,
    /// Node id to its rpc address (`host:port`).
    pub addrs: HashMap<NodeId, String>,
}

/// Tunables of the data plane.
#[derive(Debug, Clone)]
pub struct DataConfig {
    pub node_id: NodeId,
    /// Copies that must be durable before a write is acknowledged.
    pub write_quorum: usize,
    /// Deadline of one replica request.
    pub rpc_timeout_ms: u64,
    /// How often the hint replayer wakes up.
    pub hint_interval_ms: u64,
}

/// A replica of a placement key: the disk and the node that owns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replica {
    pub disk: DiskId,
    pub node: NodeId,
}

/// Replicated I/O for one node. Cheap to share (`Arc`).
pub struct DataPlane {
    cfg: DataConfig,
    disks: BTreeMap<DiskId, Arc<Disk>>,
    topology: RwLock<Option<Topology>>,
    peers: peer::Peers,
    resync: Arc<resync::Tracker>,
}

impl DataPlane {
    pub fn new(cfg: DataConfig, disks: BTreeMap<DiskId, Arc<Disk>>) -> Arc<Self> {
        let peers = peer::Peers::new(Duration::from_millis(cfg.rpc_timeout_ms));
        Arc::new(DataPlane {
            cfg,
            disks,
            topology: RwLock::new(None),
            peers,
            resync: Arc::default(),
        })
    }

    pub fn node_id(&self) -> NodeId {
        self.cfg.node_id
    }

    pub fn local_disks(&self) -> &BTreeMap<DiskId, Arc<Disk>> {
        &self.disks
    }

    /// Install a new ring and address book (on start and when the meta group changes them).
    pub fn set_topology(&self, topology: Topology) {
        for (node, addr) in &topology.addrs {
            self.peers.set_addr(*node, addr);
        }
        *self.topology.write().unwrap_or_else(|e| e.into_inner()) = Some(topology);
    }

    pub fn topology(&self) -> Option<Topology> {
        self.topology
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The replicas the ring names for a placement key, this node's first.
    pub fn placement(&self, placement_key: &[u8]) -> Result<Vec<Replica>> {
        self.replicas(placement_key)
    }

    fn replicas(&self, placement_key: &[u8]) -> Result<Vec<Replica>> {
        let topo = self.topology().ok_or(DataError::NoRing)?;
        let mut out: Vec<Replica> = topo
            .ring
            .replicas_for_key(placement_key)
            .iter()
            .filter_map(|d| topo.ring.node_of(*d).map(|node| Replica { disk: *d, node }))
            .collect();
        // Local copies first: they cost no network hop on reads.
        out.sort_by_key(|r| r.node != self.cfg.node_id);
        Ok(out)
    }

    /// Copies that must hold a write before it is acknowledged, of `replicas`.
    pub fn write_quorum(&self, replicas: usize) -> usize {
        self.cfg.write_quorum.clamp(1, replicas.max(1))
    }

    fn read_quorum(&self, replicas: usize) -> usize {
        (replicas + 1)
            .saturating_sub(self.write_quorum(replicas))
            .max(1)
    }

    fn local_disk(&self, disk: DiskId) -> Result<&Arc<Disk>> {
        self.disks.get(&disk).ok_or(DataError::UnknownDisk { disk })
    }

    // ---- single-replica operations: local disk or rpc ----

    async fn replica_put_chunk(&self, r: Replica, id: ChunkId, data: Bytes) -> Result<()> {
        if r.node == self.cfg.node_id {
            Ok(self.local_disk(r.disk)?.put_chunk(id, data).await?)
        } else {
            self.peers.put_chunk(r.node, r.disk, id, data).await
        }
    }

    async fn replica_get_chunk(&self, r: Replica, id: ChunkId) -> Result<Option<Bytes>> {
        if r.node == self.cfg.node_id {
            Ok(self.local_disk(r.disk)?.get_chunk(id).await?)
        } else {
            self.peers.get_chunk(r.node, r.disk, id).await
        }
    }

    async fn replica_delete_chunk(&self, r: Replica, id: ChunkId) -> Result<()> {
        if r.node == self.cfg.node_id {
            Ok(self.local_disk(r.disk)?.delete_chunk(id).await?)
        } else {
            self.peers.delete_chunk(r.node, r.disk, id).await
        }
    }

    async fn replica_put_record(&self, r: Replica, key: &[u8], rec: Record) -> Result<()> {
        if r.node == self.cfg.node_id {
            self.local_disk(r.disk)?.put_record(key, rec).await?;
            Ok(())
        } else {
            self.peers.put_record(r.node, r.disk, key, rec).await
        }
    }

    async fn replica_get_record(&self, r: Replica, key: &[u8]) -> Result<Option<Record>> {
        if r.node == self.cfg.node_id {
            Ok(self.local_disk(r.disk)?.get_record(key)?)
        } else {
            self.peers.get_record(r.node, r.disk, key).await
        }
    }

    async fn replica_scan(
        &self,
        r: Replica,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Record)>> {
        if r.node == self.cfg.node_id {
            Ok(self.local_disk(r.disk)?.scan_records(start, end, limit)?)
        } else {
            self.peers.scan(r.node, r.disk, start, end, limit).await
        }
    }

    async fn replica_tally(&self, r: Replica, group: &[u8]) -> Result<TallyTotals> {
        if r.node == self.cfg.node_id {
            Ok(self.local_disk(r.disk)?.tally(group)?)
        } else {
            self.peers.tally(r.node, r.disk, group).await
        }
    }

    // ---- volume blocks on one replica (the volume layer chooses replicas) ----

    /// Write 4 KiB blocks of a volume on one replica: block `blocks[i]` gets the `i`th 4 KiB
    /// of `data` (`blocks` strictly ascending, not necessarily adjacent); `Ok` means durable
    /// there.
    pub async fn replica_write_blocks(
        &self,
        r: Replica,
        volume: u64,
        blocks: &[u64],
        data: Bytes,
    ) -> Result<()> {
        self.replica_write_block_parts(r, volume, blocks, std::slice::from_ref(&data))
            .await
    }

    /// [`DataPlane::replica_write_blocks`] with the data in consecutive parts (each a whole
    /// number of blocks): a local disk writes block-aligned parts in place (else copies them
    /// once into its write buffer); a remote one gets them joined into one message.
    pub async fn replica_write_block_parts(
        &self,
        r: Replica,
        volume: u64,
        blocks: &[u64],
        parts: &[Bytes],
    ) -> Result<()> {
        if r.node == self.cfg.node_id {
            self.local_write_blocks(r.disk, volume, blocks, parts, true)
                .await
        } else {
            let data = match parts {
                [one] => one.clone(),
                _ => {
                    let mut joined =
                        bytes::BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
                    for p in parts {
                        joined.extend_from_slice(p);
                    }
                    joined.freeze()
                }
            };
            self.peers
                .write_blocks(r.node, r.disk, volume, blocks, data)
                .await
        }
    }

    /// Read verified blocks of a volume from one replica; holes read as zeroes.
    pub async fn replica_read_blocks(
        &self,
        r: Replica,
        volume: u64,
        first_block: u64,
        count: u64,
    ) -> Result<BlockRead> {
        if r.node == self.cfg.node_id {
            Ok(self
                .local_disk(r.disk)?
                .read_blocks(volume, first_block, count)
                .await?)
        } else {
            self.peers
                .read_blocks(r.node, r.disk, volume, first_block, count)
                .await
        }
    }

    /// Make blocks of a volume holes on one replica; `Ok` means durable there.
    pub async fn replica_trim_blocks(
        &self,
        r: Replica,
        volume: u64,
        first_block: u64,
        count: u64,
    ) -> Result<()> {
        if r.node == self.cfg.node_id {
            self.local_trim_blocks(r.disk, volume, first_block, count)
                .await
        } else {
            self.peers
                .trim_blocks(r.node, r.disk, volume, first_block, count)
                .await
        }
    }

    /// An ordinary block write to a disk of this node (seen by a resync of its layer).
    pub(crate) async fn local_write_blocks(
        &self,
        disk: DiskId,
        layer: u64,
        blocks: &[u64],
        parts: &[Bytes],
        synced: bool,
    ) -> Result<()> {
        let d = self.local_disk(disk)?;
        Ok(self
            .resync
            .write(d, disk, layer, blocks, parts, synced)
            .await?)
    }

    /// A block write to a disk of this node answered before it is durable (it survives this
    /// process crashing, not the machine): [`DataPlane::local_sync`] makes it durable.
    pub async fn local_write_block_parts_unsynced(
        &self,
        disk: DiskId,
        layer: u64,
        blocks: &[u64],
        parts: &[Bytes],
    ) -> Result<()> {
        self.local_write_blocks(disk, layer, blocks, parts, false)
            .await
    }

    /// Make every write to a disk of this node answered so far durable.
    pub async fn local_sync(&self, disk: DiskId) -> Result<()> {
        Ok(self.local_disk(disk)?.sync().await?)
    }

    /// An ordinary block trim on a disk of this node (seen by a resync of its layer).
    pub(crate) async fn local_trim_blocks(
        &self,
        disk: DiskId,
        layer: u64,
        first_block: u64,
        count: u64,
    ) -> Result<()> {
        let d = self.local_disk(disk)?;
        Ok(self.resync.trim(d, disk, layer, first_block, count).await?)
    }

    /// Start tracking ordinary writes to `layer` on local `disk` for a resync that copies
    /// the layer there: the copier writes straight to the disk under the tracking lock and
    /// skips the blocks ordinary writes changed.
    pub fn track_layer(&self, disk: DiskId, layer: u64) -> Result<(LayerTracking, Arc<Disk>)> {
        let d = self.local_disk(disk)?.clone();
        Ok((self.resync.start(disk, layer), d))
    }

    // ---- replicated operations ----

    /// Write a chunk to every replica of `placement_key`; Ok once a write
    /// quorum holds a durable copy. Replicas still in flight finish in the
    /// background and leave a hint if they fail.
    pub async fn put_chunk(
        self: &Arc<Self>,
        placement_key: &[u8],
        id: ChunkId,
        data: Bytes,
    ) -> Result<()> {
        let replicas = self.replicas(placement_key)?;
        let needed = self.write_quorum(replicas.len());
        let target = Hint::chunk(placement_key, id);
        let mut pending: FuturesUnordered<_> = replicas
            .iter()
            .map(|r| {
                let (me, r, data, hint) = (self.clone(), *r, data.clone(), target.clone());
                tokio::spawn(async move {
                    let res = me.replica_put_chunk(r, id, data).await;
                    if let Err(e) = &res {
                        tracing::warn!(node = r.node, disk = r.disk, error = %e, "chunk replica write failed");
                        me.add_hint(r.disk, hint).await;
                    }
                    res.is_ok()
                })
            })
            .collect();
        wait_quorum(&mut pending, needed).await
    }

    /// Read a chunk from the first replica that has a verified copy.
    pub async fn get_chunk(self: &Arc<Self>, placement_key: &[u8], id: ChunkId) -> Result<Bytes> {
        let replicas = self.replicas(placement_key)?;
        let mut missed = Vec::new();
        for r in &replicas {
            match self.replica_get_chunk(*r, id).await {
                Ok(Some(data)) => {
                    for m in missed {
                        self.add_hint(m, Hint::chunk(placement_key, id)).await;
                    }
                    return Ok(data);
                }
                Ok(None) => missed.push(r.disk),
                Err(e) => {
                    tracing::warn!(node = r.node, disk = r.disk, chunk = ?id, error = %e, "chunk read failed, trying next replica");
                    if matches!(e, DataError::Disk(DiskError::Corrupt { .. })) {
                        missed.push(r.disk);
                    }
                }
            }
        }
        Err(DataError::ChunkUnavailable { chunk: id })
    }

    /// Delete a chunk on every replica. Best effort beyond the quorum: a
    /// replica that misses the delete gets a hint.
    pub async fn delete_chunk(self: &Arc<Self>, placement_key: &[u8], id: ChunkId) -> Result<()> {
        let replicas = self.replicas(placement_key)?;
        let needed = self.write_quorum(replicas.len());
        let target = Hint::chunk(placement_key, id);
        let mut pending: FuturesUnordered<_> = replicas
            .iter()
            .map(|r| {
                let (me, r, hint) = (self.clone(), *r, target.clone());
                tokio::spawn(async move {
                    let res = me.replica_delete_chunk(r, id).await;
                    if res.is_err() {
                        me.add_hint(r.disk, hint).await;
                    }
                    res.is_ok()
                })
            })
            .collect();
        wait_quorum(&mut pending, needed).await
    }

    /// Write a last-writer-wins record to every replica; Ok on a write quorum.
    pub async fn put_record(
        self: &Arc<Self>,
        placement_key: &[u8],
        key: &[u8],
        rec: Record,
    ) -> Result<()> {
        let replicas = self.replicas(placement_key)?;
        let needed = self.write_quorum(replicas.len());
        let target = Hint::record(placement_key, key);
        let mut pending: FuturesUnordered<_> = replicas
            .iter()
            .map(|r| {
                let (me, r, key, rec, hint) =
                    (self.clone(), *r, key.to_vec(), rec.clone(), target.clone());
                tokio::spawn(async move {
                    let res = me.replica_put_record(r, &key, rec).await;
                    if let Err(e) = &res {
                        tracing::warn!(node = r.node, disk = r.disk, error = %e, "record replica write failed");
                        me.add_hint(r.disk, hint).await;
                    }
                    res.is_ok()
                })
            })
            .collect();
        wait_quorum(&mut pending, needed).await
    }

    /// Read a record from a read quorum and return the newest version
    /// (tombstones included, so callers can tell deleted from never written).
    pub async fn get_record(
        self: &Arc<Self>,
        placement_key: &[u8],
        key: &[u8],
    ) -> Result<Option<Record>> {
        let replicas = self.replicas(placement_key)?;
        let needed = self.read_quorum(replicas.len());
        let mut pending: FuturesUnordered<_> = replicas
            .iter()
            .map(|r| {
                let (me, r, key) = (self.clone(), *r, key.to_vec());
                async move { (r, me.replica_get_record(r, &key).await) }
            })
            .collect();
        let mut answers: Vec<(Replica, Option<Record>)> = Vec::new();
        while let Some((r, res)) = pending.next().await {
            match res {
                Ok(rec) => answers.push((r, rec)),
                Err(e) => tracing::debug!(node = r.node, error = %e, "record read failed"),
            }
            if answers.len() >= needed {
                break;
            }
        }
        if answers.len() < needed {
            return Err(DataError::ReadQuorum {
                answered: answers.len(),
                needed,
            });
        }
        let newest = answers
            .iter()
            .filter_map(|(_, rec)| rec.clone())
            .max_by_key(|rec| rec.timestamp);
        if let Some(n) = &newest {
            for (r, rec) in &answers {
                if rec.as_ref().map(|x| x.timestamp) != Some(n.timestamp) {
                    self.add_hint(r.disk, Hint::record(placement_key, key))
                        .await;
                }
            }
        }
        Ok(newest)
    }

    /// Scan records with `start <= key < end` over a read quorum, merged by
    /// timestamp. Tombstones are included. Returns at most `limit` keys, and
    /// whether more may follow the last one returned.
    pub async fn scan_records(
        self: &Arc<Self>,
        placement_key: &[u8],
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<(Vec<u8>, Record)>, bool)> {
        let replicas = self.replicas(placement_key)?;
        let needed = self.read_quorum(replicas.len());
        let mut pending: FuturesUnordered<_> = replicas
            .iter()
            .map(|r| {
                let me = self.clone();
                let (r, start, end) = (*r, start.to_vec(), end.map(|e| e.to_vec()));
                async move { (r, me.replica_scan(r, &start, end.as_deref(), limit).await) }
            })
            .collect();
        let mut answers: Vec<Vec<(Vec<u8>, Record)>> = Vec::new();
        while let Some((r, res)) = pending.next().await {
            match res {
                Ok(rows) => answers.push(rows),
                Err(e) => tracing::debug!(node = r.node, error = %e, "scan failed"),
            }
            if answers.len() >= needed {
                break;
            }
        }
        if answers.len() < needed {
            return Err(DataError::ReadQuorum {
                answered: answers.len(),
                needed,
            });
        }
        Ok(merge_scans(answers, limit))
    }

    /// A tally group's totals from a read quorum: the answer with the newest stamp (ties: the
    /// larger count). Exact where the replica saw every write of the group; a replica that
    /// missed some converges as hints repair it.
    pub async fn tally(
        self: &Arc<Self>,
        placement_key: &[u8],
        group: &[u8],
    ) -> Result<TallyTotals> {
        let replicas = self.replicas(placement_key)?;
        let needed = self.read_quorum(replicas.len());
        let mut pending: FuturesUnordered<_> = replicas
            .iter()
            .map(|r| {
                let (me, r, group) = (self.clone(), *r, group.to_vec());
                async move { (r, me.replica_tally(r, &group).await) }
            })
            .collect();
        let mut best: Option<TallyTotals> = None;
        let mut answered = 0;
        while let Some((r, res)) = pending.next().await {
            match res {
                Ok(t) => {
                    answered += 1;
                    if best.is_none_or(|b| (t.stamp, t.count) > (b.stamp, b.count)) {
                        best = Some(t);
                    }
                }
                Err(e) => tracing::debug!(node = r.node, error = %e, "tally read failed"),
            }
            if answered >= needed {
                break;
            }
        }
        match best {
            Some(t) if answered >= needed => Ok(t),
            _ => Err(DataError::ReadQuorum { answered, needed }),
        }
    }

    /// Every live (non-tombstone) record in `[start, end)`, paging through
    /// quorum scans, stopping after `limit` live rows.
    pub async fn scan_live(
        self: &Arc<Self>,
        placement_key: &[u8],
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        // A page holds what the caller asked for (a listing of 100 reads about 100 rows, not
        // a full page), up to 1000 rows; tombstones in it cost another page.
        let page_rows = limit.clamp(1, 1000);
        let mut out = Vec::new();
        let mut cursor = start.to_vec();
        loop {
            let (rows, more) = self
                .scan_records(placement_key, &cursor, end, page_rows)
                .await?;
            if let Some((last, _)) = rows.last() {
                cursor = next_key(last);
            }
            for (k, rec) in rows {
                if let Some(v) = rec.value {
                    out.push((k, v));
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
            if !more {
                return Ok(out);
            }
        }
    }
}

/// The smallest key greater than `key`.
pub fn next_key(key: &[u8]) -> Vec<u8> {
    let mut k = key.to_vec();
    k.push(0);
    k
}

/// Wait until `needed` replica tasks reported success, or until too few can.
async fn wait_quorum(
    pending: &mut FuturesUnordered<tokio::task::JoinHandle<bool>>,
    needed: usize,
) -> Result<()> {
    let total = pending.len();
    let (mut acked, mut failed) = (0, 0);
    while let Some(done) = pending.next().await {
        if matches!(done, Ok(true)) {
            acked += 1;
        } else {
            failed += 1;
        }
        if acked >= needed {
            return Ok(());
        }
        if total - failed < needed {
            break;
        }
    }
    Err(DataError::Quorum { acked, needed })
}

/// Merge the scans of several replicas: newest timestamp per key. Each replica
/// returned at most `limit` rows; past the smallest last key of a replica that
/// hit the limit, the merge could miss that replica's rows, so it stops there.
fn merge_scans(
    answers: Vec<Vec<(Vec<u8>, Record)>>,
    limit: usize,
) -> (Vec<(Vec<u8>, Record)>, bool) {
    let horizon: Option<Vec<u8>> = answers
        .iter()
        .filter(|rows| rows.len() >= limit)
        .filter_map(|rows| rows.last().map(|(k, _)| k.clone()))
        .min();
    let mut merged: BTreeMap<Vec<u8>, Record> = BTreeMap::new();
    for rows in answers {
        for (k, rec) in rows {
            if horizon.as_ref().is_some_and(|h| &k > h) {
                continue;
            }
            match merged.get(&k) {
                Some(have) if have.timestamp >= rec.timestamp => {}
                _ => {
                    merged.insert(k, rec);
                }
            }
        }
    }
    let more = horizon.is_some();
    (merged.into_iter().collect(), more)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ts: u64, v: Option<&str>) -> Record {
        Record {
            timestamp: ts,
            value: v.map(|s| s.as_bytes().to_vec()),
            tally: None,
        }
    }

    #[test]
    fn merge_takes_newest_and_keeps_tombstones() {
        let a = vec![
            (b"a".to_vec(), rec(1, Some("old"))),
            (b"b".to_vec(), rec(5, None)),
        ];
        let b = vec![
            (b"a".to_vec(), rec(2, Some("new"))),
            (b"b".to_vec(), rec(4, Some("x"))),
        ];
        let (rows, more) = merge_scans(vec![a, b], 10);
        assert!(!more);
        assert_eq!(
            rows,
            vec![
                (b"a".to_vec(), rec(2, Some("new"))),
                (b"b".to_vec(), rec(5, None))
            ]
        );
    }

    #[test]
    fn merge_stops_at_the_horizon_of_a_truncated_replica() {
        // Replica a was cut at "b" by the limit; it may hold "c" too, so the
        // merge must not claim to know anything past "b".
        let a = vec![
            (b"a".to_vec(), rec(1, Some("1"))),
            (b"b".to_vec(), rec(1, Some("1"))),
        ];
        let b = vec![
            (b"a".to_vec(), rec(1, Some("1"))),
            (b"d".to_vec(), rec(1, Some("1"))),
        ];
        let (rows, more) = merge_scans(vec![a, b], 2);
        assert!(more);
        assert_eq!(
            rows.iter().map(|(k, _)| k.as_slice()).collect::<Vec<_>>(),
            [b"a", b"b"]
        );
    }

    #[test]
    fn quorums_overlap() {
        for n in 1..=5usize {
            for w in 1..=n {
                let dp_r = (n + 1).saturating_sub(w).max(1);
                assert!(dp_r + w > n, "n={n} w={w}");
            }
        }
    }
}
