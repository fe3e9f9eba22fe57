//! Volumes: CRUD, metadata and actions, with Cinder's status machine.

use axum::response::Response;
use http::StatusCode;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};

use crate::model::{self, Attachment, VolumeRecord, GIB, SNAPSHOTS, VOLUMES};
use crate::{
    bad_request, del, not_found, put, quotas, reply, text_field, types, unchanged, volume_fault,
    Req, Result,
};
use strata_volume::records as block;

/// Statuses a volume may be deleted from.
const DELETABLE: &[&str] = &[
    "available",
    "error",
    "error_restoring",
    "error_extending",
    "error_managing",
];

/// Every status `os-reset_status` accepts.
const STATUSES: &[&str] = &[
    "creating",
    "available",
    "attaching",
    "in-use",
    "detaching",
    "maintenance",
    "deleting",
    "error",
    "error_deleting",
    "backing-up",
    "restoring-backup",
    "error_restoring",
    "error_extending",
    "downloading",
    "uploading",
    "retyping",
    "extending",
    "reserved",
];

pub(crate) fn invalid_status(id: &str, status: &str, wanted: &[&str]) -> crate::Fault {
    bad_request(format!(
        "Invalid volume: Volume {id} status must be {}, but current status is: {status}.",
        wanted.join(" or ")
    ))
}

/// A volume the caller may see, with its stored bytes.
pub(crate) async fn load(req: &Req, id: &str) -> Result<(VolumeRecord, Vec<u8>)> {
    req.visible(id).await
}

pub(crate) async fn view(req: &Req, v: &VolumeRecord) -> Result<Value> {
    let names = types::names(req).await?;
    Ok(view_with(req, v, &names))
}

fn view_with(req: &Req, v: &VolumeRecord, type_names: &HashMap<String, String>) -> Value {
    let type_name = type_names
        .get(&v.volume_type_id)
        .cloned()
        .unwrap_or_else(|| v.volume_type_id.clone());
    model::volume_view(v, &type_name, req.is_admin(), req.links("volumes", &v.id))
}

/// Change a volume's record in one checked transaction.
pub(crate) async fn change(
    req: &Req,
    id: &str,
    f: impl FnOnce(&mut VolumeRecord) -> Result<()>,
) -> Result<VolumeRecord> {
    req.change(id, f).await
}

fn filters_match(req: &Req, v: &VolumeRecord) -> bool {
    let q = &req.query;
    q.get("name").is_none_or(|n| v.name.as_deref() == Some(n))
        && q.get("status").is_none_or(|s| &v.status == s)
        && q.get("bootable")
            .is_none_or(|b| v.bootable == matches!(b.to_ascii_lowercase().as_str(), "true" | "1"))
}

/// Sort by `created_at` (newest first, as Cinder does), then page with `marker` and `limit`.
pub(crate) fn page<T>(
    req: &Req,
    mut items: Vec<T>,
    created: impl Fn(&T) -> &str,
    id: impl Fn(&T) -> &str,
) -> Result<Vec<T>> {
    items.sort_by(|a, b| created(b).cmp(created(a)).then(id(b).cmp(id(a))));
    if let Some(marker) = req.query.get("marker") {
        let at = items
            .iter()
            .position(|x| id(x) == marker)
            .ok_or_else(|| bad_request(format!("marker [{marker}] not found")))?;
        items.drain(..=at);
    }
    if let Some(limit) = req.query.get("limit") {
        let n: usize = limit
            .parse()
            .map_err(|_| bad_request(format!("Invalid limit {limit:?}")))?;
        items.truncate(n);
    }
    Ok(items)
}

pub(crate) async fn list(req: &Req, detail: bool) -> Result<Response> {
    let all = req.list::<VolumeRecord>(VOLUMES, |v| &v.project_id).await?;
    let matching: Vec<_> = all.into_iter().filter(|v| filters_match(req, v)).collect();
    let items = page(req, matching, |v| &v.created_at, |v| &v.id)?;
    let names = types::names(req).await?;
    let out: Vec<Value> = items
        .iter()
        .map(|v| {
            if detail {
                view_with(req, v, &names)
            } else {
                model::summary(&v.id, &v.name, req.links("volumes", &v.id))
            }
        })
        .collect();
    Ok(reply(StatusCode::OK, json!({"volumes": out})))
}

pub(crate) async fn show(req: &Req, id: &str) -> Result<Response> {
    let (v, _) = load(req, id).await?;
    Ok(reply(
        StatusCode::OK,
        json!({"volume": view(req, &v).await?}),
    ))
}

/// A positive integer given as a JSON number or a numeric string.
pub(crate) fn int_field(m: &Map<String, Value>, key: &str) -> Result<Option<u64>> {
    let bad = || {
        bad_request(format!(
            "Invalid input received: {key} must be an integer greater than 0."
        ))
    };
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_u64().filter(|&n| n > 0).map(Some).ok_or_else(bad),
        Some(Value::String(s)) => s
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|&n| n > 0)
            .map(Some)
            .ok_or_else(bad),
        Some(_) => Err(bad()),
    }
}

pub(crate) fn metadata_field(
    m: &Map<String, Value>,
    key: &str,
) -> Result<BTreeMap<String, String>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(o)) => o
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) if !k.is_empty() && k.len() <= 255 && s.len() <= 255 => {
                    Ok((k.clone(), s.clone()))
                }
                _ => Err(bad_request(format!(
                    "Invalid metadata: {key} keys and values must be strings of 1 to 255 characters."
                ))),
            })
            .collect(),
        Some(_) => Err(bad_request(format!("Invalid metadata: {key} must be an object."))),
    }
}

pub(crate) async fn create(req: &Req) -> Result<Response> {
    req.require_writer()?;
    let body = req.body_object("volume")?;
    let name = text_field(&body, &["name", "display_name"])?;
    let description = text_field(&body, &["description", "display_description"])?;
    let metadata = metadata_field(&body, "metadata")?;
    let size = int_field(&body, "size")?;
    let snapshot_id = text_field(&body, &["snapshot_id"])?;
    let source_volid = text_field(&body, &["source_volid"])?;
    let image_ref = text_field(&body, &["imageRef"])?;
    if let Some(az) = text_field(&body, &["availability_zone"])? {
        if az != "nova" {
            return Err(bad_request(format!(
                "Invalid input received: Availability zone '{az}' is invalid."
            )));
        }
    }
    if body.get("multiattach").and_then(Value::as_bool) == Some(true) {
        return Err(bad_request(
            "Invalid input received: multiattach is not supported by this volume type.",
        ));
    }
    if [
        snapshot_id.is_some(),
        source_volid.is_some(),
        image_ref.is_some(),
    ]
    .iter()
    .filter(|&&x| x)
    .count()
        > 1
    {
        return Err(bad_request(
            "Invalid input received: give at most one of snapshot_id, source_volid and imageRef.",
        ));
    }
    let type_id = types::resolve(req, text_field(&body, &["volume_type"])?.as_deref()).await?;

    let id = model::new_id();
    let mut image_metadata = BTreeMap::new();
    let mut convert = None;
    let (source_size, mut checks, engine, bootable) = if let Some(sid) = &snapshot_id {
        let (snap, raw) = crate::snapshots::load(req, sid).await?;
        if snap.status != "available" {
            return Err(bad_request(format!(
                "Invalid snapshot: Originating snapshot status must be one of 'available' values, but is {}.",
                snap.status
            )));
        }
        let engine_snap = block::get_snapshot(req.gw.meta.as_ref(), sid)
            .await
            .map_err(volume_fault)?
            .ok_or_else(|| not_found(format!("Snapshot {sid} could not be found.")))?;
        (
            snap.size,
            vec![unchanged(SNAPSHOTS, sid, raw)],
            Some(engine_snap),
            false,
        )
    } else if let Some(src) = &source_volid {
        let (vol, _) = load(req, src).await?;
        if !matches!(vol.status.as_str(), "available" | "in-use") {
            return Err(invalid_status(src, &vol.status, &["available", "in-use"]));
        }
        // An instant clone: freeze the source's writable layer under a snapshot record
        // only the clone's creation sees, clone it, and drop the record (the layers stay
        // referenced by both volumes).
        let internal = format!("clone-{id}");
        let snap = block::snapshot(req.gw.meta.as_ref(), src, &internal)
            .await
            .map_err(volume_fault)?;
        req.gw.volumes.sync().await;
        (vol.size, vec![], Some(snap), vol.bootable)
    } else if let Some(iid) = &image_ref {
        let (img, check, snap) = image_source(req, iid).await?;
        image_metadata = image_metadata_of(&img);
        if needs_conversion(&img) {
            // Written after the record exists, by the conversion below.
            convert = Some((img.clone(), snap));
            (img_size_gib(&img), vec![check], None, true)
        } else {
            (img_size_gib(&img), vec![check], snap, true)
        }
    } else {
        (0, vec![], None, false)
    };
    let size = match size {
        Some(s) => s,
        None if source_size > 0 => source_size,
        None => return Err(bad_request("Invalid input received: size is required.")),
    };
    if size < source_size {
        return Err(bad_request(format!(
            "Invalid input received: Volume size '{size}'GB cannot be smaller than the source size '{source_size}'GB."
        )));
    }
    quotas::check(req, &[("volumes", 1), ("gigabytes", size as i64)]).await?;

    let spec = match &engine {
        Some(snap) => {
            let (spec, check) =
                block::clone_of(snap, &id, size * GIB, false).map_err(volume_fault)?;
            checks.push(check);
            spec
        }
        None => block::new_volume(&id, size * GIB, false),
    };
    let mut record = new_record(req, &id, name, size, type_id);
    record.description = description;
    record.metadata = metadata;
    record.bootable = bootable;
    record.snapshot_id = snapshot_id;
    record.source_volid = source_volid.clone();
    record.image_metadata = image_metadata;
    if convert.is_some() {
        record.status = "downloading".into();
    }
    let created = insert(req, spec, checks, &record).await;
    if let Some(snap) = engine.filter(|_| source_volid.is_some()) {
        if let Err(e) = block::delete_snapshot_with(req.gw.meta.as_ref(), &snap.name, vec![]).await
        {
            tracing::warn!(snapshot = %snap.name, error = %e, "cannot drop a clone's snapshot record");
        }
    }
    created?;
    match convert {
        Some((img, Some(snap))) => spawn_conversion(req, &record.id, img, snap),
        Some((_, None)) => {
            // An image of zero bytes converts to nothing: the empty volume is the answer.
            crate::backups::update_volume_status(&req.gw, &record.id, "downloading", "available")
                .await;
            record.status = "available".into();
        }
        None => {}
    }
    Ok(reply(
        StatusCode::ACCEPTED,
        json!({"volume": view(req, &record).await?}),
    ))
}

/// A fresh `available`, detached volume record of the caller's project.
fn new_record(
    req: &Req,
    id: &str,
    name: Option<String>,
    size: u64,
    type_id: String,
) -> VolumeRecord {
    VolumeRecord {
        id: id.into(),
        project_id: req.project.clone(),
        user_id: req.ctx.user_id.clone(),
        name,
        description: None,
        size,
        status: "available".into(),
        attach_status: "detached".into(),
        attachments: vec![],
        volume_type_id: type_id,
        metadata: BTreeMap::new(),
        bootable: false,
        readonly: false,
        snapshot_id: None,
        source_volid: None,
        backup_id: None,
        created_at: model::now(),
        updated_at: None,
        connected: false,
        image_metadata: BTreeMap::new(),
    }
}

/// The GiB a volume made from `img` needs at least: its bytes, and its `min_disk`.
fn img_size_gib(img: &strata_image::ImageRecord) -> u64 {
    img.size.unwrap_or(0).div_ceil(GIB).max(img.min_disk).max(1)
}

/// What a volume made from `img` shows as `volume_image_metadata`.
fn image_metadata_of(img: &strata_image::ImageRecord) -> BTreeMap<String, String> {
    let mut m: BTreeMap<String, String> = img.properties.clone();
    let mut set = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            m.insert(k.into(), v);
        }
    };
    set("image_id", Some(img.id.clone()));
    set("image_name", img.name.clone());
    set("checksum", img.checksum.clone());
    set("container_format", img.container_format.clone());
    set("disk_format", img.disk_format.clone());
    set("min_disk", Some(img.min_disk.to_string()));
    set("min_ram", Some(img.min_ram.to_string()));
    set("size", img.size.map(|s| s.to_string()));
    m
}

/// The image a volume is created from: visible to the caller's project, `active`, and
/// raw bytes (`raw` or `iso`; other formats would need converting). Returns the record,
/// a check that it is unchanged when the volume is recorded, and the frozen chain holding
/// its bytes (None for an image of zero bytes).
async fn image_source(
    req: &Req,
    iid: &str,
) -> Result<(
    strata_image::ImageRecord,
    strata_meta::Check,
    Option<block::SnapshotSpec>,
)> {
    let meta = req.gw.meta.as_ref();
    let missing = || not_found(format!("Image {iid} could not be found."));
    let (img, raw) = strata_image::get(meta, iid)
        .await
        .map_err(image_fault)?
        .ok_or_else(missing)?;
    let caller = strata_image::Caller {
        project: req.project.clone(),
        admin: req.is_admin(),
    };
    if !strata_image::readable(meta, &caller, &img)
        .await
        .map_err(image_fault)?
    {
        return Err(missing());
    }
    if img.status != "active" {
        return Err(bad_request(format!(
            "Invalid image identifier or unable to access requested image: image {iid} is {}, not active.",
            img.status
        )));
    }
    let format = img.disk_format.as_deref().unwrap_or("raw");
    if !matches!(format, "raw" | "iso") && !needs_conversion(&img) {
        return Err(bad_request(format!(
            "Image {iid} is {format}: volumes are made from raw, iso, qcow2, vmdk, vdi, vhd and vhdx images."
        )));
    }
    let snap = match &img.data {
        None => None,
        Some(name) => Some(
            block::get_snapshot(meta, name)
                .await
                .map_err(volume_fault)?
                .ok_or_else(|| crate::internal(format!("The data of image {iid} is missing.")))?,
        ),
    };
    let check = unchanged(strata_image::IMAGES, iid, raw);
    Ok((img, check, snap))
}

/// Whether a volume made from `img` needs its bytes converted to raw (qemu-img).
fn needs_conversion(img: &strata_image::ImageRecord) -> bool {
    img.disk_format
        .as_deref()
        .and_then(strata_image::convert::qemu_format)
        .is_some()
}

/// Convert an image into a new volume in the background: `downloading` until it is done,
/// then `available`, or `error` (with the reason in the log).
fn spawn_conversion(
    req: &Req,
    volume_id: &str,
    img: strata_image::ImageRecord,
    snap: block::SnapshotSpec,
) {
    let gw = req.gw.clone();
    let vid = volume_id.to_string();
    tokio::spawn(async move {
        let result = async {
            let spec = block::get(gw.meta.as_ref(), &vid)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("volume {vid} has no block record"))?;
            let vol =
                strata_volume::Volume::new(spec, gw.data.clone(), gw.volumes.insync().clone());
            gw.images
                .convert_into(&img, &snap, &vol)
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        let status = match &result {
            Ok(virtual_size) => {
                tracing::info!(volume = %vid, image = %img.id, virtual_size, "image converted into volume");
                "available"
            }
            Err(e) => {
                tracing::error!(volume = %vid, image = %img.id, error = %e, "image conversion failed");
                "error"
            }
        };
        crate::backups::update_volume_status(&gw, &vid, "downloading", status).await;
    });
}

fn image_fault(e: strata_image::ImageError) -> crate::Fault {
    use strata_image::ImageError as E;
    match e {
        E::Meta(e) => crate::meta_fault(e),
        E::NotFound(m) => not_found(m),
        other => crate::internal(other.to_string()),
    }
}

/// Record a volume and its block record in one transaction.
async fn insert(
    req: &Req,
    spec: block::VolumeSpec,
    checks: Vec<strata_meta::Check>,
    record: &VolumeRecord,
) -> Result<()> {
    block::create_with(
        req.gw.meta.as_ref(),
        spec,
        checks,
        vec![put(VOLUMES, &record.id, model::encode(record))],
    )
    .await
    .map_err(volume_fault)?;
    tracing::info!(volume = %record.id, size = record.size, project = %req.project, "volume created");
    Ok(())
}

/// Create an empty volume of the default type (for a restore into a new volume).
pub(crate) async fn create_plain(
    req: &Req,
    name: Option<String>,
    size: u64,
) -> Result<VolumeRecord> {
    quotas::check(req, &[("volumes", 1), ("gigabytes", size as i64)]).await?;
    let id = model::new_id();
    let record = new_record(req, &id, name, size, model::DEFAULT_TYPE_ID.into());
    insert(
        req,
        block::new_volume(&id, size * GIB, false),
        vec![],
        &record,
    )
    .await?;
    Ok(record)
}

pub(crate) async fn update(req: &Req, id: &str) -> Result<Response> {
    req.require_writer()?;
    let body = req.body_object("volume")?;
    let name = text_field(&body, &["name", "display_name"])?;
    let description = text_field(&body, &["description", "display_description"])?;
    let metadata = body
        .contains_key("metadata")
        .then(|| metadata_field(&body, "metadata"))
        .transpose()?;
    if name.is_none() && description.is_none() && metadata.is_none() {
        return Err(bad_request(
            "Invalid input received: give at least one of name, description and metadata.",
        ));
    }
    let v = change(req, id, |v| {
        if let Some(n) = name {
            v.name = Some(n);
        }
        if let Some(d) = description {
            v.description = Some(d);
        }
        if let Some(m) = metadata {
            v.metadata = m;
        }
        Ok(())
    })
    .await?;
    Ok(reply(
        StatusCode::OK,
        json!({"volume": view(req, &v).await?}),
    ))
}

/// Snapshots of a volume (linearizable).
async fn snapshots_of(req: &Req, id: &str) -> Result<Vec<model::SnapshotRecord>> {
    let rows = req
        .gw
        .meta
        .scan(SNAPSHOTS, "", None, usize::MAX)
        .await
        .map_err(crate::meta_fault)?;
    Ok(rows
        .into_iter()
        .filter_map(|(_, raw)| model::decode::<model::SnapshotRecord>(&raw))
        .filter(|s| s.volume_id == id)
        .collect())
}

pub(crate) async fn delete(req: &Req, id: &str) -> Result<Response> {
    req.require_writer()?;
    let cascade = req
        .query
        .get("cascade")
        .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes"));
    remove(req, id, cascade, false).await?;
    Ok(reply(StatusCode::ACCEPTED, Value::Null).map_empty())
}

async fn remove(req: &Req, id: &str, cascade: bool, force: bool) -> Result<()> {
    let (v, _) = load(req, id).await?;
    if !force && (!DELETABLE.contains(&v.status.as_str()) || v.attach_status == "attached") {
        return Err(bad_request(format!(
            "Invalid volume: Volume status must be available or error or error_restoring or error_extending or error_managing and must not be migrating, attached, belong to a group, have snapshots or be disassociated from snapshots after volume transfer. (volume {id} is {})",
            v.status
        )));
    }
    let snaps = snapshots_of(req, id).await?;
    if !snaps.is_empty() {
        if !cascade {
            return Err(bad_request(format!(
                "Invalid volume: Volume {id} still has {} dependent snapshots.",
                snaps.len()
            )));
        }
        for s in snaps {
            crate::snapshots::remove(req, &s.id, true).await?;
        }
    }
    let (_, raw) = load(req, id).await?;
    block::delete_with(
        req.gw.meta.as_ref(),
        id,
        vec![unchanged(VOLUMES, id, raw)],
        vec![del(VOLUMES, id)],
    )
    .await
    .map_err(volume_fault)?;
    req.gw.volumes.sync().await;
    tracing::info!(volume = %id, "volume deleted");
    Ok(())
}

/// Empty-bodied replies (202/204 with no JSON).
trait MapEmpty {
    fn map_empty(self) -> Response;
}

impl MapEmpty for Response {
    fn map_empty(self) -> Response {
        let (mut parts, _) = self.into_parts();
        parts.headers.remove(http::header::CONTENT_TYPE);
        Response::from_parts(parts, axum::body::Body::empty())
    }
}

pub(crate) fn accepted() -> Response {
    reply(StatusCode::ACCEPTED, Value::Null).map_empty()
}

pub(crate) async fn action(req: &Req, id: &str) -> Result<Response> {
    let body: Value = req.body()?;
    let Some((name, args)) =
        body.as_object()
            .and_then(|o| if o.len() == 1 { o.iter().next() } else { None })
    else {
        return Err(bad_request("An action body names exactly one action."));
    };
    let args = args.as_object().cloned().unwrap_or_default();
    req.require_writer()?;
    match name.as_str() {
        "os-reserve" => transition(req, id, &["available"], "attaching").await,
        "os-unreserve" => transition(req, id, &["attaching"], "available").await,
        "os-begin_detaching" => transition(req, id, &["in-use"], "detaching").await,
        "os-roll_detaching" => transition(req, id, &["detaching"], "in-use").await,
        "os-attach" => attach(req, id, &args).await,
        "os-detach" => detach(req, id, &args).await,
        "os-initialize_connection" => initialize_connection(req, id, &args).await,
        "os-terminate_connection" => terminate_connection(req, id).await,
        "os-extend" => extend(req, id, &args).await,
        "os-reset_status" => reset_status(req, id, &args).await,
        "os-force_delete" => {
            req.require_admin()?;
            remove(req, id, false, true).await?;
            Ok(accepted())
        }
        "os-set_bootable" => {
            let bootable = bool_arg(&args, "bootable")?;
            change(req, id, |v| {
                v.bootable = bootable;
                Ok(())
            })
            .await?;
            Ok(reply(StatusCode::OK, Value::Null).map_empty())
        }
        "os-update_readonly_flag" => {
            let readonly = bool_arg(&args, "readonly")?;
            change(req, id, |v| {
                v.readonly = readonly;
                Ok(())
            })
            .await?;
            Ok(accepted())
        }
        "os-retype" => {
            let wanted = args
                .get("new_type")
                .and_then(Value::as_str)
                .map(str::to_string);
            let type_id = types::resolve(req, wanted.as_deref()).await?;
            change(req, id, |v| {
                if v.status != "available" {
                    return Err(invalid_status(id, &v.status, &["available"]));
                }
                v.volume_type_id = type_id;
                Ok(())
            })
            .await?;
            Ok(accepted())
        }
        "os-volume_upload_image" => Err(bad_request(
            "Invalid input received: no image service is configured.",
        )),
        other => Err(bad_request(format!("There is no such action: {other}"))),
    }
}

fn bool_arg(args: &Map<String, Value>, key: &str) -> Result<bool> {
    match args.get(key) {
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) => match s.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(bad_request(format!(
                "Invalid input received: {key} must be a boolean."
            ))),
        },
        _ => Err(bad_request(format!(
            "Invalid input received: {key} must be a boolean."
        ))),
    }
}

async fn transition(req: &Req, id: &str, from: &[&str], to: &str) -> Result<Response> {
    change(req, id, |v| {
        if !from.contains(&v.status.as_str()) {
            return Err(invalid_status(id, &v.status, from));
        }
        v.status = to.into();
        Ok(())
    })
    .await?;
    Ok(accepted())
}

async fn attach(req: &Req, id: &str, args: &Map<String, Value>) -> Result<Response> {
    let s = |k: &str| args.get(k).and_then(Value::as_str).map(str::to_string);
    let server_id = s("instance_uuid");
    let host_name = s("host_name");
    if server_id.is_none() && host_name.is_none() {
        return Err(bad_request(
            "Invalid request to attach volume: give instance_uuid or host_name.",
        ));
    }
    let device = s("mountpoint");
    if device.is_none() {
        return Err(bad_request(
            "Invalid request to attach volume: mountpoint is required.",
        ));
    }
    change(req, id, |v| {
        if !matches!(v.status.as_str(), "available" | "attaching" | "reserved") {
            return Err(invalid_status(id, &v.status, &["available", "attaching"]));
        }
        v.status = "in-use".into();
        v.attach_status = "attached".into();
        v.attachments.push(Attachment {
            id: model::new_id(),
            server_id,
            host_name,
            device,
            attached_at: model::now(),
        });
        Ok(())
    })
    .await?;
    Ok(accepted())
}

async fn detach(req: &Req, id: &str, args: &Map<String, Value>) -> Result<Response> {
    let which = args
        .get("attachment_id")
        .and_then(Value::as_str)
        .map(str::to_string);
    change(req, id, |v| {
        if !matches!(v.status.as_str(), "in-use" | "detaching") || v.attachments.is_empty() {
            return Err(invalid_status(id, &v.status, &["in-use", "detaching"]));
        }
        match &which {
            Some(a) => {
                let before = v.attachments.len();
                v.attachments.retain(|x| &x.id != a);
                if v.attachments.len() == before {
                    return Err(not_found(format!("Attachment {a} could not be found.")));
                }
            }
            None => v.attachments.clear(),
        }
        if v.attachments.is_empty() {
            v.status = "available".into();
            v.attach_status = "detached".into();
        }
        Ok(())
    })
    .await?;
    Ok(accepted())
}

async fn initialize_connection(req: &Req, id: &str, args: &Map<String, Value>) -> Result<Response> {
    if !args.get("connector").is_some_and(Value::is_object) {
        return Err(bad_request(
            "Invalid input received: connector is required.",
        ));
    }
    let v = change(req, id, |v| {
        let ok = ["available", "attaching", "in-use", "reserved", "detaching"];
        if !ok.contains(&v.status.as_str()) {
            return Err(invalid_status(id, &v.status, &ok));
        }
        v.connected = true;
        Ok(())
    })
    .await?;
    block::set_exported(req.gw.meta.as_ref(), id, true)
        .await
        .map_err(volume_fault)?;
    req.gw.volumes.sync().await;
    let mode = if v.readonly { "ro" } else { "rw" };
    // A connector on this host that asks for vhost-user gets the volume's socket; any other
    // gets the NBD export.
    let wants_vhost = args["connector"]
        .get("vhost_user")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let info = match (&req.gw.vhost_user_dir, wants_vhost) {
        (Some(dir), true) => json!({
            "driver_volume_type": "vhost_user",
            "data": {
                "socket_path": dir.join(format!("{id}.sock")),
                "access_mode": mode,
                "volume_id": id,
            }
        }),
        (None, true) => {
            return Err(bad_request(
                "Invalid input received: this node serves no vhost-user-blk sockets.",
            ))
        }
        _ => json!({
            "driver_volume_type": "nbd",
            "data": {
                "host": req.gw.nbd_host,
                "port": req.gw.nbd_port,
                "export_name": id,
                "access_mode": mode,
                "volume_id": id,
                "name": id,
            }
        }),
    };
    Ok(reply(StatusCode::OK, json!({ "connection_info": info })))
}

async fn terminate_connection(req: &Req, id: &str) -> Result<Response> {
    change(req, id, |v| {
        v.connected = false;
        Ok(())
    })
    .await?;
    block::set_exported(req.gw.meta.as_ref(), id, false)
        .await
        .map_err(volume_fault)?;
    req.gw.volumes.sync().await;
    Ok(accepted())
}

async fn extend(req: &Req, id: &str, args: &Map<String, Value>) -> Result<Response> {
    let new_size = int_field(args, "new_size")?
        .ok_or_else(|| bad_request("Invalid input received: new_size is required."))?;
    let (v, _) = load(req, id).await?;
    if v.status != "available" {
        return Err(invalid_status(id, &v.status, &["available"]));
    }
    if new_size <= v.size {
        return Err(bad_request(format!(
            "Invalid input received: New size for extend must be greater than current size. (current: {}, extended: {new_size})",
            v.size
        )));
    }
    quotas::check(req, &[("gigabytes", (new_size - v.size) as i64)]).await?;
    change(req, id, |v| {
        if v.status != "available" {
            return Err(invalid_status(id, &v.status, &["available"]));
        }
        v.status = "extending".into();
        Ok(())
    })
    .await?;
    let grown = block::extend(req.gw.meta.as_ref(), id, new_size * GIB).await;
    let ok = grown.is_ok();
    change(req, id, |v| {
        v.status = if ok { "available" } else { "error_extending" }.into();
        if ok {
            v.size = new_size;
        }
        Ok(())
    })
    .await?;
    grown.map_err(volume_fault)?;
    req.gw.volumes.sync().await;
    tracing::info!(volume = %id, new_size, "volume extended");
    Ok(accepted())
}

async fn reset_status(req: &Req, id: &str, args: &Map<String, Value>) -> Result<Response> {
    req.require_admin()?;
    let status = args
        .get("status")
        .and_then(Value::as_str)
        .map(str::to_string);
    let attach = args
        .get("attach_status")
        .and_then(Value::as_str)
        .map(str::to_string);
    if let Some(s) = &status {
        if !STATUSES.contains(&s.as_str()) {
            return Err(bad_request(format!(
                "Invalid input received: Must specify a valid status, not {s}."
            )));
        }
    }
    if let Some(a) = &attach {
        if !matches!(a.as_str(), "attached" | "detached") {
            return Err(bad_request(format!(
                "Invalid input received: Must specify a valid attach status, not {a}."
            )));
        }
    }
    if status.is_none() && attach.is_none() && !args.contains_key("migration_status") {
        return Err(bad_request("Invalid input received: Must specify 'status', 'attach_status' or 'migration_status' for update."));
    }
    change(req, id, |v| {
        if let Some(s) = status {
            v.status = s;
        }
        if let Some(a) = attach {
            if a == "detached" {
                v.attachments.clear();
            }
            v.attach_status = a;
        }
        Ok(())
    })
    .await?;
    Ok(accepted())
}

pub(crate) async fn metadata(req: &Req, id: &str, rest: &[&str]) -> Result<Response> {
    use http::Method;
    let (v, _) = load(req, id).await?;
    match (rest, req.method.clone()) {
        ([], Method::GET) => Ok(reply(StatusCode::OK, json!({"metadata": v.metadata}))),
        ([key], Method::GET) => match v.metadata.get(*key) {
            Some(val) => Ok(reply(StatusCode::OK, json!({"meta": {*key: val}}))),
            None => Err(not_found(format!("Metadata item was not found: {key}"))),
        },
        ([], Method::POST | Method::PUT) => {
            req.require_writer()?;
            let body: Value = req.body()?;
            let obj = body.as_object().cloned().unwrap_or_default();
            let items = metadata_field(&obj, "metadata")?;
            let replace = req.method == Method::PUT;
            let v = change(req, id, |v| {
                if replace {
                    v.metadata = items;
                } else {
                    v.metadata.extend(items);
                }
                Ok(())
            })
            .await?;
            Ok(reply(StatusCode::OK, json!({"metadata": v.metadata})))
        }
        ([key], Method::PUT) => {
            req.require_writer()?;
            let body: Value = req.body()?;
            let obj = body.as_object().cloned().unwrap_or_default();
            let items = metadata_field(&obj, "meta")?;
            if items.len() != 1 || !items.contains_key(*key) {
                return Err(bad_request("Request body and URI mismatch"));
            }
            change(req, id, |v| {
                v.metadata.extend(items.clone());
                Ok(())
            })
            .await?;
            Ok(reply(StatusCode::OK, json!({"meta": items})))
        }
        ([key], Method::DELETE) => {
            req.require_writer()?;
            let key = key.to_string();
            change(req, id, |v| {
                v.metadata
                    .remove(&key)
                    .map(|_| ())
                    .ok_or_else(|| not_found(format!("Metadata item was not found: {key}")))
            })
            .await?;
            Ok(reply(StatusCode::OK, Value::Null).map_empty())
        }
        _ => Err(crate::fault(
            StatusCode::METHOD_NOT_ALLOWED,
            "The method is not allowed for this resource.",
        )),
    }
}
