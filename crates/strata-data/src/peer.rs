//! Clients of other nodes' `Storage` service, one lazily connected channel per node.

use crate::{DataError, Result};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use strata_disk::{BlockRead, Record, Tally, TallyTotals, BLOCK_BYTES};
use strata_proto::v1 as pb;
use strata_proto::v1::storage_client::StorageClient;
use strata_types::{ChunkId, DiskId, NodeId};
use tonic::transport::{Channel, Endpoint};

/// Largest gRPC message a node sends or accepts: a full chunk plus framing.
pub const RPC_MESSAGE_BYTES_MAX: usize = strata_types::CHUNK_SIZE_BYTES_MAX + (1 << 20);

pub(crate) struct Peers {
    timeout: Duration,
    addrs: Mutex<HashMap<NodeId, String>>,
    clients: Mutex<HashMap<NodeId, StorageClient<Channel>>>,
}

pub(crate) fn to_pb(rec: &Record) -> pb::Record {
    pb::Record {
        timestamp: rec.timestamp,
        value: rec.value.clone(),
        tally_group_len: rec.tally.map(|t| t.group_len),
        tally_weight: rec.tally.map_or(0, |t| t.weight),
    }
}

pub(crate) fn from_pb(rec: pb::Record) -> Record {
    Record {
        timestamp: rec.timestamp,
        tally: rec.tally_group_len.map(|group_len| Tally {
            group_len,
            weight: rec.tally_weight,
        }),
        value: rec.value,
    }
}

impl Peers {
    pub(crate) fn new(timeout: Duration) -> Self {
        Peers {
            timeout,
            addrs: Mutex::default(),
            clients: Mutex::default(),
        }
    }

    pub(crate) fn set_addr(&self, node: NodeId, addr: &str) {
        let mut addrs = self.addrs.lock().unwrap_or_else(|e| e.into_inner());
        if addrs.get(&node).map(String::as_str) != Some(addr) {
            addrs.insert(node, addr.to_string());
            self.clients
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&node);
        }
    }

    fn client(&self, node: NodeId) -> Result<StorageClient<Channel>> {
        if let Some(c) = self
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&node)
        {
            return Ok(c.clone());
        }
        let addr = self
            .addrs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&node)
            .cloned()
            .ok_or_else(|| DataError::Rpc {
                node,
                message: "no address known".into(),
            })?;
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| DataError::Rpc {
                node,
                message: e.to_string(),
            })?
            .connect_timeout(Duration::from_millis(500))
            .timeout(self.timeout)
            .tcp_nodelay(true);
        let client = StorageClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(RPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(RPC_MESSAGE_BYTES_MAX);
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node, client.clone());
        Ok(client)
    }

    pub(crate) async fn put_chunk(
        &self,
        node: NodeId,
        disk: DiskId,
        id: ChunkId,
        data: Bytes,
    ) -> Result<()> {
        let hash = blake3::hash(&data);
        let req = pb::PutChunkRequest {
            disk_id: disk,
            chunk_id: id.0.to_vec(),
            data: data.to_vec(),
            blake3: hash.as_bytes().to_vec(),
        };
        self.client(node)?
            .put_chunk(req)
            .await
            .map_err(|s| rpc_err(node, s))?;
        Ok(())
    }

    pub(crate) async fn get_chunk(
        &self,
        node: NodeId,
        disk: DiskId,
        id: ChunkId,
    ) -> Result<Option<Bytes>> {
        let req = pb::GetChunkRequest {
            disk_id: disk,
            chunk_id: id.0.to_vec(),
        };
        let resp = self
            .client(node)?
            .get_chunk(req)
            .await
            .map_err(|s| rpc_err(node, s))?;
        let resp = resp.into_inner();
        if !resp.found {
            return Ok(None);
        }
        // The bytes crossed the network: check them against the hash recorded
        // when the chunk was written, so the check spans disk and transfer.
        if blake3::hash(&resp.data).as_bytes().as_slice() != resp.blake3.as_slice() {
            return Err(DataError::Disk(strata_disk::DiskError::Corrupt {
                chunk: id,
                what: "blake3 mismatch after transfer",
            }));
        }
        Ok(Some(Bytes::from(resp.data)))
    }

    pub(crate) async fn delete_chunk(&self, node: NodeId, disk: DiskId, id: ChunkId) -> Result<()> {
        let req = pb::DeleteChunkRequest {
            disk_id: disk,
            chunk_id: id.0.to_vec(),
        };
        self.client(node)?
            .delete_chunk(req)
            .await
            .map_err(|s| rpc_err(node, s))?;
        Ok(())
    }

    pub(crate) async fn put_record(
        &self,
        node: NodeId,
        disk: DiskId,
        key: &[u8],
        rec: Record,
    ) -> Result<()> {
        let req = pb::PutRecordRequest {
            disk_id: disk,
            key: key.to_vec(),
            record: Some(to_pb(&rec)),
        };
        self.client(node)?
            .put_record(req)
            .await
            .map_err(|s| rpc_err(node, s))?;
        Ok(())
    }

    pub(crate) async fn get_record(
        &self,
        node: NodeId,
        disk: DiskId,
        key: &[u8],
    ) -> Result<Option<Record>> {
        let req = pb::GetRecordRequest {
            disk_id: disk,
            key: key.to_vec(),
        };
        let resp = self
            .client(node)?
            .get_record(req)
            .await
            .map_err(|s| rpc_err(node, s))?;
        Ok(resp.into_inner().record.map(from_pb))
    }

    pub(crate) async fn scan(
        &self,
        node: NodeId,
        disk: DiskId,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Record)>> {
        let req = pb::ScanRecordsRequest {
            disk_id: disk,
            start: start.to_vec(),
            end: end.map(|e| e.to_vec()).unwrap_or_default(),
            limit: u32::try_from(limit).unwrap_or(u32::MAX),
        };
        let resp = self
            .client(node)?
            .scan_records(req)
            .await
            .map_err(|s| rpc_err(node, s))?;
        Ok(resp
            .into_inner()
            .records
            .into_iter()
            .filter_map(|kr| kr.record.map(|r| (kr.key, from_pb(r))))
            .collect())
    }

    pub(crate) async fn tally(
        &self,
        node: NodeId,
        disk: DiskId,
        group: &[u8],
    ) -> Result<TallyTotals> {
        let req = pb::GetTallyRequest {
            disk_id: disk,
            group: group.to_vec(),
        };
        let resp = self
            .client(node)?
            .get_tally(req)
            .await
            .map_err(|s| rpc_err(node, s))?
            .into_inner();
        Ok(TallyTotals {
            count: resp.count,
            weight: resp.weight,
            stamp: resp.stamp,
        })
    }

    pub(crate) async fn write_blocks(
        &self,
        node: NodeId,
        disk: DiskId,
        volume: u64,
        blocks: &[u64],
        data: Bytes,
    ) -> Result<()> {
        let req = pb::WriteBlocksRequest {
            disk_id: disk,
            volume,
            blocks: blocks.to_vec(),
            crc32c: crc32c::crc32c(&data),
            data: data.to_vec(),
        };
        self.client(node)?
            .write_blocks(req)
            .await
            .map_err(|s| rpc_err(node, s))?;
        Ok(())
    }

    pub(crate) async fn read_blocks(
        &self,
        node: NodeId,
        disk: DiskId,
        volume: u64,
        first_block: u64,
        count: u64,
    ) -> Result<BlockRead> {
        let req = pb::ReadBlocksRequest {
            disk_id: disk,
            volume,
            first_block,
            count,
        };
        let resp = self
            .client(node)?
            .read_blocks(req)
            .await
            .map_err(|s| rpc_err(node, s))?;
        let resp = resp.into_inner();
        let expected_len = usize::try_from(count)
            .unwrap_or(usize::MAX)
            .saturating_mul(BLOCK_BYTES);
        if crc32c::crc32c(&resp.data) != resp.crc32c
            || resp.data.len() != expected_len
            || resp.present.len() as u64 != count
        {
            return Err(DataError::Disk(strata_disk::DiskError::CorruptBlock {
                volume,
                block: first_block,
                what: "bad block read after transfer",
            }));
        }
        Ok(BlockRead {
            data: Bytes::from(resp.data),
            present: resp.present,
        })
    }

    pub(crate) async fn trim_blocks(
        &self,
        node: NodeId,
        disk: DiskId,
        volume: u64,
        first_block: u64,
        count: u64,
    ) -> Result<()> {
        let req = pb::TrimBlocksRequest {
            disk_id: disk,
            volume,
            first_block,
            count,
        };
        self.client(node)?
            .trim_blocks(req)
            .await
            .map_err(|s| rpc_err(node, s))?;
        Ok(())
    }

    pub(crate) async fn node_status(&self, node: NodeId) -> Result<pb::NodeStatusResponse> {
        let resp = self
            .client(node)?
            .node_status(pb::NodeStatusRequest {})
            .await
            .map_err(|s| rpc_err(node, s))?;
        Ok(resp.into_inner())
    }
}

fn rpc_err(node: NodeId, status: tonic::Status) -> DataError {
    if status.code() == tonic::Code::ResourceExhausted {
        return DataError::NoSpace {
            node,
            message: status.message().to_string(),
        };
    }
    DataError::Rpc {
        node,
        message: format!("{:?}: {}", status.code(), status.message()),
    }
}
