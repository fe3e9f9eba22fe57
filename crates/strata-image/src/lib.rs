//! Images: the records the Image API (Glance v2) serves and the bytes behind them.
//!
//! An image record lives in the meta table [`IMAGES`]; its members in [`MEMBERS`]. Once
//! uploaded, an image's bytes are a frozen chain of block layers under the snapshot record
//! `image-<id>` ([`data_name`]), the same kind of record a volume snapshot is, so the
//! Block Storage gateway can clone a volume from an image without copying it ([`data`]
//! writes and reads the bytes). Owns who may see an image ([`Caller::may_read`]); knows
//! nothing of HTTP.

pub mod convert;
pub mod data;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use strata_meta::{Check, MetaStore, Op};

/// Meta table of image records, keyed by image id.
pub const IMAGES: &str = "image.images";
/// Meta table of image members, keyed `<image id>/<project id>`.
pub const MEMBERS: &str = "image.members";

/// The largest image accepted, as Glance's default `image_size_cap` (1 TiB).
pub const SIZE_CAP: u64 = 1 << 40;

/// Disk formats Glance accepts.
pub const DISK_FORMATS: &[&str] = &[
    "ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2", "vdi", "iso", "ploop",
];
/// Container formats Glance accepts.
pub const CONTAINER_FORMATS: &[&str] = &[
    "ami",
    "ari",
    "aki",
    "bare",
    "ovf",
    "ova",
    "docker",
    "compressed",
];
/// Visibilities.
pub const VISIBILITIES: &[&str] = &["public", "private", "shared", "community"];

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    /// The request body ended early or could not be read.
    #[error("{0}")]
    Body(String),
    #[error("image data: {0}")]
    Storage(String),
    #[error(transparent)]
    Meta(#[from] strata_meta::MetaError),
}

impl From<strata_volume::VolumeError> for ImageError {
    fn from(e: strata_volume::VolumeError) -> Self {
        use strata_volume::VolumeError as E;
        match e {
            E::Invalid(m) => ImageError::Invalid(m),
            E::NotFound(m) => ImageError::NotFound(m),
            E::Exists(m) | E::Conflict(m) => ImageError::Conflict(m),
            E::Meta(e) => ImageError::Meta(e),
            E::Codec(m) => ImageError::Storage(m),
        }
    }
}

/// An image record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub id: String,
    pub name: Option<String>,
    /// The owning project.
    pub owner: String,
    /// `queued`, `saving`, `active` or `deactivated`.
    pub status: String,
    pub visibility: String,
    pub protected: bool,
    pub os_hidden: bool,
    /// In the order added, without repeats.
    pub tags: Vec<String>,
    pub disk_format: Option<String>,
    pub container_format: Option<String>,
    pub min_disk: u64,
    pub min_ram: u64,
    pub size: Option<u64>,
    pub virtual_size: Option<u64>,
    /// MD5 of the bytes, hex.
    pub checksum: Option<String>,
    pub os_hash_algo: Option<String>,
    pub os_hash_value: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// The caller's own string properties.
    pub properties: BTreeMap<String, String>,
    /// The block snapshot record holding the bytes (None before an upload, and for an
    /// image of zero bytes).
    pub data: Option<String>,
}

/// A project an image is shared with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub image_id: String,
    pub member_id: String,
    /// `pending`, `accepted` or `rejected`.
    pub status: String,
    pub created_at: String,
    pub updated_at: String,
}

/// The name of the hidden volume an upload writes, and of the snapshot record it becomes.
pub fn data_name(image_id: &str) -> String {
    format!("image-{image_id}")
}

pub fn member_key(image_id: &str, member: &str) -> String {
    format!("{image_id}/{member}")
}

/// Now, as Glance writes timestamps.
pub fn now() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records always encode")
}

pub fn decode<T: for<'de> Deserialize<'de>>(raw: &[u8]) -> Option<T> {
    match serde_json::from_slice(raw) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::error!(error = %e, "unreadable image record");
            None
        }
    }
}

/// Who is asking, for visibility decisions.
#[derive(Debug, Clone)]
pub struct Caller {
    pub project: String,
    pub admin: bool,
}

impl Caller {
    /// Whether the caller may see `image` at all (show, download, clone). `member` is the
    /// caller's membership row of that image, if any.
    pub fn may_read(&self, image: &ImageRecord, member: Option<&MemberRecord>) -> bool {
        self.admin
            || image.owner == self.project
            || matches!(image.visibility.as_str(), "public" | "community")
            || (image.visibility == "shared" && member.is_some())
    }

    /// Whether the caller may change or delete `image`.
    pub fn may_change(&self, image: &ImageRecord) -> bool {
        self.admin || image.owner == self.project
    }
}

impl ImageRecord {
    /// A new image of `owner`, `queued` (no data yet), with Glance's defaults.
    pub fn queued(id: &str, owner: &str) -> Self {
        let now = now();
        ImageRecord {
            id: id.into(),
            name: None,
            owner: owner.into(),
            status: "queued".into(),
            visibility: "shared".into(),
            protected: false,
            os_hidden: false,
            tags: vec![],
            disk_format: None,
            container_format: None,
            min_disk: 0,
            min_ram: 0,
            size: None,
            virtual_size: None,
            checksum: None,
            os_hash_algo: None,
            os_hash_value: None,
            created_at: now.clone(),
            updated_at: now,
            properties: BTreeMap::new(),
            data: None,
        }
    }
}

/// Whether `caller` may see `image`, reading its membership row only when that decides it.
pub async fn readable(
    meta: &dyn MetaStore,
    caller: &Caller,
    image: &ImageRecord,
) -> Result<bool, ImageError> {
    let member = if image.visibility == "shared" && !caller.may_change(image) {
        member(meta, &image.id, &caller.project).await?.map(|m| m.0)
    } else {
        None
    };
    Ok(caller.may_read(image, member.as_ref()))
}

/// Delete an upload's hidden volume if it is there (its layer goes to the collector).
pub(crate) async fn drop_hidden(meta: &dyn MetaStore, image_id: &str) -> Result<(), ImageError> {
    match strata_volume::records::delete_with(meta, &data_name(image_id), vec![], vec![]).await {
        Ok(()) | Err(strata_volume::VolumeError::NotFound(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// One image record, linearizable, with its stored bytes.
pub async fn get(
    meta: &dyn MetaStore,
    id: &str,
) -> Result<Option<(ImageRecord, Vec<u8>)>, ImageError> {
    Ok(meta
        .get(IMAGES, id)
        .await?
        .and_then(|raw| decode(&raw).map(|r| (r, raw))))
}

/// Every image record.
pub async fn list(meta: &dyn MetaStore) -> Result<Vec<ImageRecord>, ImageError> {
    Ok(meta
        .scan(IMAGES, "", None, usize::MAX)
        .await?
        .into_iter()
        .filter_map(|(_, raw)| decode(&raw))
        .collect())
}

/// The members of one image.
pub async fn members(
    meta: &dyn MetaStore,
    image_id: &str,
) -> Result<Vec<MemberRecord>, ImageError> {
    let prefix = format!("{image_id}/");
    Ok(meta
        .scan(MEMBERS, &prefix, None, usize::MAX)
        .await?
        .into_iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .filter_map(|(_, raw)| decode(&raw))
        .collect())
}

/// Every membership of one project, keyed by image id.
pub async fn memberships(
    meta: &dyn MetaStore,
    project: &str,
) -> Result<BTreeMap<String, MemberRecord>, ImageError> {
    Ok(meta
        .scan(MEMBERS, "", None, usize::MAX)
        .await?
        .into_iter()
        .filter_map(|(_, raw)| decode::<MemberRecord>(&raw))
        .filter(|m| m.member_id == project)
        .map(|m| (m.image_id.clone(), m))
        .collect())
}

/// One membership row, with its stored bytes.
pub async fn member(
    meta: &dyn MetaStore,
    image_id: &str,
    project: &str,
) -> Result<Option<(MemberRecord, Vec<u8>)>, ImageError> {
    Ok(meta
        .get(MEMBERS, &member_key(image_id, project))
        .await?
        .and_then(|raw| decode(&raw).map(|r| (r, raw))))
}

/// Delete an image: its record, its members and its data's snapshot record in one
/// transaction, checked against the record as read. The data's layers go to the block
/// collector, which frees them once no volume cloned from the image names them.
pub async fn delete(
    meta: &dyn MetaStore,
    image: &ImageRecord,
    raw: Vec<u8>,
) -> Result<(), ImageError> {
    let mut ops = vec![Op::Delete {
        table: IMAGES.into(),
        key: image.id.clone(),
    }];
    for m in members(meta, &image.id).await? {
        ops.push(Op::Delete {
            table: MEMBERS.into(),
            key: member_key(&image.id, &m.member_id),
        });
    }
    let check = Check::Equals {
        table: IMAGES.into(),
        key: image.id.clone(),
        value: raw,
    };
    // An upload cut short by a crash (or still running) may have left its hidden volume:
    // it goes too.
    drop_hidden(meta, &image.id).await?;
    match &image.data {
        Some(snap) => strata_volume::records::delete_snapshot_checked(meta, snap, vec![check], ops)
            .await
            .map_err(|e| match e {
                strata_volume::VolumeError::NotFound(_) => ImageError::Storage(format!(
                    "image {} names data {snap} that is gone",
                    image.id
                )),
                e => e.into(),
            }),
        None => {
            let out = meta
                .write(strata_meta::Txn {
                    checks: vec![check],
                    ops,
                })
                .await?;
            if out.succeeded {
                Ok(())
            } else {
                Err(ImageError::Conflict(format!(
                    "image {} changed while being deleted",
                    image.id
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(owner: &str, visibility: &str) -> ImageRecord {
        let mut r = ImageRecord::queued("i", owner);
        r.status = "active".into();
        r.visibility = visibility.into();
        r
    }

    #[test]
    fn visibility_decides_who_reads() {
        let other = Caller {
            project: "b".into(),
            admin: false,
        };
        let admin = Caller {
            project: "c".into(),
            admin: true,
        };
        let m = MemberRecord {
            image_id: "i".into(),
            member_id: "b".into(),
            status: "pending".into(),
            created_at: now(),
            updated_at: now(),
        };
        assert!(!other.may_read(&image("a", "private"), None));
        assert!(!other.may_read(&image("a", "private"), Some(&m)));
        assert!(!other.may_read(&image("a", "shared"), None));
        assert!(other.may_read(&image("a", "shared"), Some(&m)));
        assert!(other.may_read(&image("a", "public"), None));
        assert!(other.may_read(&image("a", "community"), None));
        assert!(admin.may_read(&image("a", "private"), None));
        assert!(!other.may_change(&image("a", "public")));
        assert!(admin.may_change(&image("a", "private")));
    }
}
