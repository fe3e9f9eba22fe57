//! Backups to the project's Swift account.
//!
//! A backup reads a frozen copy of the volume (a block snapshot taken when the backup
//! starts, or the snapshot the request names), so the volume stays usable meanwhile. Each
//! 4 MiB extent that is not all zeroes becomes one object
//! `volume_<volume>/<backup>/extent-<n>`; the manifest object `.../manifest` maps every such
//! extent to the object holding it and its blake3. An incremental backup uploads only the
//! extents whose blake3 differs from its parent's manifest and points the others at the
//! parent's objects, so a parent cannot be deleted while an incremental depends on it.
//! Restore writes the listed extents and zeroes the others, into the same or a new volume.

use axum::response::Response;
use bytes::Bytes;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use strata_nbd::BlockTarget;
use strata_volume::records as block;
use strata_volume::{Volume, EXTENT_BYTES};

use crate::model::{self, BackupRecord, ExtentRef, VolumeRecord, BACKUPS, VOLUMES};
use crate::volumes::{self, accepted, invalid_status, page};
use crate::{
    bad_request, not_found, put, quotas, reply, text_field, unchanged, volume_fault, CinderGateway,
    Req, Result,
};

const DEFAULT_CONTAINER: &str = "volumebackups";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Manifest {
    backup_id: String,
    volume_id: String,
    size_bytes: u64,
    extent_bytes: u64,
    /// Extent number -> where its bytes are. Absent extents read as zeroes.
    extents: BTreeMap<u64, ExtentRef>,
}

fn account(project: &str) -> String {
    format!("AUTH_{project}")
}

fn prefix(volume_id: &str, backup_id: &str) -> String {
    format!("volume_{volume_id}/{backup_id}")
}

pub(crate) async fn load(req: &Req, id: &str) -> Result<(BackupRecord, Vec<u8>)> {
    req.visible(id).await
}

pub(crate) async fn list(req: &Req, detail: bool) -> Result<Response> {
    let all = req.list::<BackupRecord>(BACKUPS, |b| &b.project_id).await?;
    let q = &req.query;
    let matching: Vec<_> = all
        .into_iter()
        .filter(|b| {
            q.get("name").is_none_or(|n| b.name.as_deref() == Some(n))
                && q.get("status").is_none_or(|s| &b.status == s)
                && q.get("volume_id").is_none_or(|v| &b.volume_id == v)
        })
        .collect();
    let items = page(req, matching, |b| &b.created_at, |b| &b.id)?;
    let out: Vec<Value> = items
        .iter()
        .map(|b| {
            let link = req.links("backups", &b.id);
            if detail {
                model::backup_view(b, link)
            } else {
                model::summary(&b.id, &b.name, link)
            }
        })
        .collect();
    Ok(reply(StatusCode::OK, json!({"backups": out})))
}

pub(crate) async fn show(req: &Req, id: &str) -> Result<Response> {
    let (b, _) = load(req, id).await?;
    Ok(reply(
        StatusCode::OK,
        json!({"backup": model::backup_view(&b, req.links("backups", id))}),
    ))
}

/// Change a record by compare-and-set, retrying on races (background tasks own the
/// transitions they make).
async fn update_record<T: Serialize + for<'de> Deserialize<'de>>(
    gw: &CinderGateway,
    table: &str,
    id: &str,
    f: impl Fn(&mut T),
) {
    for _ in 0..16 {
        let Ok(Some(raw)) = gw.meta.get(table, id).await else {
            return;
        };
        let Some(mut rec) = model::decode::<T>(&raw) else {
            return;
        };
        f(&mut rec);
        let txn = strata_meta::Txn {
            checks: vec![unchanged(table, id, raw)],
            ops: vec![put(table, id, model::encode(&rec))],
        };
        match gw.meta.write(txn).await {
            Ok(out) if out.succeeded => return,
            Ok(_) => continue,
            Err(e) => {
                tracing::error!(table, id, error = %e, "cannot update record");
                return;
            }
        }
    }
}

pub(crate) async fn create(req: &Req) -> Result<Response> {
    req.require_writer()?;
    let body = req.body_object("backup")?;
    let volume_id = text_field(&body, &["volume_id"])?
        .ok_or_else(|| bad_request("Invalid input received: volume_id is required."))?;
    let container = text_field(&body, &["container"])?.unwrap_or_else(|| DEFAULT_CONTAINER.into());
    if container.is_empty() || container.contains('/') {
        return Err(bad_request("Invalid input received: bad container name."));
    }
    let incremental = body
        .get("incremental")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let force = body.get("force").and_then(Value::as_bool).unwrap_or(false);
    let snapshot_id = text_field(&body, &["snapshot_id"])?;
    let (vol, _) = volumes::load(req, &volume_id).await?;
    let ok: &[&str] = if force || snapshot_id.is_some() {
        &["available", "in-use"]
    } else {
        &["available"]
    };
    if !ok.contains(&vol.status.as_str()) {
        return Err(invalid_status(&volume_id, &vol.status, ok));
    }
    let parent = if incremental {
        let mut mine = req
            .list::<BackupRecord>(BACKUPS, |b| &b.project_id)
            .await?
            .into_iter()
            .filter(|b| b.volume_id == volume_id && b.status == "available")
            .collect::<Vec<_>>();
        mine.sort_by(|a, b| a.created_at.cmp(&b.created_at));
        Some(mine.pop().ok_or_else(|| {
            bad_request("Invalid backup: No backups available to do an incremental backup.")
        })?)
    } else {
        None
    };
    quotas::check(
        req,
        &[("backups", 1), ("backup_gigabytes", vol.size as i64)],
    )
    .await?;

    let id = model::new_id();
    // The frozen source: the named snapshot, or one taken now for this backup alone.
    let (source, temporary) = match &snapshot_id {
        Some(sid) => {
            let (snap, _) = crate::snapshots::load(req, sid).await?;
            if snap.volume_id != volume_id {
                return Err(bad_request(format!(
                    "Invalid input received: snapshot {sid} is not of volume {volume_id}."
                )));
            }
            let spec = block::get_snapshot(req.gw.meta.as_ref(), sid)
                .await
                .map_err(volume_fault)?
                .ok_or_else(|| not_found(format!("Snapshot {sid} could not be found.")))?;
            (spec, false)
        }
        None => {
            let spec = block::snapshot(req.gw.meta.as_ref(), &volume_id, &format!("backup-{id}"))
                .await
                .map_err(volume_fault)?;
            req.gw.volumes.sync().await;
            (spec, true)
        }
    };
    let now = model::now();
    let record = BackupRecord {
        id: id.clone(),
        project_id: vol.project_id.clone(),
        user_id: req.ctx.user_id.clone(),
        volume_id: volume_id.clone(),
        snapshot_id: snapshot_id.clone(),
        name: text_field(&body, &["name"])?,
        description: text_field(&body, &["description"])?,
        size: vol.size,
        status: "creating".into(),
        fail_reason: None,
        container,
        is_incremental: parent.is_some(),
        parent_id: parent.as_ref().map(|p| p.id.clone()),
        object_count: 0,
        created_at: now.clone(),
        updated_at: None,
        data_timestamp: now,
    };
    let was_available = vol.status == "available";
    let mut ops = vec![put(BACKUPS, &id, model::encode(&record))];
    if was_available {
        let mut v = vol.clone();
        v.status = "backing-up".into();
        ops.push(put(VOLUMES, &volume_id, model::encode(&v)));
    }
    let (_, vol_raw) = volumes::load(req, &volume_id).await?;
    let committed = req
        .commit(
            vec![unchanged(VOLUMES, &volume_id, vol_raw)],
            ops,
            &format!("Volume {volume_id}"),
        )
        .await;
    if let Err(f) = committed {
        if temporary {
            drop_snapshot(&req.gw, &source.name).await;
        }
        return Err(f);
    }
    let gw = req.gw.clone();
    let rec = record.clone();
    tokio::spawn(async move {
        let result = run_backup(&gw, &rec, &source, parent.as_ref()).await;
        if temporary {
            drop_snapshot(&gw, &source.name).await;
        }
        let (status, reason, count) = match result {
            Ok(count) => ("available", None, count),
            Err(e) => {
                tracing::error!(backup = %rec.id, error = %e, "backup failed");
                ("error", Some(e), 0)
            }
        };
        update_record::<BackupRecord>(&gw, BACKUPS, &rec.id, |b| {
            b.status = status.into();
            b.fail_reason = reason.clone();
            b.object_count = count;
            b.updated_at = Some(model::now());
        })
        .await;
        if was_available {
            update_record::<VolumeRecord>(&gw, VOLUMES, &rec.volume_id, |v| {
                if v.status == "backing-up" {
                    v.status = "available".into();
                }
            })
            .await;
        }
        tracing::info!(backup = %rec.id, status, objects = count, "backup finished");
    });
    Ok(reply(
        StatusCode::ACCEPTED,
        json!({"backup": {"id": id, "name": record.name, "links": req.links("backups", &id)}}),
    ))
}

/// Move a volume from status `from` to `to`, if it is still in `from`.
pub(crate) async fn update_volume_status(gw: &CinderGateway, id: &str, from: &str, to: &str) {
    update_record::<VolumeRecord>(gw, VOLUMES, id, |v| {
        if v.status == from {
            v.status = to.into();
        }
    })
    .await;
}

async fn drop_snapshot(gw: &CinderGateway, name: &str) {
    if let Err(e) = block::delete_snapshot_with(gw.meta.as_ref(), name, vec![]).await {
        tracing::warn!(snapshot = name, error = %e, "cannot drop a backup's block snapshot");
    }
}

async fn put_bytes(
    gw: &CinderGateway,
    acct: &str,
    container: &str,
    name: &str,
    data: Bytes,
) -> std::result::Result<(), String> {
    let body = futures::stream::iter([Ok::<Bytes, std::io::Error>(data)]);
    gw.objects
        .put_object(
            acct,
            container,
            name,
            body,
            strata_object::PutOptions {
                content_type: Some("application/octet-stream".into()),
                ..Default::default()
            },
        )
        .await
        .map(|_| ())
        .map_err(|e| format!("storing {container}/{name}: {e}"))
}

async fn get_bytes(
    gw: &CinderGateway,
    acct: &str,
    container: &str,
    name: &str,
) -> std::result::Result<Bytes, String> {
    use futures::StreamExt;
    let info = gw
        .objects
        .head_object(acct, container, name)
        .await
        .map_err(|e| format!("reading {container}/{name}: {e}"))?;
    let mut stream = Box::pin(
        gw.objects
            .read_range(acct, container, name, &info, 0, info.size),
    );
    let mut out = bytes::BytesMut::with_capacity(info.size as usize);
    while let Some(piece) = stream.next().await {
        out.extend_from_slice(&piece.map_err(|e| format!("reading {container}/{name}: {e}"))?);
    }
    Ok(out.freeze())
}

async fn read_manifest(
    gw: &CinderGateway,
    b: &BackupRecord,
) -> std::result::Result<Manifest, String> {
    let raw = get_bytes(
        gw,
        &account(&b.project_id),
        &b.container,
        &format!("{}/manifest", prefix(&b.volume_id, &b.id)),
    )
    .await?;
    serde_json::from_slice(&raw).map_err(|e| format!("backup {} manifest: {e}", b.id))
}

/// Copy the frozen chain into objects; returns how many objects this backup stored.
async fn run_backup(
    gw: &Arc<CinderGateway>,
    b: &BackupRecord,
    source: &block::SnapshotSpec,
    parent: Option<&BackupRecord>,
) -> std::result::Result<u64, String> {
    let acct = account(&b.project_id);
    gw.objects
        .put_container(&acct, &b.container, BTreeMap::new(), BTreeMap::new())
        .await
        .map_err(|e| format!("creating container {}: {e}", b.container))?;
    let base = match parent {
        Some(p) => Some(read_manifest(gw, p).await?),
        None => None,
    };
    let vol = Volume::new(
        source.frozen(),
        gw.data.clone(),
        gw.volumes.insync().clone(),
    );
    let pre = prefix(&b.volume_id, &b.id);
    let mut extents = BTreeMap::new();
    let mut stored = 0u64;
    let count = source.size_bytes.div_ceil(EXTENT_BYTES);
    for n in 0..count {
        let offset = n * EXTENT_BYTES;
        let len = EXTENT_BYTES.min(source.size_bytes - offset) as usize;
        // Holes read as zeroes without touching a disk; an all-zero extent is not stored.
        let data = vol
            .read(offset, len)
            .await
            .map_err(|e| format!("reading extent {n}: {e}"))?;
        if data.iter().all(|&b| b == 0) {
            continue;
        }
        let hash = blake3::hash(&data).to_hex().to_string();
        if let Some(old) = base.as_ref().and_then(|m| m.extents.get(&n)) {
            if old.blake3 == hash {
                extents.insert(n, old.clone());
                continue;
            }
        }
        let object = format!("{pre}/extent-{n:08}");
        put_bytes(gw, &acct, &b.container, &object, data).await?;
        stored += 1;
        extents.insert(
            n,
            ExtentRef {
                object,
                blake3: hash,
            },
        );
    }
    let manifest = Manifest {
        backup_id: b.id.clone(),
        volume_id: b.volume_id.clone(),
        size_bytes: source.size_bytes,
        extent_bytes: EXTENT_BYTES,
        extents,
    };
    let raw = serde_json::to_vec(&manifest).map_err(|e| e.to_string())?;
    put_bytes(
        gw,
        &acct,
        &b.container,
        &format!("{pre}/manifest"),
        raw.into(),
    )
    .await?;
    Ok(stored + 1)
}

pub(crate) async fn delete(req: &Req, id: &str) -> Result<Response> {
    req.require_writer()?;
    let (b, raw) = load(req, id).await?;
    if !matches!(b.status.as_str(), "available" | "error") {
        return Err(bad_request(format!(
            "Invalid backup: Backup status must be available or error, but is {}.",
            b.status
        )));
    }
    let dependents = req
        .list::<BackupRecord>(BACKUPS, |x| &x.project_id)
        .await?
        .into_iter()
        .any(|x| x.parent_id.as_deref() == Some(id));
    if dependents {
        return Err(bad_request(
            "Invalid backup: Incremental backups exist for this backup.",
        ));
    }
    let mut deleting = b.clone();
    deleting.status = "deleting".into();
    req.commit(
        vec![unchanged(BACKUPS, id, raw)],
        vec![put(BACKUPS, id, model::encode(&deleting))],
        &format!("Backup {id}"),
    )
    .await?;
    let gw = req.gw.clone();
    tokio::spawn(async move {
        let acct = account(&b.project_id);
        let pre = format!("{}/", prefix(&b.volume_id, &b.id));
        // This backup's own objects only: extents it points at in a parent stay.
        let mut marker: Option<String> = None;
        loop {
            let page = gw
                .objects
                .list_objects(&acct, &b.container, &pre, marker.as_deref(), None, 1000)
                .await;
            let rows = match page {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(backup = %b.id, error = %e, "cannot list backup objects");
                    break;
                }
            };
            if rows.is_empty() {
                break;
            }
            marker = rows.last().map(|r| r.0.clone());
            for (name, _) in rows {
                if let Err(e) = gw.objects.delete_object(&acct, &b.container, &name).await {
                    tracing::warn!(backup = %b.id, object = %name, error = %e, "cannot delete backup object");
                }
            }
        }
        let gone = gw
            .meta
            .write(strata_meta::Txn {
                checks: vec![],
                ops: vec![crate::del(BACKUPS, &b.id)],
            })
            .await;
        if let Err(e) = gone {
            tracing::error!(backup = %b.id, error = %e, "cannot delete backup record");
        }
        tracing::info!(backup = %b.id, "backup deleted");
    });
    Ok(accepted())
}

pub(crate) async fn restore(req: &Req, id: &str) -> Result<Response> {
    req.require_writer()?;
    let body = req.body_object("restore")?;
    let (b, b_raw) = load(req, id).await?;
    if b.status != "available" {
        return Err(bad_request(format!(
            "Invalid backup: Backup status must be available, but is {}.",
            b.status
        )));
    }
    let target = match text_field(&body, &["volume_id"])? {
        Some(vid) => {
            let (v, _) = volumes::load(req, &vid).await?;
            if v.status != "available" {
                return Err(invalid_status(&vid, &v.status, &["available"]));
            }
            if v.size < b.size {
                return Err(bad_request(format!(
                    "Invalid volume: volume size {}GB is smaller than the backup's {}GB.",
                    v.size, b.size
                )));
            }
            v
        }
        None => {
            let name =
                text_field(&body, &["name"])?.unwrap_or_else(|| format!("restore_backup_{id}"));
            crate::volumes::create_plain(req, Some(name), b.size).await?
        }
    };
    // Both records move into their restoring states together.
    let (mut v, v_raw) = volumes::load(req, &target.id).await?;
    v.status = "restoring-backup".into();
    let mut bb = b.clone();
    bb.status = "restoring".into();
    req.commit(
        vec![
            unchanged(VOLUMES, &v.id, v_raw),
            unchanged(BACKUPS, id, b_raw),
        ],
        vec![
            put(VOLUMES, &v.id, model::encode(&v)),
            put(BACKUPS, id, model::encode(&bb)),
        ],
        "Backup restore",
    )
    .await?;
    let gw = req.gw.clone();
    let vid = v.id.clone();
    tokio::spawn(async move {
        let result = run_restore(&gw, &b, &vid).await;
        let ok = result.is_ok();
        if let Err(e) = &result {
            tracing::error!(backup = %b.id, volume = %vid, error = %e, "restore failed");
        }
        update_record::<VolumeRecord>(&gw, VOLUMES, &vid, |v| {
            v.status = if ok { "available" } else { "error_restoring" }.into();
            v.backup_id = Some(b.id.clone());
        })
        .await;
        update_record::<BackupRecord>(&gw, BACKUPS, &b.id, |x| {
            x.status = "available".into();
        })
        .await;
        tracing::info!(backup = %b.id, volume = %vid, ok, "restore finished");
    });
    Ok(reply(
        StatusCode::ACCEPTED,
        json!({"restore": {"backup_id": id, "volume_id": v.id, "volume_name": v.name}}),
    ))
}

async fn run_restore(
    gw: &Arc<CinderGateway>,
    b: &BackupRecord,
    volume_id: &str,
) -> std::result::Result<(), String> {
    let manifest = read_manifest(gw, b).await?;
    let spec = block::get(gw.meta.as_ref(), volume_id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("volume {volume_id} has no block record"))?;
    let vol = Volume::new(spec, gw.data.clone(), gw.volumes.insync().clone());
    let acct = account(&b.project_id);
    for n in 0..manifest.size_bytes.div_ceil(manifest.extent_bytes) {
        let offset = n * manifest.extent_bytes;
        let len = manifest.extent_bytes.min(manifest.size_bytes - offset);
        match manifest.extents.get(&n) {
            Some(r) => {
                let data = get_bytes(gw, &acct, &b.container, &r.object).await?;
                if data.len() as u64 != len || blake3::hash(&data).to_hex().as_str() != r.blake3 {
                    return Err(format!(
                        "backup object {} does not match its manifest",
                        r.object
                    ));
                }
                vol.write(offset, data, false)
                    .await
                    .map_err(|e| format!("writing extent {n}: {e}"))?;
            }
            // Zeroing over a snapshot's layers writes zero blocks: skip extents that
            // already read as zeroes.
            None => {
                let now = vol
                    .read(offset, len as usize)
                    .await
                    .map_err(|e| format!("reading extent {n}: {e}"))?;
                if now.iter().any(|&b| b != 0) {
                    vol.write_zeroes(offset, len, false, false)
                        .await
                        .map_err(|e| format!("zeroing extent {n}: {e}"))?;
                }
            }
        }
    }
    vol.flush().await.map_err(|e| e.to_string())?;
    Ok(())
}
