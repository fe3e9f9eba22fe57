//! [`Meta`]: this node's member of the meta group.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, Config, Raft, SnapshotPolicy};
use strata_proto::v1::raft_client::RaftClient;
use strata_types::NodeId;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::network::{
    self, MembershipReply, MembershipRequest, NetworkFactory, ReadIndexReply, WriteReply,
};
use crate::store::{self, Applied, TypeConfig};
use crate::{scan_map, MetaConfig, MetaError, MetaStatus, MetaStore, Result, Txn, TxnOutcome};

/// How long a write or a linearizable read keeps retrying while the group has
/// no reachable leader.
const RETRY_WINDOW: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_millis(500);
/// Timeout of a forwarded client call (it waits for a commit on the leader).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long shutdown waits for the storage to be released.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);
/// Log entries between two snapshots.
const SNAPSHOT_EVERY: u64 = 5000;

/// The openraft handle of the meta group.
pub(crate) type MetaRaft = Raft<TypeConfig>;

/// This node's member of the meta group: a Raft node with its rocksdb log and
/// state machine, serving [`MetaStore`].
pub struct Meta {
    id: NodeId,
    cfg: MetaConfig,
    pub(crate) raft: MetaRaft,
    state: Arc<RwLock<Applied>>,
    applied: Arc<watch::Sender<u64>>,
    rpc_timeout: Duration,
    /// Clients to peers for forwarded calls, by node id, with the address they use.
    peers: Mutex<HashMap<NodeId, (String, RaftClient<Channel>)>>,
    pub(crate) stopped: AtomicBool,
    /// Turns true once openraft has dropped the storage and rocksdb is closed.
    db_closed: watch::Receiver<bool>,
}

impl std::fmt::Debug for Meta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meta")
            .field("id", &self.id)
            .field("dir", &self.cfg.dir)
            .finish()
    }
}

fn raft_err(e: impl std::fmt::Display) -> MetaError {
    MetaError::Raft(e.to_string())
}

impl Meta {
    /// Open the rocksdb at `cfg.dir` and start this node's Raft.
    pub async fn open(cfg: MetaConfig) -> Result<Arc<Meta>> {
        std::fs::create_dir_all(&cfg.dir)
            .map_err(|e| MetaError::Storage(format!("create {}: {e}", cfg.dir.display())))?;
        let (log, sm, db_closed) = store::open_store(&cfg.dir)?;
        let state = sm.state();
        let applied = sm.applied_watch();
        let heartbeat = cfg.heartbeat_interval_ms.max(1);
        let config = Config {
            cluster_name: "strata".to_string(),
            heartbeat_interval: heartbeat,
            election_timeout_min: cfg.election_timeout_min_ms,
            election_timeout_max: cfg.election_timeout_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(SNAPSHOT_EVERY),
            max_in_snapshot_log_to_keep: 500,
            ..Default::default()
        }
        .validate()
        .map_err(raft_err)?;
        // A peer that does not answer within a few election timeouts is as
        // good as down; openraft backs off from it.
        let rpc_timeout = Duration::from_millis(cfg.election_timeout_max_ms.max(heartbeat) * 2)
            .max(Duration::from_millis(500));
        let factory = NetworkFactory { rpc_timeout };
        let raft = Raft::new(cfg.node_id, Arc::new(config), factory, log, sm)
            .await
            .map_err(raft_err)?;
        Ok(Arc::new(Meta {
            id: cfg.node_id,
            cfg,
            raft,
            state,
            applied,
            rpc_timeout,
            peers: Mutex::new(HashMap::new()),
            stopped: AtomicBool::new(false),
            db_closed,
        }))
    }

    /// The gRPC service peers call; mount it on this node's server at its rpc address.
    pub fn raft_service(
        self: &Arc<Self>,
    ) -> strata_proto::v1::raft_server::RaftServer<impl strata_proto::v1::raft_server::Raft> {
        crate::service::server(self.clone())
    }

    /// Form the group from `cfg.voters` if this node has the lowest id among
    /// them and the group is not initialized yet. A no-op on other nodes and
    /// on an initialized group.
    pub async fn bootstrap(&self) -> Result<()> {
        if self.cfg.voters.keys().next() != Some(&self.id) {
            return Ok(());
        }
        if self.raft.is_initialized().await.map_err(raft_err)? {
            return Ok(());
        }
        let members: BTreeMap<NodeId, BasicNode> = self
            .cfg
            .voters
            .iter()
            .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
            .collect();
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(raft_err(e)),
        }
    }

    /// Wait until a leader is known, and return it.
    pub async fn wait_for_leader(&self, timeout_ms: u64) -> Result<NodeId> {
        let mut rx = self.raft.metrics();
        let wait = rx.wait_for(|m| m.current_leader.is_some());
        let leader = match tokio::time::timeout(Duration::from_millis(timeout_ms), wait).await {
            Err(_) => Err(MetaError::Timeout { timeout_ms }),
            Ok(Err(_)) => Err(MetaError::Raft("raft stopped".into())),
            Ok(Ok(m)) => m.current_leader.ok_or(MetaError::NoLeader),
        };
        leader
    }

    /// The group as this node sees it.
    pub fn status(&self) -> MetaStatus {
        let m = self.raft.metrics().borrow().clone();
        MetaStatus {
            node_id: self.id,
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            // From the state machine itself: openraft's metrics may lag it.
            last_applied: self.read_state().last_applied.map(|l| l.index),
            voters: m.membership_config.membership().voter_ids().collect(),
        }
    }

    /// The index of the last log entry applied here; changes on every apply.
    pub fn subscribe_applied(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// Stop this node's Raft and close its rocksdb, so the directory can be
    /// opened again. Calls made afterwards fail.
    pub async fn shutdown(&self) -> Result<()> {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.raft.shutdown().await.map_err(raft_err)?;
        // Openraft's tasks drop their storage handles as they wind down.
        let mut closed = self.db_closed.clone();
        let wait = closed.wait_for(|closed| *closed);
        let done = match tokio::time::timeout(SHUTDOWN_WAIT, wait).await {
            Ok(Ok(_)) => Ok(()),
            // The sender is dropped only with the rocksdb, after raising the flag.
            Ok(Err(_)) => Ok(()),
            Err(_) => Err(MetaError::Storage(
                "rocksdb still in use after shutdown".into(),
            )),
        };
        done
    }

    /// Make `voters` (id to rpc address) the voters of the group: nodes new to
    /// it join as learners first and catch up, then the voter set is switched.
    /// Runs on the leader; forwarded there from other nodes.
    pub async fn change_membership(&self, voters: BTreeMap<NodeId, String>) -> Result<()> {
        if voters.is_empty() {
            return Err(MetaError::Raft("a group needs at least one voter".into()));
        }
        let req = MembershipRequest { voters };
        let deadline = Instant::now() + RETRY_WINDOW;
        let mut backoff = BACKOFF_MIN;
        loop {
            self.check_running()?;
            let leader = self.current_leader();
            let retry = match leader {
                Some(l) if l == self.id => match self.change_membership_local(&req).await? {
                    MembershipReply::Ok => return Ok(()),
                    MembershipReply::Failed(m) => return Err(MetaError::Raft(m)),
                    MembershipReply::NotLeader(_) => None,
                },
                Some(l) => {
                    let body = network::encode(&req)?;
                    match self
                        .forward(l, |mut c| async move { c.change_membership(body).await })
                        .await
                    {
                        Ok(bytes) => match network::decode::<MembershipReply>(&bytes)? {
                            MembershipReply::Ok => return Ok(()),
                            MembershipReply::Failed(m) => return Err(MetaError::Raft(m)),
                            MembershipReply::NotLeader(_) => None,
                        },
                        Err(e) => Some(e),
                    }
                }
                None => None,
            };
            backoff = self.pause(deadline, backoff, retry).await?;
        }
    }

    pub(crate) async fn change_membership_local(
        &self,
        req: &MembershipRequest,
    ) -> Result<MembershipReply> {
        let current: BTreeSet<NodeId> = {
            let m = self.raft.metrics().borrow().membership_config.clone();
            m.membership().nodes().map(|(id, _)| *id).collect()
        };
        for (id, addr) in &req.voters {
            if current.contains(id) {
                continue;
            }
            let node = BasicNode { addr: addr.clone() };
            match self.raft.add_learner(*id, node, true).await {
                Ok(_) => {}
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    return Ok(MembershipReply::NotLeader(f.leader_id));
                }
                Err(e) => return Ok(MembershipReply::Failed(e.to_string())),
            }
        }
        let ids: BTreeSet<NodeId> = req.voters.keys().copied().collect();
        match self.raft.change_membership(ids, false).await {
            Ok(_) => Ok(MembershipReply::Ok),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Ok(MembershipReply::NotLeader(f.leader_id))
            }
            Err(e) => Ok(MembershipReply::Failed(e.to_string())),
        }
    }

    fn check_running(&self) -> Result<()> {
        if self.stopped.load(Ordering::SeqCst) {
            Err(MetaError::Raft("meta group member is shut down".into()))
        } else {
            Ok(())
        }
    }

    fn current_leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// The rpc address of `node` from the current membership (or the initial voters).
    fn addr_of(&self, node: NodeId) -> Option<String> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        m.membership()
            .get_node(&node)
            .map(|n| n.addr.clone())
            .or_else(|| self.cfg.voters.get(&node).cloned())
    }

    fn peer_client(&self, node: NodeId) -> Result<RaftClient<Channel>> {
        let addr = self.addr_of(node).ok_or_else(|| MetaError::Rpc {
            node,
            message: "no address known".into(),
        })?;
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((a, c)) = peers.get(&node) {
            if *a == addr {
                return Ok(c.clone());
            }
        }
        let c = network::client(&addr, FORWARD_TIMEOUT.max(self.rpc_timeout))?;
        peers.insert(node, (addr, c.clone()));
        Ok(c)
    }

    /// Call `node`'s Raft service with `f`, returning the reply payload.
    async fn forward<F, Fut>(&self, node: NodeId, f: F) -> Result<Vec<u8>>
    where
        F: FnOnce(RaftClient<Channel>) -> Fut,
        Fut: std::future::Future<
            Output = std::result::Result<
                tonic::Response<strata_proto::v1::RaftBytes>,
                tonic::Status,
            >,
        >,
    {
        let client = self.peer_client(node)?;
        match f(client).await {
            Ok(resp) => Ok(resp.into_inner().data),
            Err(status) => Err(MetaError::Rpc {
                node,
                message: status.to_string(),
            }),
        }
    }

    /// Sleep before the next attempt, or give up when the retry window is over.
    async fn pause(
        &self,
        deadline: Instant,
        backoff: Duration,
        last_err: Option<MetaError>,
    ) -> Result<Duration> {
        let now = Instant::now();
        if now >= deadline {
            return Err(match last_err {
                Some(e) => e,
                None if self.current_leader().is_none() => MetaError::NoLeader,
                None => MetaError::Timeout {
                    timeout_ms: RETRY_WINDOW.as_millis() as u64,
                },
            });
        }
        if let Some(e) = &last_err {
            tracing::debug!(node = self.id, "meta call will be retried: {e}");
        }
        tokio::time::sleep(backoff.min(deadline - now)).await;
        Ok((backoff * 2).min(BACKOFF_MAX))
    }

    /// Wait until this node has applied the log up to `index`.
    async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<()> {
        let mut rx = self.applied.subscribe();
        let wait = rx.wait_for(|applied| *applied >= index);
        let done = match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(MetaError::Raft("state machine is gone".into())),
            Err(_) => Err(MetaError::Timeout {
                timeout_ms: timeout.as_millis() as u64,
            }),
        };
        done
    }

    /// Commit `txn` through this node, which must be the leader.
    pub(crate) async fn write_local(&self, txn: Txn) -> Result<WriteReply> {
        match self.raft.client_write(txn).await {
            Ok(resp) => Ok(WriteReply::Ok(resp.data)),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Ok(WriteReply::NotLeader(f.leader_id))
            }
            Err(RaftError::APIError(e)) => Ok(WriteReply::Failed(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(raft_err(e)),
        }
    }

    /// The log index a linearizable read must wait for, if this node is the leader.
    pub(crate) async fn read_index_local(&self) -> Result<ReadIndexReply> {
        let res = tokio::time::timeout(self.rpc_timeout * 2, self.raft.get_read_log_id()).await;
        match res {
            Err(_) => Ok(ReadIndexReply::Failed(
                "leadership not confirmed in time".into(),
            )),
            Ok(Ok((read_log_id, _applied))) => {
                Ok(ReadIndexReply::Ok(read_log_id.map_or(0, |l| l.index)))
            }
            Ok(Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(
                f,
            )))) => Ok(ReadIndexReply::NotLeader(f.leader_id)),
            Ok(Err(RaftError::APIError(e))) => Ok(ReadIndexReply::Failed(e.to_string())),
            Ok(Err(RaftError::Fatal(e))) => Err(raft_err(e)),
        }
    }

    async fn write_inner(&self, txn: Txn) -> Result<TxnOutcome> {
        let deadline = Instant::now() + RETRY_WINDOW;
        let mut backoff = BACKOFF_MIN;
        let outcome = loop {
            self.check_running()?;
            let retry = match self.current_leader() {
                Some(l) if l == self.id => match self.write_local(txn.clone()).await? {
                    WriteReply::Ok(o) => break o,
                    WriteReply::NotLeader(_) => None,
                    WriteReply::Failed(m) => return Err(MetaError::Raft(m)),
                },
                Some(l) => {
                    let body = network::encode(&txn)?;
                    match self
                        .forward(l, |mut c| async move { c.client_write(body).await })
                        .await
                    {
                        Ok(bytes) => match network::decode::<WriteReply>(&bytes)? {
                            WriteReply::Ok(o) => break o,
                            WriteReply::NotLeader(_) => None,
                            WriteReply::Failed(m) => return Err(MetaError::Raft(m)),
                        },
                        Err(e) => Some(e),
                    }
                }
                None => None,
            };
            backoff = self.pause(deadline, backoff, retry).await?;
        };
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        self.wait_applied(outcome.log_index, left).await?;
        Ok(outcome)
    }

    /// Make this node's applied state at least as new as every write
    /// committed before the call.
    async fn read_barrier(&self) -> Result<()> {
        let deadline = Instant::now() + RETRY_WINDOW;
        let mut backoff = BACKOFF_MIN;
        loop {
            self.check_running()?;
            let retry = match self.current_leader() {
                Some(l) if l == self.id => match self.read_index_local().await? {
                    ReadIndexReply::Ok(index) => {
                        let left = deadline.saturating_duration_since(Instant::now());
                        return self
                            .wait_applied(index, left.max(Duration::from_secs(1)))
                            .await;
                    }
                    ReadIndexReply::NotLeader(_) => None,
                    ReadIndexReply::Failed(m) => Some(MetaError::Raft(m)),
                },
                Some(l) => {
                    let body = strata_proto::v1::RaftBytes { data: Vec::new() };
                    match self
                        .forward(l, |mut c| async move { c.read_index(body).await })
                        .await
                    {
                        Ok(bytes) => match network::decode::<ReadIndexReply>(&bytes)? {
                            ReadIndexReply::Ok(index) => {
                                let left = deadline.saturating_duration_since(Instant::now());
                                return self
                                    .wait_applied(index, left.max(Duration::from_secs(1)))
                                    .await;
                            }
                            ReadIndexReply::NotLeader(_) => None,
                            ReadIndexReply::Failed(m) => Some(MetaError::Raft(m)),
                        },
                        Err(e) => Some(e),
                    }
                }
                None => None,
            };
            backoff = self.pause(deadline, backoff, retry).await?;
        }
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, Applied> {
        // See StateMachine::write_state: the map is consistent even if poisoned.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }
}

impl MetaStore for Meta {
    fn write(&self, txn: Txn) -> BoxFuture<'_, Result<TxnOutcome>> {
        Box::pin(self.write_inner(txn))
    }

    fn get<'a>(&'a self, table: &'a str, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        Box::pin(async move {
            self.read_barrier().await?;
            Ok(self.get_local(table, key))
        })
    }

    fn scan<'a>(
        &'a self,
        table: &'a str,
        prefix: &'a str,
        start_after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<(String, Vec<u8>)>>> {
        Box::pin(async move {
            self.read_barrier().await?;
            Ok(self.scan_local(table, prefix, start_after, limit))
        })
    }

    fn get_local(&self, table: &str, key: &str) -> Option<Vec<u8>> {
        self.read_state()
            .map
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
        scan_map(&self.read_state().map, table, prefix, start_after, limit)
    }
}
