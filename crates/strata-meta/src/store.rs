//! The rocksdb-backed Raft log and state machine of the meta group.
//!
//! One rocksdb holds four column families:
//! - `logs`: log entries keyed by big-endian index, so key order is log order;
//! - `log_meta`: the vote, the last purged log id and the committed log id;
//! - `sm_data`: the applied `(table, key) -> value` state;
//! - `sm_meta`: last applied log id, last membership and the current snapshot.
//!
//! The applied state is also kept in memory (it is small) for reads; every
//! apply writes its data changes together with the new last-applied log id and
//! membership in one rocksdb write batch.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use rocksdb::{
    ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB,
};
use serde::{Deserialize, Serialize};
use strata_types::NodeId;
use tokio::sync::watch;

use crate::{apply_txn, MetaError, Txn, TxnOutcome};

openraft::declare_raft_types!(
    /// Openraft types of the meta group.
    pub TypeConfig:
        D = Txn,
        R = TxnOutcome,
        NodeId = NodeId,
        Node = BasicNode,
        Entry = Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

type StorageResult<T> = std::result::Result<T, StorageError<NodeId>>;

/// The applied state keyed by `(table, key)`.
pub(crate) type StateMap = BTreeMap<(String, String), Vec<u8>>;

const CF_LOGS: &str = "logs";
const CF_LOG_META: &str = "log_meta";
const CF_SM_DATA: &str = "sm_data";
const CF_SM_META: &str = "sm_meta";

const KEY_VOTE: &[u8] = b"vote";
const KEY_LAST_PURGED: &[u8] = b"last_purged";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_APPLIED: &[u8] = b"last_applied";
const KEY_LAST_MEMBERSHIP: &[u8] = b"last_membership";
const KEY_SNAPSHOT: &[u8] = b"snapshot";

/// The rocksdb of the meta group, and a flag raised once it is closed.
pub(crate) struct Db {
    // Declared before `_closed`: fields drop in order, so the flag is raised
    // only after rocksdb has released the directory.
    db: DB,
    _closed: ClosedFlag,
}

struct ClosedFlag(watch::Sender<bool>);

impl Drop for ClosedFlag {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

impl std::ops::Deref for Db {
    type Target = DB;
    fn deref(&self) -> &DB {
        &self.db
    }
}

/// Open (or create) the rocksdb of the meta group at `dir` and build its log
/// store and state machine, with the state machine restored from disk. The
/// receiver turns true once both are dropped and the rocksdb is closed.
pub(crate) fn open_store(
    dir: &Path,
) -> crate::Result<(LogStore, StateMachine, watch::Receiver<bool>)> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    let cfs = [CF_LOGS, CF_LOG_META, CF_SM_DATA, CF_SM_META]
        .into_iter()
        .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
    let db = DB::open_cf_descriptors(&opts, dir, cfs)
        .map_err(|e| MetaError::Storage(format!("open rocksdb at {}: {e}", dir.display())))?;
    let (closed_tx, closed_rx) = watch::channel(false);
    let db = Arc::new(Db {
        db,
        _closed: ClosedFlag(closed_tx),
    });
    let sm = StateMachine::load(db.clone())
        .map_err(|e| MetaError::Storage(format!("load state machine: {e}")))?;
    Ok((LogStore { db }, sm, closed_rx))
}

fn cf<'a>(db: &'a DB, name: &str) -> std::result::Result<&'a rocksdb::ColumnFamily, StoreErr> {
    db.cf_handle(name)
        .ok_or_else(|| StoreErr(format!("missing column family {name}")))
}

/// A plain error for storage failures that are not rocksdb's or bincode's own.
#[derive(Debug)]
struct StoreErr(String);

impl std::fmt::Display for StoreErr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreErr {}

impl From<rocksdb::Error> for StoreErr {
    fn from(e: rocksdb::Error) -> Self {
        StoreErr(format!("rocksdb: {e}"))
    }
}

impl From<bincode::Error> for StoreErr {
    fn from(e: bincode::Error) -> Self {
        StoreErr(format!("bincode: {e}"))
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn key_index(key: &[u8]) -> std::result::Result<u64, StoreErr> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| StoreErr(format!("bad log key of {} bytes", key.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

fn sync_opts() -> WriteOptions {
    let mut o = WriteOptions::default();
    o.set_sync(true);
    o
}

fn data_key(table: &str, key: &str) -> std::result::Result<Vec<u8>, StoreErr> {
    Ok(bincode::serialize(&(table, key))?)
}

// ---------------------------------------------------------------------------
// Log store

/// The Raft log and vote.
#[derive(Clone)]
pub(crate) struct LogStore {
    db: Arc<Db>,
}

impl LogStore {
    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> std::result::Result<Option<T>, StoreErr> {
        let cf = cf(&self.db, CF_LOG_META)?;
        match self.db.get_cf(cf, key)? {
            None => Ok(None),
            Some(bytes) => Ok(Some(bincode::deserialize(&bytes)?)),
        }
    }

    fn put_meta<T: Serialize>(
        &self,
        key: &[u8],
        value: &T,
        sync: bool,
    ) -> std::result::Result<(), StoreErr> {
        let cf = cf(&self.db, CF_LOG_META)?;
        let bytes = bincode::serialize(value)?;
        let opts = if sync {
            sync_opts()
        } else {
            WriteOptions::default()
        };
        self.db.put_cf_opt(cf, key, bytes, &opts)?;
        Ok(())
    }

    fn read_entries<RB: RangeBounds<u64>>(
        &self,
        range: RB,
    ) -> std::result::Result<Vec<Entry<TypeConfig>>, StoreErr> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => match x.checked_add(1) {
                Some(x) => x,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => 0,
        };
        let cf = cf(&self.db, CF_LOGS)?;
        let start_key = index_key(start);
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(cf, IteratorMode::From(&start_key, Direction::Forward))
        {
            let (key, value) = item?;
            let index = key_index(&key)?;
            if !range.contains(&index) {
                break;
            }
            let entry: Entry<TypeConfig> = bincode::deserialize(&value)?;
            if entry.log_id.index != index {
                return Err(StoreErr(format!(
                    "log entry at key {index} has index {}",
                    entry.log_id.index
                )));
            }
            out.push(entry);
        }
        Ok(out)
    }

    fn last_entry_id(&self) -> std::result::Result<Option<LogId<NodeId>>, StoreErr> {
        let cf = cf(&self.db, CF_LOGS)?;
        match self.db.iterator_cf(cf, IteratorMode::End).next() {
            None => Ok(None),
            Some(item) => {
                let (_, value) = item?;
                let entry: Entry<TypeConfig> = bincode::deserialize(&value)?;
                Ok(Some(entry.log_id))
            }
        }
    }

    fn write_entries(
        &self,
        entries: impl IntoIterator<Item = Entry<TypeConfig>>,
    ) -> std::result::Result<(), StoreErr> {
        let cf = cf(&self.db, CF_LOGS)?;
        let mut batch = WriteBatch::default();
        for entry in entries {
            batch.put_cf(
                cf,
                index_key(entry.log_id.index),
                bincode::serialize(&entry)?,
            );
        }
        self.db.write_opt(batch, &sync_opts())?;
        Ok(())
    }

    /// Delete the entries in `[from, to)`, without waiting for the disk.
    fn delete_range(&self, from: u64, to: u64) -> std::result::Result<(), StoreErr> {
        let cf = cf(&self.db, CF_LOGS)?;
        self.db
            .delete_range_cf(cf, index_key(from), index_key(to))?;
        Ok(())
    }

    fn delete_from(&self, from: u64, sync: bool) -> std::result::Result<(), StoreErr> {
        let cf = cf(&self.db, CF_LOGS)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf, index_key(from), index_key(u64::MAX));
        // delete_range excludes its end; u64::MAX is never a real log index.
        let opts = if sync {
            sync_opts()
        } else {
            WriteOptions::default()
        };
        self.db.write_opt(batch, &opts)?;
        Ok(())
    }
}

fn read_logs_err(e: StoreErr) -> StorageError<NodeId> {
    StorageIOError::read_logs(&e).into()
}

fn write_logs_err(e: StoreErr) -> StorageError<NodeId> {
    StorageIOError::write_logs(&e).into()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        self.read_entries(range).map_err(read_logs_err)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId<NodeId>> =
            self.get_meta(KEY_LAST_PURGED).map_err(read_logs_err)?;
        let last_log_id = self
            .last_entry_id()
            .map_err(read_logs_err)?
            .or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        self.put_meta(KEY_VOTE, vote, true)
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        self.get_meta(KEY_VOTE)
            .map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        self.put_meta(KEY_COMMITTED, &committed, false)
            .map_err(|e| StorageIOError::write(&e).into())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        let committed: Option<Option<LogId<NodeId>>> = self
            .get_meta(KEY_COMMITTED)
            .map_err(|e| StorageIOError::read(&e))?;
        Ok(committed.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // On error the callback is dropped and openraft sees the returned error.
        self.write_entries(entries).map_err(write_logs_err)?;
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.delete_from(log_id.index, true).map_err(write_logs_err)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        // Record the purge point first: entries at or before it are ignored
        // from then on, so a crash between the two writes is harmless.
        self.put_meta(KEY_LAST_PURGED, &log_id, false)
            .map_err(write_logs_err)?;
        let end = log_id.index.saturating_add(1);
        let result = self.delete_range(0, end);
        result.map_err(write_logs_err)
    }
}

// ---------------------------------------------------------------------------
// State machine

/// The applied state, shared between the state machine and readers.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    pub(crate) map: StateMap,
    pub(crate) last_applied: Option<LogId<NodeId>>,
    pub(crate) last_membership: StoredMembership<NodeId, BasicNode>,
}

/// A snapshot as stored in `sm_meta`.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

/// The state machine: the applied map in memory, mirrored to rocksdb.
#[derive(Clone)]
pub(crate) struct StateMachine {
    db: Arc<Db>,
    state: Arc<RwLock<Applied>>,
    applied_tx: Arc<watch::Sender<u64>>,
}

fn sm_read_err(e: StoreErr) -> StorageError<NodeId> {
    StorageIOError::read_state_machine(&e).into()
}

fn sm_write_err(e: StoreErr) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(&e).into()
}

impl StateMachine {
    fn load(db: Arc<Db>) -> std::result::Result<Self, StoreErr> {
        let mut applied = Applied::default();
        {
            let data = cf(&db, CF_SM_DATA)?;
            for item in db.iterator_cf(data, IteratorMode::Start) {
                let (key, value) = item?;
                let (table, key): (String, String) = bincode::deserialize(&key)?;
                applied.map.insert((table, key), value.to_vec());
            }
            let meta = cf(&db, CF_SM_META)?;
            if let Some(bytes) = db.get_cf(meta, KEY_LAST_APPLIED)? {
                applied.last_applied = bincode::deserialize(&bytes)?;
            }
            if let Some(bytes) = db.get_cf(meta, KEY_LAST_MEMBERSHIP)? {
                applied.last_membership = bincode::deserialize(&bytes)?;
            }
        }
        let index = applied.last_applied.map_or(0, |l| l.index);
        let (applied_tx, _) = watch::channel(index);
        Ok(Self {
            db,
            state: Arc::new(RwLock::new(applied)),
            applied_tx: Arc::new(applied_tx),
        })
    }

    /// The shared applied state, for reads.
    pub(crate) fn state(&self) -> Arc<RwLock<Applied>> {
        self.state.clone()
    }

    /// The watch of the last applied log index.
    pub(crate) fn applied_watch(&self) -> Arc<watch::Sender<u64>> {
        self.applied_tx.clone()
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, Applied> {
        // apply_txn checks before it mutates, and the map is replaced whole on
        // snapshot install, so a poisoned lock still guards a consistent map.
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read_state(&self) -> RwLockReadGuard<'_, Applied> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn publish_applied(&self, index: u64) {
        self.applied_tx.send_if_modified(|cur| {
            if *cur != index {
                *cur = index;
                true
            } else {
                false
            }
        });
    }

    fn apply_entries(
        &self,
        entries: Vec<Entry<TypeConfig>>,
    ) -> std::result::Result<Vec<TxnOutcome>, StoreErr> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let data_cf = cf(&self.db, CF_SM_DATA)?;
        let meta_cf = cf(&self.db, CF_SM_META)?;
        let mut state = self.write_state();
        // Work on copies so that a failed rocksdb write leaves memory unchanged.
        let mut map = state.map.clone();
        let mut last_applied = state.last_applied;
        let mut last_membership = state.last_membership.clone();
        let mut batch = WriteBatch::default();
        let mut replies = Vec::with_capacity(entries.len());
        for entry in entries {
            last_applied = Some(entry.log_id);
            let succeeded = match &entry.payload {
                EntryPayload::Blank => true,
                EntryPayload::Normal(txn) => {
                    let ok = apply_txn(&mut map, txn);
                    if ok {
                        for op in &txn.ops {
                            match op {
                                crate::Op::Put { table, key, value } => {
                                    batch.put_cf(data_cf, data_key(table, key)?, value);
                                }
                                crate::Op::Delete { table, key } => {
                                    batch.delete_cf(data_cf, data_key(table, key)?);
                                }
                            }
                        }
                    }
                    ok
                }
                EntryPayload::Membership(m) => {
                    last_membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    true
                }
            };
            replies.push(TxnOutcome {
                succeeded,
                log_index: entry.log_id.index,
            });
        }
        batch.put_cf(
            meta_cf,
            KEY_LAST_APPLIED,
            bincode::serialize(&last_applied)?,
        );
        batch.put_cf(
            meta_cf,
            KEY_LAST_MEMBERSHIP,
            bincode::serialize(&last_membership)?,
        );
        self.db.write(batch)?;
        state.map = map;
        state.last_applied = last_applied;
        state.last_membership = last_membership;
        drop(state);
        self.publish_applied(last_applied.map_or(0, |l| l.index));
        Ok(replies)
    }

    fn build(&self) -> std::result::Result<Snapshot<TypeConfig>, StoreErr> {
        let (data, last_log_id, last_membership) = {
            let state = self.read_state();
            (
                bincode::serialize(&state.map)?,
                state.last_applied,
                state.last_membership.clone(),
            )
        };
        // The snapshot lets openraft purge the log, so the applied state it
        // covers must be durable first.
        self.db.flush_wal(true)?;
        let snapshot_id = match last_log_id {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, unique_suffix()),
            None => format!("--{}", unique_suffix()),
        };
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        let meta_cf = cf(&self.db, CF_SM_META)?;
        self.db.put_cf_opt(
            meta_cf,
            KEY_SNAPSHOT,
            bincode::serialize(&stored)?,
            &sync_opts(),
        )?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }

    fn install(
        &self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        data: Vec<u8>,
    ) -> std::result::Result<(), StoreErr> {
        let map: StateMap = bincode::deserialize(&data)?;
        let data_cf = cf(&self.db, CF_SM_DATA)?;
        let meta_cf = cf(&self.db, CF_SM_META)?;
        let mut state = self.write_state();
        let mut batch = WriteBatch::default();
        for (table, key) in state.map.keys() {
            batch.delete_cf(data_cf, data_key(table, key)?);
        }
        for ((table, key), value) in &map {
            batch.put_cf(data_cf, data_key(table, key)?, value);
        }
        batch.put_cf(
            meta_cf,
            KEY_LAST_APPLIED,
            bincode::serialize(&meta.last_log_id)?,
        );
        batch.put_cf(
            meta_cf,
            KEY_LAST_MEMBERSHIP,
            bincode::serialize(&meta.last_membership)?,
        );
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        batch.put_cf(meta_cf, KEY_SNAPSHOT, bincode::serialize(&stored)?);
        self.db.write_opt(batch, &sync_opts())?;
        state.map = map;
        state.last_applied = meta.last_log_id;
        state.last_membership = meta.last_membership.clone();
        drop(state);
        self.publish_applied(meta.last_log_id.map_or(0, |l| l.index));
        Ok(())
    }

    fn current(&self) -> std::result::Result<Option<Snapshot<TypeConfig>>, StoreErr> {
        let meta_cf = cf(&self.db, CF_SM_META)?;
        match self.db.get_cf(meta_cf, KEY_SNAPSHOT)? {
            None => Ok(None),
            Some(bytes) => {
                let stored: StoredSnapshot = bincode::deserialize(&bytes)?;
                Ok(Some(Snapshot {
                    meta: stored.meta,
                    snapshot: Box::new(Cursor::new(stored.data)),
                }))
            }
        }
    }
}

/// A suffix that keeps snapshot ids of the same log id apart.
fn unique_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        self.build()
            .map_err(|e| StorageIOError::write_snapshot(None, &e).into())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>)> {
        let state = self.read_state();
        Ok((state.last_applied, state.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<TxnOutcome>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.apply_entries(entries.into_iter().collect())
            .map_err(sm_write_err)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        self.install(meta, snapshot.into_inner())
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e).into())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        self.current().map_err(sm_read_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::testing::{StoreBuilder, Suite};
    use tempfile::TempDir;

    struct RocksBuilder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for RocksBuilder {
        async fn build(&self) -> StorageResult<(TempDir, LogStore, StateMachine)> {
            let dir = TempDir::new().map_err(|e| StorageIOError::write(&e))?;
            let (log, sm, _) = open_store(dir.path())
                .map_err(|e| StorageIOError::write(&StoreErr(e.to_string())))?;
            Ok((dir, log, sm))
        }
    }

    #[test]
    fn openraft_storage_suite() {
        if let Err(e) = Suite::test_all(RocksBuilder) {
            panic!("openraft storage suite: {e}");
        }
    }

    fn txn_entry(index: u64, txn: Txn) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 0), index),
            payload: EntryPayload::Normal(txn),
        }
    }

    #[tokio::test]
    async fn state_machine_survives_reopen_and_snapshot_install() {
        use crate::{Check, Op};
        let dir = TempDir::new().unwrap();
        let put = |k: &str, v: &[u8]| Op::Put {
            table: "t".into(),
            key: k.into(),
            value: v.to_vec(),
        };
        {
            let (_log, mut sm, _) = open_store(dir.path()).unwrap();
            let replies = sm
                .apply(vec![
                    txn_entry(
                        1,
                        Txn {
                            checks: vec![],
                            ops: vec![put("a", b"1"), put("b", b"2")],
                        },
                    ),
                    txn_entry(
                        2,
                        Txn {
                            checks: vec![Check::Absent {
                                table: "t".into(),
                                key: "a".into(),
                            }],
                            ops: vec![put("c", b"3")],
                        },
                    ),
                    txn_entry(
                        3,
                        Txn {
                            checks: vec![],
                            ops: vec![Op::Delete {
                                table: "t".into(),
                                key: "b".into(),
                            }],
                        },
                    ),
                ])
                .await
                .unwrap();
            let ok: Vec<bool> = replies.iter().map(|r| r.succeeded).collect();
            assert_eq!(ok, [true, false, true]);
            assert_eq!(*sm.applied_watch().borrow(), 3);
        }
        let (_log, mut sm, _) = open_store(dir.path()).unwrap();
        let expected: StateMap = [(("t".to_string(), "a".to_string()), b"1".to_vec())].into();
        assert_eq!(sm.read_state().map, expected);
        assert_eq!(
            sm.applied_state().await.unwrap().0.map(|l| l.index),
            Some(3)
        );

        // A snapshot from elsewhere replaces the whole state, on disk as well.
        let other = TempDir::new().unwrap();
        let (_l2, mut sm2, _) = open_store(other.path()).unwrap();
        sm2.apply(vec![txn_entry(
            7,
            Txn {
                checks: vec![],
                ops: vec![put("z", b"9")],
            },
        )])
        .await
        .unwrap();
        let snap = sm2
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        sm.install_snapshot(&snap.meta, snap.snapshot)
            .await
            .unwrap();
        assert_eq!(*sm.applied_watch().borrow(), 7);
        drop((_log, sm));
        let (_log, sm, _) = open_store(dir.path()).unwrap();
        let expected: StateMap = [(("t".to_string(), "z".to_string()), b"9".to_vec())].into();
        assert_eq!(sm.read_state().map, expected);
    }
}
