//! Raft transport over the `strata.v1.Raft` gRPC service: bincode payloads in
//! `RaftBytes`, the wire shapes of the forwarded client calls, and the client
//! side of openraft's network.

use std::time::Duration;

use openraft::error::{
    Infallible, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use strata_proto::v1::raft_client::RaftClient;
use strata_proto::v1::RaftBytes;
use strata_types::NodeId;
use tonic::transport::{Channel, Endpoint};

use crate::store::TypeConfig;
use crate::{MetaError, TxnOutcome};

/// Largest gRPC message of the Raft service, either way.
pub(crate) const MAX_MESSAGE_BYTES: usize = 64 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Answer of a forwarded `ClientWrite`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum WriteReply {
    Ok(TxnOutcome),
    /// The receiver is not the leader; it names the one it knows of, if any.
    NotLeader(Option<NodeId>),
    Failed(String),
}

/// Answer of a `ReadIndex`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ReadIndexReply {
    /// The log index a follower must have applied before reading.
    Ok(u64),
    NotLeader(Option<NodeId>),
    Failed(String),
}

/// A membership change forwarded to the leader: the full set of voters wanted,
/// with their rpc addresses. Nodes not yet in the group are added as learners
/// first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MembershipRequest {
    pub voters: std::collections::BTreeMap<NodeId, String>,
}

/// Answer of a forwarded `ChangeMembership`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum MembershipReply {
    Ok,
    NotLeader(Option<NodeId>),
    Failed(String),
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<RaftBytes, MetaError> {
    bincode::serialize(value)
        .map(|data| RaftBytes { data })
        .map_err(|e| MetaError::Codec(e.to_string()))
}

/// Decode a payload of [`encode`]: the same encoding as `bincode::serialize`,
/// with a size limit so a bad length prefix cannot ask for a huge allocation.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, MetaError> {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(MAX_MESSAGE_BYTES as u64)
        .deserialize(bytes)
        .map_err(|e| MetaError::Codec(e.to_string()))
}

/// A lazily connecting client to the Raft service at `addr` (`host:port`).
pub(crate) fn client(addr: &str, timeout: Duration) -> Result<RaftClient<Channel>, MetaError> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| MetaError::Codec(format!("bad rpc address {addr:?}: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(timeout)
        .tcp_nodelay(true);
    Ok(RaftClient::new(endpoint.connect_lazy())
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// Whether a gRPC failure means the request cannot have reached the peer's
/// Raft (so retrying elsewhere or later is safe and expected).
pub(crate) fn is_unreachable(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable
}

/// Creates one [`Network`] per peer openraft replicates to.
#[derive(Clone)]
pub(crate) struct NetworkFactory {
    pub(crate) rpc_timeout: Duration,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Network;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Network {
        let client = client(&node.addr, self.rpc_timeout).map_err(|e| e.to_string());
        Network { target, client }
    }
}

/// The connection to one peer.
pub(crate) struct Network {
    target: NodeId,
    /// An unusable address is kept as its error and reported on every call.
    client: Result<RaftClient<Channel>, String>,
}

#[derive(Debug)]
struct TransportError(String);

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TransportError {}

type RpcResult<T, E> = Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl Network {
    async fn call<Req, Resp, E>(
        &mut self,
        action: RPCTypes,
        req: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let target = self.target;
        let mut client = match &self.client {
            Ok(c) => c.clone(),
            Err(e) => {
                return Err(RPCError::Unreachable(Unreachable::new(&TransportError(
                    e.clone(),
                ))))
            }
        };
        let body = encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let ttl = option.hard_ttl();
        let call = async move {
            match action {
                RPCTypes::Vote => client.vote(body).await,
                RPCTypes::AppendEntries => client.append_entries(body).await,
                RPCTypes::InstallSnapshot => client.install_snapshot(body).await,
            }
        };
        let resp = match tokio::time::timeout(ttl, call).await {
            Err(_) => {
                return Err(RPCError::Timeout(Timeout {
                    action,
                    id: target,
                    target,
                    timeout: ttl,
                }))
            }
            Ok(Err(status)) => {
                let err = TransportError(format!("{action:?} to node {target}: {status}"));
                return Err(if status.code() == tonic::Code::DeadlineExceeded {
                    RPCError::Timeout(Timeout {
                        action,
                        id: target,
                        target,
                        timeout: ttl,
                    })
                } else if is_unreachable(&status) {
                    RPCError::Unreachable(Unreachable::new(&err))
                } else {
                    RPCError::Network(NetworkError::new(&err))
                });
            }
            Ok(Ok(resp)) => resp.into_inner(),
        };
        let reply: Result<Resp, RaftError<NodeId, E>> =
            decode(&resp.data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        reply.map_err(|e| RPCError::RemoteError(RemoteError::new(target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Network {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, Infallible> {
        self.call(RPCTypes::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(RPCTypes::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, Infallible> {
        self.call(RPCTypes::Vote, &rpc, &option).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Check, Op, Txn};

    #[test]
    fn payloads_round_trip() {
        let txn = Txn {
            checks: vec![Check::Absent {
                table: "t".into(),
                key: "k".into(),
            }],
            ops: vec![Op::Put {
                table: "t".into(),
                key: "k".into(),
                value: vec![1, 2, 3],
            }],
        };
        let bytes = encode(&txn).unwrap().data;
        assert_eq!(bytes, bincode::serialize(&txn).unwrap());
        assert_eq!(decode::<Txn>(&bytes).unwrap(), txn);
        let reply = encode(&WriteReply::NotLeader(Some(3))).unwrap().data;
        assert!(matches!(
            decode::<WriteReply>(&reply).unwrap(),
            WriteReply::NotLeader(Some(3))
        ));
    }

    #[test]
    fn bad_bytes_are_errors_not_panics() {
        assert!(decode::<AppendEntriesRequest<TypeConfig>>(&[0xff; 7]).is_err());
        assert!(decode::<VoteRequest<NodeId>>(&[]).is_err());
        // A length prefix far beyond the payload.
        assert!(decode::<Vec<u8>>(&u64::MAX.to_le_bytes()).is_err());
        assert!(decode::<Txn>(&(1u64 << 40).to_le_bytes()).is_err());
        // An enum tag that does not exist.
        assert!(decode::<ReadIndexReply>(&[9, 0, 0, 0]).is_err());
    }
}
