//! The `Storage` gRPC service: replica I/O on this node's disks for coordinators elsewhere.

use crate::peer::{from_pb, to_pb, RPC_MESSAGE_BYTES_MAX};
use crate::DataPlane;
use bytes::Bytes;
use std::sync::Arc;
use strata_disk::{Disk, DiskError};
use strata_proto::v1 as pb;
use strata_proto::v1::storage_server::{Storage, StorageServer};
use strata_types::ChunkId;
use tonic::{Request, Response, Status};

/// Serves this node's disks to the rest of the cluster.
pub struct StorageService {
    data: Arc<DataPlane>,
}

impl StorageService {
    pub fn server(data: Arc<DataPlane>) -> StorageServer<StorageService> {
        StorageServer::new(StorageService { data })
            .max_decoding_message_size(RPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(RPC_MESSAGE_BYTES_MAX)
    }

    // tonic's Status is what every handler returns; boxing it here would only be unboxed at
    // each call site.
    #[allow(clippy::result_large_err)]
    fn disk(&self, id: u64) -> Result<&Arc<Disk>, Status> {
        self.data
            .local_disks()
            .get(&id)
            .ok_or_else(|| Status::not_found(format!("disk {id} is not on this node")))
    }
}

#[allow(clippy::result_large_err)] // see StorageService::disk
fn chunk_id(b: &[u8]) -> Result<ChunkId, Status> {
    ChunkId::from_slice(b).ok_or_else(|| Status::invalid_argument("chunk id must be 32 bytes"))
}

fn data_status(e: crate::DataError) -> Status {
    match e {
        crate::DataError::Disk(d) => disk_status(d),
        e @ crate::DataError::NoSpace { .. } => Status::resource_exhausted(e.to_string()),
        other => Status::internal(other.to_string()),
    }
}

fn disk_status(e: DiskError) -> Status {
    match e {
        DiskError::Corrupt { .. } => Status::data_loss(e.to_string()),
        DiskError::CorruptBlock { .. } => Status::data_loss(e.to_string()),
        DiskError::TooLarge { .. } | DiskError::BadBlockRange(_) | DiskError::BadRecord(_) => {
            Status::invalid_argument(e.to_string())
        }
        DiskError::Full { .. } => Status::resource_exhausted(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

#[tonic::async_trait]
impl Storage for StorageService {
    async fn put_chunk(
        &self,
        req: Request<pb::PutChunkRequest>,
    ) -> Result<Response<pb::PutChunkResponse>, Status> {
        let req = req.into_inner();
        let id = chunk_id(&req.chunk_id)?;
        let hash = *blake3::hash(&req.data).as_bytes();
        if hash.as_slice() != req.blake3.as_slice() {
            tracing::warn!(chunk = ?id, "refusing a chunk whose bytes do not match its hash");
            return Err(Status::data_loss("chunk bytes do not match their blake3"));
        }
        self.disk(req.disk_id)?
            .put_chunk_hashed(id, Bytes::from(req.data), hash)
            .await
            .map_err(disk_status)?;
        Ok(Response::new(pb::PutChunkResponse {}))
    }

    async fn get_chunk(
        &self,
        req: Request<pb::GetChunkRequest>,
    ) -> Result<Response<pb::GetChunkResponse>, Status> {
        let req = req.into_inner();
        let id = chunk_id(&req.chunk_id)?;
        let found = self
            .disk(req.disk_id)?
            .get_chunk_with_hash(id)
            .await
            .map_err(disk_status)?;
        Ok(Response::new(match found {
            Some((data, blake3)) => pb::GetChunkResponse {
                found: true,
                blake3: blake3.to_vec(),
                data: data.to_vec(),
            },
            None => pb::GetChunkResponse::default(),
        }))
    }

    async fn delete_chunk(
        &self,
        req: Request<pb::DeleteChunkRequest>,
    ) -> Result<Response<pb::DeleteChunkResponse>, Status> {
        let req = req.into_inner();
        let id = chunk_id(&req.chunk_id)?;
        self.disk(req.disk_id)?
            .delete_chunk(id)
            .await
            .map_err(disk_status)?;
        Ok(Response::new(pb::DeleteChunkResponse {}))
    }

    async fn put_record(
        &self,
        req: Request<pb::PutRecordRequest>,
    ) -> Result<Response<pb::PutRecordResponse>, Status> {
        let req = req.into_inner();
        let rec = req
            .record
            .ok_or_else(|| Status::invalid_argument("record missing"))?;
        let applied = self
            .disk(req.disk_id)?
            .put_record(&req.key, from_pb(rec))
            .await
            .map_err(disk_status)?;
        Ok(Response::new(pb::PutRecordResponse { applied }))
    }

    async fn get_record(
        &self,
        req: Request<pb::GetRecordRequest>,
    ) -> Result<Response<pb::GetRecordResponse>, Status> {
        let req = req.into_inner();
        let rec = self
            .disk(req.disk_id)?
            .get_record(&req.key)
            .map_err(disk_status)?;
        Ok(Response::new(pb::GetRecordResponse {
            record: rec.as_ref().map(to_pb),
        }))
    }

    async fn get_tally(
        &self,
        req: Request<pb::GetTallyRequest>,
    ) -> Result<Response<pb::GetTallyResponse>, Status> {
        let req = req.into_inner();
        let t = self
            .disk(req.disk_id)?
            .tally(&req.group)
            .map_err(disk_status)?;
        Ok(Response::new(pb::GetTallyResponse {
            count: t.count,
            weight: t.weight,
            stamp: t.stamp,
        }))
    }

    async fn scan_records(
        &self,
        req: Request<pb::ScanRecordsRequest>,
    ) -> Result<Response<pb::ScanRecordsResponse>, Status> {
        const SCAN_ROWS_MAX: usize = 10_000;
        let req = req.into_inner();
        let end = (!req.end.is_empty()).then_some(req.end.as_slice());
        let limit = (req.limit as usize).min(SCAN_ROWS_MAX);
        let rows = self
            .disk(req.disk_id)?
            .scan_records(&req.start, end, limit)
            .map_err(disk_status)?;
        let records = rows
            .into_iter()
            .map(|(key, rec)| pb::KeyedRecord {
                key,
                record: Some(to_pb(&rec)),
            })
            .collect();
        Ok(Response::new(pb::ScanRecordsResponse { records }))
    }

    async fn write_blocks(
        &self,
        req: Request<pb::WriteBlocksRequest>,
    ) -> Result<Response<pb::WriteBlocksResponse>, Status> {
        let req = req.into_inner();
        if crc32c::crc32c(&req.data) != req.crc32c {
            tracing::warn!(
                volume = req.volume,
                "refusing blocks whose bytes do not match their crc"
            );
            return Err(Status::data_loss("block bytes do not match their crc32c"));
        }
        self.disk(req.disk_id)?;
        self.data
            .local_write_blocks(
                req.disk_id,
                req.volume,
                &req.blocks,
                &[Bytes::from(req.data)],
                true,
            )
            .await
            .map_err(data_status)?;
        Ok(Response::new(pb::WriteBlocksResponse {}))
    }

    async fn read_blocks(
        &self,
        req: Request<pb::ReadBlocksRequest>,
    ) -> Result<Response<pb::ReadBlocksResponse>, Status> {
        let req = req.into_inner();
        let read = self
            .disk(req.disk_id)?
            .read_blocks(req.volume, req.first_block, req.count)
            .await
            .map_err(disk_status)?;
        Ok(Response::new(pb::ReadBlocksResponse {
            crc32c: crc32c::crc32c(&read.data),
            data: read.data.to_vec(),
            present: read.present,
        }))
    }

    async fn trim_blocks(
        &self,
        req: Request<pb::TrimBlocksRequest>,
    ) -> Result<Response<pb::TrimBlocksResponse>, Status> {
        let req = req.into_inner();
        self.disk(req.disk_id)?;
        self.data
            .local_trim_blocks(req.disk_id, req.volume, req.first_block, req.count)
            .await
            .map_err(data_status)?;
        Ok(Response::new(pb::TrimBlocksResponse {}))
    }

    async fn node_status(
        &self,
        _req: Request<pb::NodeStatusRequest>,
    ) -> Result<Response<pb::NodeStatusResponse>, Status> {
        Ok(Response::new(self.data.local_status()))
    }
}
