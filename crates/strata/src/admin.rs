//! `strata admin`: the Admin rpc service every node answers, and its client.

use crate::node::{NodeRecord, NODES_TABLE};
use std::sync::Arc;
use std::time::Duration;
use strata_data::DataPlane;
use strata_meta::{Meta, MetaStore};
use strata_proto::v1 as pb;
use strata_proto::v1::admin_server::{Admin, AdminServer};
use tonic::{Request, Response, Status};

pub struct AdminService {
    meta: Arc<Meta>,
    data: Arc<DataPlane>,
}

impl AdminService {
    pub fn server(meta: Arc<Meta>, data: Arc<DataPlane>) -> AdminServer<AdminService> {
        AdminServer::new(AdminService { meta, data })
    }

    async fn status_json(&self) -> serde_json::Value {
        let meta_status = self.meta.status();
        let ring = self.data.topology().map(|t| {
            let spec = t.ring.spec();
            serde_json::json!({
                "version": spec.version,
                "part_power": spec.part_power,
                "replicas": spec.replicas,
                "devices": spec.devices.len(),
            })
        });
        let mut nodes = Vec::new();
        let ids: Vec<u64> = match &self.data.topology() {
            Some(t) => {
                let mut v: Vec<u64> = t.addrs.keys().copied().collect();
                v.sort_unstable();
                v
            }
            None => vec![self.data.node_id()],
        };
        for id in ids {
            let record: Option<NodeRecord> = self
                .meta
                .get_local(NODES_TABLE, &id.to_string())
                .and_then(|v| serde_json::from_slice(&v).ok());
            let status =
                tokio::time::timeout(Duration::from_secs(2), self.data.node_status(id)).await;
            let (up, disks, hints) = match status {
                Ok(Ok(s)) => {
                    let disks: Vec<serde_json::Value> = s
                        .disks
                        .iter()
                        .map(|d| {
                            serde_json::json!({
                                "id": d.disk_id, "path": d.path, "capacity_bytes": d.capacity_bytes,
                                "used_bytes": d.used_bytes, "chunks": d.chunks, "io_backend": d.io_backend,
                                "relocated_bytes": d.relocated_bytes,
                                "straighten_pending_bytes": d.straighten_pending_bytes,
                            })
                        })
                        .collect();
                    (true, disks, s.pending_hints)
                }
                _ => (false, Vec::new(), 0),
            };
            nodes.push(serde_json::json!({
                "id": id,
                "up": up,
                "voter": meta_status.voters.contains(&id),
                "record": record,
                "disks": disks,
                "pending_hints": hints,
            }));
        }
        serde_json::json!({
            "answered_by": self.data.node_id(),
            "meta": meta_status,
            "ring": ring,
            "nodes": nodes,
        })
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_volume(
        &self,
        req: Request<pb::CreateVolumeRequest>,
    ) -> Result<Response<pb::VolumeResponse>, Status> {
        let req = req.into_inner();
        let spec = strata_volume::create(self.meta.as_ref(), &req.name, req.size_bytes)
            .await
            .map_err(|e| match e {
                strata_volume::VolumeError::Exists(_) => Status::already_exists(e.to_string()),
                strata_volume::VolumeError::Invalid(_) => Status::invalid_argument(e.to_string()),
                _ => Status::unavailable(e.to_string()),
            })?;
        let json = serde_json::to_string(&spec).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::VolumeResponse { json }))
    }

    async fn list_volumes(
        &self,
        _req: Request<pb::ListVolumesRequest>,
    ) -> Result<Response<pb::VolumeResponse>, Status> {
        let volumes = strata_volume::list_local(self.meta.as_ref());
        let json = serde_json::to_string(&volumes).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::VolumeResponse { json }))
    }

    async fn cluster_status(
        &self,
        _req: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        let json = self.status_json().await.to_string();
        Ok(Response::new(pb::ClusterStatusResponse { json }))
    }
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.1} {}", UNITS[i])
}

pub async fn print_status(addr: &str, raw: bool) -> anyhow::Result<()> {
    let mut client = pb::admin_client::AdminClient::connect(format!("http://{addr}")).await?;
    let resp = client
        .cluster_status(pb::ClusterStatusRequest {})
        .await?
        .into_inner();
    let doc: serde_json::Value = serde_json::from_str(&resp.json)?;
    if raw {
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    let m = &doc["meta"];
    println!(
        "meta: leader {}  term {}  last applied {}  (answered by node {})",
        m["leader"], m["term"], m["last_applied"], doc["answered_by"]
    );
    let r = &doc["ring"];
    println!(
        "ring: version {}  partitions 2^{}  replicas {}  devices {}",
        r["version"], r["part_power"], r["replicas"], r["devices"]
    );
    println!("nodes:");
    for n in doc["nodes"].as_array().into_iter().flatten() {
        let state = if n["up"].as_bool() == Some(true) {
            "up"
        } else {
            "DOWN"
        };
        println!(
            "  node {}  {}  rpc {}  zone {}  voter {}  pending hints {}",
            n["id"],
            state,
            n["record"]["rpc"].as_str().unwrap_or("?"),
            n["record"]["zone"].as_str().unwrap_or("?"),
            n["voter"],
            n["pending_hints"]
        );
        for d in n["disks"].as_array().into_iter().flatten() {
            let used = d["used_bytes"].as_u64().unwrap_or(0);
            let cap = d["capacity_bytes"].as_u64().unwrap_or(0);
            println!(
                "    disk {}  {} / {}  chunks {}  relocated {} (up to {} to straighten)  {}  {}",
                d["id"],
                human_bytes(used),
                human_bytes(cap),
                d["chunks"],
                human_bytes(d["relocated_bytes"].as_u64().unwrap_or(0)),
                human_bytes(d["straighten_pending_bytes"].as_u64().unwrap_or(0)),
                d["io_backend"].as_str().unwrap_or("?"),
                d["path"].as_str().unwrap_or("?")
            );
        }
    }
    Ok(())
}

pub async fn create_volume(addr: &str, name: &str, size_bytes: u64) -> anyhow::Result<()> {
    let mut client = pb::admin_client::AdminClient::connect(format!("http://{addr}")).await?;
    let req = pb::CreateVolumeRequest {
        name: name.into(),
        size_bytes,
    };
    let resp = client.create_volume(req).await?.into_inner();
    println!("{}", resp.json);
    Ok(())
}

pub async fn list_volumes(addr: &str) -> anyhow::Result<()> {
    let mut client = pb::admin_client::AdminClient::connect(format!("http://{addr}")).await?;
    let resp = client
        .list_volumes(pb::ListVolumesRequest {})
        .await?
        .into_inner();
    let doc: serde_json::Value = serde_json::from_str(&resp.json)?;
    for v in doc.as_array().into_iter().flatten() {
        println!(
            "{}  {} bytes  id {}",
            v["name"].as_str().unwrap_or("?"),
            v["size_bytes"],
            v["id"]
        );
    }
    Ok(())
}

/// `256M`, `1G`, `4096`: a size in bytes with an optional binary suffix.
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let (num, shift) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 10),
        Some((i, 'M' | 'm')) => (&s[..i], 20),
        Some((i, 'G' | 'g')) => (&s[..i], 30),
        Some((i, 'T' | 't')) => (&s[..i], 40),
        _ => (s, 0),
    };
    let n: u64 = num.parse().map_err(|_| anyhow::anyhow!("bad size {s:?}"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| anyhow::anyhow!("size {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("256M").unwrap(), 256 << 20);
        assert_eq!(parse_size("2g").unwrap(), 2 << 30);
        assert!(parse_size("12X").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
