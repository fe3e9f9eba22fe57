//! The node configuration file (`strata serve --config FILE`).

use anyhow::{bail, Context};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// One node's configuration. Paths are relative to the working directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NodeConfig {
    /// This node's id; unique in the cluster and stable across restarts.
    pub node_id: u64,
    /// Failure domain of this node.
    #[serde(default = "default_zone")]
    pub zone: String,
    /// Where the node keeps its meta group, disks and local state.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// The address every service of this node binds to.
    #[serde(default = "default_bind")]
    pub bind: String,
    /// Host name put into catalog and storage URLs; defaults to `bind`.
    #[serde(default)]
    pub public_host: Option<String>,
    /// Ports of the services.
    #[serde(default)]
    pub ports: Ports,
    /// The bootstrap admin's password; else `--admin-password`, `STRATA_ADMIN_PASSWORD`,
    /// or a generated one printed at start.
    #[serde(default)]
    pub admin_password: Option<String>,
    /// Where the vhost-user-blk sockets of served volumes go (`<volume>.sock`); defaults to
    /// `<data-dir>/vhost-user`. Unix socket paths hold at most 107 bytes.
    #[serde(default)]
    pub vhost_user_dir: Option<PathBuf>,
    /// Disks of this node.
    #[serde(default = "default_disks")]
    pub disks: Vec<DiskSection>,
    /// The cluster this node belongs to.
    #[serde(default)]
    pub cluster: ClusterSection,
}

/// Ports of the services a node runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Ports {
    /// Keystone v3 (identity).
    #[serde(default = "default_keystone")]
    pub keystone: u16,
    /// Swift (object storage, TempAuth).
    #[serde(default = "default_swift")]
    pub swift: u16,
    /// Node-to-node gRPC (Raft and replica I/O).
    #[serde(default = "default_rpc")]
    pub rpc: u16,
    /// NBD exports of block volumes.
    #[serde(default = "default_nbd")]
    pub nbd: u16,
    /// Cinder v2/v3 (block storage).
    #[serde(default = "default_cinder")]
    pub cinder: u16,
    /// The compute API (today Nova's `os-volumes` family).
    #[serde(default = "default_compute")]
    pub compute: u16,
    /// Glance v2 (images).
    #[serde(default = "default_glance")]
    pub glance: u16,
}

/// One disk of a node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DiskSection {
    /// Directory of the disk's index and data file, relative to `data-dir`.
    pub path: PathBuf,
    /// A raw block device for the data instead of a preallocated file.
    #[serde(default)]
    pub device: Option<PathBuf>,
    /// Size of the data file, in bytes.
    #[serde(default = "default_capacity")]
    pub capacity_bytes: u64,
    /// Placement weight (relative share of data).
    #[serde(default = "default_weight")]
    pub weight: f64,
    /// Memory for the disk's read cache of chunks (0: none).
    #[serde(default = "default_read_cache")]
    pub read_cache_bytes: u64,
    /// Milliseconds without volume I/O after which the disk straightens volume ranges that
    /// writes scattered (0: only reads straighten what they find).
    #[serde(default = "default_straighten_idle")]
    pub straighten_idle_ms: u64,
}

fn default_straighten_idle() -> u64 {
    strata_disk::STRAIGHTEN_IDLE_MS_DEFAULT
}

fn default_read_cache() -> u64 {
    strata_disk::READ_CACHE_BYTES_DEFAULT
}

/// The cluster as every node's config states it: the same on every node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClusterSection {
    /// Copies of every chunk and record.
    #[serde(default = "default_one")]
    pub replicas: u8,
    /// Copies that must be durable before a write is acknowledged.
    #[serde(default = "default_one")]
    pub write_quorum: u8,
    /// The ring has 2^part-power partitions.
    #[serde(default = "default_part_power")]
    pub part_power: u8,
    /// The initial members (meta voters and storage nodes). Empty: this node alone.
    #[serde(default)]
    pub nodes: Vec<MemberSection>,
}

/// An initial member of the cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MemberSection {
    pub id: u64,
    /// Its node-to-node gRPC address, `host:port`.
    pub rpc: String,
    #[serde(default = "default_zone")]
    pub zone: String,
    /// How many disks it has (their ids are `id * 1000 + index`).
    #[serde(default = "default_one_u32")]
    pub disks: u32,
    /// Placement weight of each of its disks.
    #[serde(default = "default_weight")]
    pub weight: f64,
}

fn default_zone() -> String {
    "zone1".into()
}
fn default_data_dir() -> PathBuf {
    "strata-data".into()
}
fn default_bind() -> String {
    "127.0.0.1".into()
}
fn default_keystone() -> u16 {
    5000
}
fn default_swift() -> u16 {
    8080
}
fn default_rpc() -> u16 {
    7400
}
fn default_nbd() -> u16 {
    10809
}
fn default_cinder() -> u16 {
    8776
}
fn default_compute() -> u16 {
    8774
}
fn default_glance() -> u16 {
    9292
}
fn default_capacity() -> u64 {
    8 << 30
}
fn default_weight() -> f64 {
    1.0
}
fn default_one() -> u8 {
    1
}
fn default_one_u32() -> u32 {
    1
}
fn default_part_power() -> u8 {
    10
}
fn default_disks() -> Vec<DiskSection> {
    vec![DiskSection {
        path: "disk0".into(),
        device: None,
        capacity_bytes: default_capacity(),
        weight: default_weight(),
        read_cache_bytes: default_read_cache(),
        straighten_idle_ms: default_straighten_idle(),
    }]
}

impl Default for Ports {
    fn default() -> Self {
        Ports {
            keystone: default_keystone(),
            swift: default_swift(),
            rpc: default_rpc(),
            nbd: default_nbd(),
            cinder: default_cinder(),
            compute: default_compute(),
            glance: default_glance(),
        }
    }
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            replicas: 1,
            write_quorum: 1,
            part_power: default_part_power(),
            nodes: Vec::new(),
        }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        toml::from_str("node-id = 1").expect("the empty config parses")
    }
}

impl NodeConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let cfg: NodeConfig =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        cfg.validate()
            .with_context(|| format!("checking {}", path.display()))?;
        Ok(cfg)
    }

    /// The members of the cluster; a config without `[[cluster.nodes]]` is a one-node cluster.
    pub fn members(&self) -> Vec<MemberSection> {
        if self.cluster.nodes.is_empty() {
            vec![MemberSection {
                id: self.node_id,
                rpc: self.rpc_addr(),
                zone: self.zone.clone(),
                disks: self.disks.len() as u32,
                weight: self.disks.first().map(|d| d.weight).unwrap_or(1.0),
            }]
        } else {
            self.cluster.nodes.clone()
        }
    }

    pub fn rpc_addr(&self) -> String {
        format!("{}:{}", self.bind, self.ports.rpc)
    }

    pub fn public_host(&self) -> &str {
        self.public_host.as_deref().unwrap_or(&self.bind)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        let c = &self.cluster;
        if c.replicas == 0 || c.write_quorum == 0 || c.write_quorum > c.replicas {
            bail!(
                "need 1 <= write-quorum <= replicas (got {} of {})",
                c.write_quorum,
                c.replicas
            );
        }
        if !(4..=20).contains(&c.part_power) {
            bail!("part-power must be within 4..=20, got {}", c.part_power);
        }
        if self.disks.is_empty() || self.disks.len() > 999 {
            bail!("a node needs 1 to 999 disks, has {}", self.disks.len());
        }
        let members = self.members();
        if !members.iter().any(|m| m.id == self.node_id) {
            bail!("node-id {} is not among [[cluster.nodes]]", self.node_id);
        }
        let mut ids: Vec<u64> = members.iter().map(|m| m.id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != members.len() {
            bail!("duplicate node id in [[cluster.nodes]]");
        }
        // Placement never puts two replicas of a partition on one disk, and puts two on one
        // node only when there are fewer nodes than replicas. A node alone may keep its
        // replicas on its own disks (what a one-node test or bench setup wants); a cluster
        // needs a node per replica, so that losing a node loses one copy.
        let replicas = usize::from(c.replicas);
        if members.len() == 1 {
            if replicas > self.disks.len() {
                bail!(
                    "{replicas} replicas on a node alone need at least as many disks, has {}",
                    self.disks.len()
                );
            }
        } else if replicas > members.len() {
            bail!(
                "{replicas} replicas need at least as many nodes, have {}",
                members.len()
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_cluster_config_parses_and_validates() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../cluster-configs");
        let mut seen = 0;
        for dir in std::fs::read_dir(&root).expect("cluster-configs exists") {
            let dir = dir.expect("dir entry").path();
            for f in std::fs::read_dir(&dir).expect("config dir") {
                let f = f.expect("entry").path();
                if f.extension().is_some_and(|e| e == "toml") {
                    NodeConfig::load(&f).expect("config loads");
                    seen += 1;
                }
            }
        }
        assert!(seen >= 3, "expected the three-node configs, saw {seen}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<NodeConfig>("node-id = 1\nbogus = 2").is_err());
    }

    #[test]
    fn default_is_a_one_node_cluster() {
        let c = NodeConfig::default();
        c.validate().expect("default validates");
        assert_eq!(c.members().len(), 1);
        assert_eq!(c.cluster.replicas, 1);
    }

    fn one_node(disks: usize, replicas: u8) -> NodeConfig {
        let disks: String = (0..disks)
            .map(|i| format!("[[disks]]\npath = \"d{i}\"\n"))
            .collect();
        toml::from_str(&format!(
            "node-id = 1\n{disks}[cluster]\nreplicas = {replicas}\nwrite-quorum = 1\n"
        ))
        .expect("parses")
    }

    #[test]
    fn a_node_alone_keeps_its_replicas_on_its_own_disks() {
        one_node(3, 3)
            .validate()
            .expect("three disks hold three replicas");
        one_node(4, 3)
            .validate()
            .expect("four disks hold three replicas");
        let e = one_node(2, 3).validate().expect_err("two disks cannot");
        assert!(e.to_string().contains("at least as many disks"), "{e}");
    }

    #[test]
    fn a_cluster_needs_a_node_per_replica() {
        let mut c = one_node(3, 3);
        c.cluster.nodes = toml::from_str::<ClusterSection>(
            "[[nodes]]\nid = 1\nrpc = \"127.0.0.1:1\"\n[[nodes]]\nid = 2\nrpc = \"127.0.0.2:1\"\n",
        )
        .expect("members")
        .nodes;
        let e = c
            .validate()
            .expect_err("two nodes cannot hold three replicas");
        assert!(e.to_string().contains("at least as many nodes"), "{e}");
    }
}
