//! Cinder's records as the meta group keeps them, and their JSON renderings.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

pub const VOLUMES: &str = "cinder.volumes";
pub const SNAPSHOTS: &str = "cinder.snapshots";
pub const TYPES: &str = "cinder.types";
pub const BACKUPS: &str = "cinder.backups";
pub const QUOTAS: &str = "cinder.quotas";

/// The volume type every volume gets when none is named; it always exists.
pub const DEFAULT_TYPE_NAME: &str = "__DEFAULT__";
pub const DEFAULT_TYPE_ID: &str = "5f2a8e3c-7b1d-4c5e-9a60-0d4b3c2e1f00";

pub const GIB: u64 = 1 << 30;

/// Now, as Cinder prints times: `2026-11-27T20:33:26.123456`.
pub fn now() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// One attachment of a volume to a server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub id: String,
    pub server_id: Option<String>,
    pub host_name: Option<String>,
    pub device: Option<String>,
    pub attached_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub id: String,
    pub project_id: String,
    pub user_id: String,
    pub name: Option<String>,
    pub description: Option<String>,
    /// GiB.
    pub size: u64,
    pub status: String,
    /// `detached` or `attached`.
    pub attach_status: String,
    pub attachments: Vec<Attachment>,
    pub volume_type_id: String,
    pub metadata: BTreeMap<String, String>,
    pub bootable: bool,
    pub readonly: bool,
    pub snapshot_id: Option<String>,
    pub source_volid: Option<String>,
    pub backup_id: Option<String>,
    pub created_at: String,
    pub updated_at: Option<String>,
    /// Whether a connection was initialized (the volume is exported).
    pub connected: bool,
    /// The image the volume was created from, as Cinder's `volume_image_metadata`.
    #[serde(default)]
    pub image_metadata: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub id: String,
    pub project_id: String,
    pub user_id: String,
    pub volume_id: String,
    pub name: Option<String>,
    pub description: Option<String>,
    pub size: u64,
    pub status: String,
    pub metadata: BTreeMap<String, String>,
    pub created_at: String,
    pub updated_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeRecord {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub is_public: bool,
    pub extra_specs: BTreeMap<String, String>,
}

impl TypeRecord {
    pub fn default_type() -> Self {
        TypeRecord {
            id: DEFAULT_TYPE_ID.into(),
            name: DEFAULT_TYPE_NAME.into(),
            description: Some("Default Volume Type".into()),
            is_public: true,
            extra_specs: BTreeMap::new(),
        }
    }
}

/// Where one 4 MiB extent of a backup lives: an object (possibly a parent backup's) and
/// the blake3 of its bytes. Extents that read as zeroes are absent from the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtentRef {
    pub object: String,
    pub blake3: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRecord {
    pub id: String,
    pub project_id: String,
    pub user_id: String,
    pub volume_id: String,
    pub snapshot_id: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub size: u64,
    pub status: String,
    pub fail_reason: Option<String>,
    pub container: String,
    pub is_incremental: bool,
    pub parent_id: Option<String>,
    pub object_count: u64,
    pub created_at: String,
    pub updated_at: Option<String>,
    pub data_timestamp: String,
}

/// Per-project quota overrides; absent fields take the defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaRecord {
    #[serde(default)]
    pub limits: BTreeMap<String, i64>,
}

/// A record a project owns, kept in one meta table and stamped when it changes.
pub trait Owned: Serialize + for<'de> Deserialize<'de> {
    const TABLE: &'static str;
    /// How faults name it: `Volume`, `Snapshot`, `Backup`.
    const KIND: &'static str;
    fn project_id(&self) -> &str;
    fn touch(&mut self, at: String);
}

macro_rules! owned {
    ($ty:ty, $table:expr, $kind:expr) => {
        impl Owned for $ty {
            const TABLE: &'static str = $table;
            const KIND: &'static str = $kind;
            fn project_id(&self) -> &str {
                &self.project_id
            }
            fn touch(&mut self, at: String) {
                self.updated_at = Some(at);
            }
        }
    };
}

owned!(VolumeRecord, VOLUMES, "Volume");
owned!(SnapshotRecord, SNAPSHOTS, "Snapshot");
owned!(BackupRecord, BACKUPS, "Backup");

pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Records are plain structs of strings, numbers and maps: they always serialize.
    serde_json::to_vec(v).unwrap_or_default()
}

pub fn decode<T: for<'de> Deserialize<'de>>(raw: &[u8]) -> Option<T> {
    match serde_json::from_slice(raw) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::error!(error = %e, "unreadable cinder record");
            None
        }
    }
}

/// `self` and `bookmark` links of a resource.
pub fn links(base: &str, version: &str, project: &str, kind: &str, id: &str) -> Value {
    json!([
        {"href": format!("{base}/{version}/{project}/{kind}/{id}"), "rel": "self"},
        {"href": format!("{base}/{project}/{kind}/{id}"), "rel": "bookmark"},
    ])
}

fn opt(v: &Option<String>) -> Value {
    v.as_ref().map_or(Value::Null, |s| Value::String(s.clone()))
}

/// Cinder's rendering of a volume (the detail view).
pub fn volume_view(v: &VolumeRecord, type_name: &str, admin: bool, link: Value) -> Value {
    let attachments: Vec<Value> = v
        .attachments
        .iter()
        .map(|a| {
            json!({
                "id": v.id,
                "attachment_id": a.id,
                "volume_id": v.id,
                "server_id": a.server_id,
                "host_name": a.host_name,
                "device": a.device,
                "attached_at": a.attached_at,
            })
        })
        .collect();
    let mut out = json!({
        "id": v.id,
        "name": opt(&v.name),
        "description": opt(&v.description),
        "size": v.size,
        "status": v.status,
        "attachments": attachments,
        "availability_zone": "nova",
        "bootable": if v.bootable { "true" } else { "false" },
        "encrypted": false,
        "multiattach": false,
        "created_at": v.created_at,
        "updated_at": opt(&v.updated_at),
        "links": link,
        "metadata": v.metadata,
        "volume_type": type_name,
        "snapshot_id": opt(&v.snapshot_id),
        "source_volid": opt(&v.source_volid),
        "user_id": v.user_id,
        "os-vol-tenant-attr:tenant_id": v.project_id,
        "replication_status": "disabled",
        "consistencygroup_id": null,
        "migration_status": null,
    });
    if !v.image_metadata.is_empty() {
        out["volume_image_metadata"] = json!(v.image_metadata);
    }
    if admin {
        let m = out.as_object_mut().expect("object");
        m.insert("os-vol-host-attr:host".into(), json!("strata@nbd#strata"));
        m.insert("os-vol-mig-status-attr:migstat".into(), Value::Null);
        m.insert("os-vol-mig-status-attr:name_id".into(), Value::Null);
    }
    out
}

pub fn snapshot_view(s: &SnapshotRecord) -> Value {
    json!({
        "id": s.id,
        "name": opt(&s.name),
        "description": opt(&s.description),
        "volume_id": s.volume_id,
        "size": s.size,
        "status": s.status,
        "created_at": s.created_at,
        "updated_at": opt(&s.updated_at),
        "metadata": s.metadata,
        "os-extended-snapshot-attributes:project_id": s.project_id,
        "os-extended-snapshot-attributes:progress": "100%",
    })
}

pub fn type_view(t: &TypeRecord) -> Value {
    json!({
        "id": t.id,
        "name": t.name,
        "description": opt(&t.description),
        "is_public": t.is_public,
        "os-volume-type-access:is_public": t.is_public,
        "extra_specs": t.extra_specs,
        "qos_specs_id": null,
    })
}

pub fn backup_view(b: &BackupRecord, link: Value) -> Value {
    json!({
        "id": b.id,
        "name": opt(&b.name),
        "description": opt(&b.description),
        "volume_id": b.volume_id,
        "snapshot_id": opt(&b.snapshot_id),
        "size": b.size,
        "status": b.status,
        "fail_reason": opt(&b.fail_reason),
        "container": b.container,
        "availability_zone": "nova",
        "is_incremental": b.is_incremental,
        "has_dependent_backups": false,
        "object_count": b.object_count,
        "created_at": b.created_at,
        "updated_at": opt(&b.updated_at),
        "data_timestamp": b.data_timestamp,
        "links": link,
    })
}

/// The summary view of list calls: id, name and links.
pub fn summary(id: &str, name: &Option<String>, link: Value) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), json!(id));
    m.insert("name".into(), opt(name));
    m.insert("links".into(), link);
    Value::Object(m)
}
