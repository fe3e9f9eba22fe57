//! Server side of the `strata.v1.Raft` service: decode a bincode payload, hand
//! it to this node's Raft, encode the reply (errors included).

// `tonic::Status` is large, but it is what the generated service returns.
#![allow(clippy::result_large_err)]

use std::sync::atomic::Ordering;
use std::sync::Arc;

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::Serialize;
use strata_proto::v1::raft_server::{Raft, RaftServer};
use strata_proto::v1::RaftBytes;
use tonic::{Request, Response, Status};

use crate::network::{self, MembershipReply, MembershipRequest, ReadIndexReply, WriteReply};
use crate::node::Meta;
use crate::store::TypeConfig;
use crate::{MetaError, Txn};

pub(crate) fn server(meta: Arc<Meta>) -> RaftServer<RaftService> {
    RaftServer::new(RaftService { meta })
        .max_decoding_message_size(network::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(network::MAX_MESSAGE_BYTES)
}

/// The Raft service of one [`Meta`].
pub(crate) struct RaftService {
    meta: Arc<Meta>,
}

type RpcResult = Result<Response<RaftBytes>, Status>;

fn status(e: MetaError) -> Status {
    match e {
        MetaError::Codec(m) => Status::invalid_argument(m),
        other => Status::internal(other.to_string()),
    }
}

fn reply<T: Serialize>(value: &T) -> RpcResult {
    network::encode(value).map(Response::new).map_err(status)
}

impl RaftService {
    fn payload<T: serde::de::DeserializeOwned>(
        &self,
        req: Request<RaftBytes>,
    ) -> Result<T, Status> {
        if self.meta.stopped.load(Ordering::SeqCst) {
            return Err(Status::unavailable("meta group member is shut down"));
        }
        network::decode(&req.into_inner().data).map_err(status)
    }
}

#[tonic::async_trait]
impl Raft for RaftService {
    async fn append_entries(&self, request: Request<RaftBytes>) -> RpcResult {
        let req: AppendEntriesRequest<TypeConfig> = self.payload(request)?;
        reply(&self.meta.raft.append_entries(req).await)
    }

    async fn vote(&self, request: Request<RaftBytes>) -> RpcResult {
        let req: VoteRequest<strata_types::NodeId> = self.payload(request)?;
        reply(&self.meta.raft.vote(req).await)
    }

    async fn install_snapshot(&self, request: Request<RaftBytes>) -> RpcResult {
        let req: InstallSnapshotRequest<TypeConfig> = self.payload(request)?;
        reply(&self.meta.raft.install_snapshot(req).await)
    }

    async fn client_write(&self, request: Request<RaftBytes>) -> RpcResult {
        let txn: Txn = self.payload(request)?;
        let r = match self.meta.write_local(txn).await {
            Ok(r) => r,
            Err(e) => WriteReply::Failed(e.to_string()),
        };
        reply(&r)
    }

    async fn read_index(&self, request: Request<RaftBytes>) -> RpcResult {
        // The request carries nothing: an empty payload.
        self.payload::<()>(request)?;
        let r = match self.meta.read_index_local().await {
            Ok(r) => r,
            Err(e) => ReadIndexReply::Failed(e.to_string()),
        };
        reply(&r)
    }

    async fn change_membership(&self, request: Request<RaftBytes>) -> RpcResult {
        let req: MembershipRequest = self.payload(request)?;
        let r = match self.meta.change_membership_local(&req).await {
            Ok(r) => r,
            Err(e) => MembershipReply::Failed(e.to_string()),
        };
        reply(&r)
    }
}
