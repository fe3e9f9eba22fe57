//! Snapshots: instant copy-on-write freezes of a volume's blocks (see `strata-volume`).

use axum::response::Response;
use http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::model::{self, SnapshotRecord, SNAPSHOTS, VOLUMES};
use crate::volumes::{self, accepted, invalid_status, metadata_field, page};
use crate::{
    bad_request, del, not_found, put, quotas, reply, text_field, unchanged, volume_fault, Req,
    Result,
};
use strata_volume::records as block;

pub(crate) async fn load(req: &Req, id: &str) -> Result<(SnapshotRecord, Vec<u8>)> {
    req.visible(id).await
}

async fn change(
    req: &Req,
    id: &str,
    f: impl FnOnce(&mut SnapshotRecord) -> Result<()>,
) -> Result<SnapshotRecord> {
    req.change(id, f).await
}

pub(crate) async fn list(req: &Req, detail: bool) -> Result<Response> {
    let all = req
        .list::<SnapshotRecord>(SNAPSHOTS, |s| &s.project_id)
        .await?;
    let q = &req.query;
    let matching: Vec<_> = all
        .into_iter()
        .filter(|s| {
            q.get("name").is_none_or(|n| s.name.as_deref() == Some(n))
                && q.get("status").is_none_or(|st| &s.status == st)
                && q.get("volume_id").is_none_or(|v| &s.volume_id == v)
        })
        .collect();
    let items = page(req, matching, |s| &s.created_at, |s| &s.id)?;
    let out: Vec<Value> = items
        .iter()
        .map(|s| {
            if detail {
                model::snapshot_view(s)
            } else {
                json!({"id": s.id, "name": s.name, "volume_id": s.volume_id,
                       "status": s.status, "size": s.size, "created_at": s.created_at,
                       "description": s.description, "metadata": s.metadata})
            }
        })
        .collect();
    Ok(reply(StatusCode::OK, json!({"snapshots": out})))
}

pub(crate) async fn show(req: &Req, id: &str) -> Result<Response> {
    let (s, _) = load(req, id).await?;
    Ok(reply(
        StatusCode::OK,
        json!({"snapshot": model::snapshot_view(&s)}),
    ))
}

fn truthy(v: Option<&Value>) -> Result<bool> {
    match v {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) => match s.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(bad_request(format!("Invalid value '{s}' for force."))),
        },
        Some(_) => Err(bad_request("Invalid value for force.")),
    }
}

/// Take a snapshot of a volume: `available`, or `in-use` with `force`.
pub(crate) async fn create(req: &Req) -> Result<Response> {
    req.require_writer()?;
    let body = req.body_object("snapshot")?;
    let volume_id = text_field(&body, &["volume_id"])?
        .ok_or_else(|| bad_request("Invalid input received: volume_id is required."))?;
    let force = truthy(body.get("force"))?;
    let name = text_field(&body, &["name", "display_name"])?;
    let description = text_field(&body, &["description", "display_description"])?;
    let metadata = metadata_field(&body, "metadata")?;
    let (vol, vol_raw) = volumes::load(req, &volume_id).await?;
    let ok: &[&str] = if force {
        &["available", "in-use"]
    } else {
        &["available"]
    };
    if !ok.contains(&vol.status.as_str()) {
        return Err(invalid_status(&volume_id, &vol.status, ok));
    }
    quotas::check(req, &[("snapshots", 1), ("gigabytes", vol.size as i64)]).await?;
    let id = model::new_id();
    let record = SnapshotRecord {
        id: id.clone(),
        project_id: vol.project_id.clone(),
        user_id: req.ctx.user_id.clone(),
        volume_id: volume_id.clone(),
        name,
        description,
        size: vol.size,
        status: "available".into(),
        metadata,
        created_at: model::now(),
        updated_at: None,
    };
    // The block snapshot first (it must see the volume unchanged), then the record that
    // makes it visible; a crash between leaves an unnamed block snapshot whose layers the
    // volume references anyway.
    block::snapshot(req.gw.meta.as_ref(), &volume_id, &id)
        .await
        .map_err(volume_fault)?;
    let committed = req
        .commit(
            vec![unchanged(VOLUMES, &volume_id, vol_raw)],
            vec![put(SNAPSHOTS, &id, model::encode(&record))],
            &format!("Volume {volume_id}"),
        )
        .await;
    if let Err(f) = committed {
        if let Err(e) = block::delete_snapshot_with(req.gw.meta.as_ref(), &id, vec![]).await {
            tracing::warn!(snapshot = %id, error = %e, "cannot drop an unrecorded block snapshot");
        }
        return Err(f);
    }
    // Writes through this node after this answer go to the volume's new layer.
    req.gw.volumes.sync().await;
    tracing::info!(snapshot = %id, volume = %volume_id, "snapshot taken");
    Ok(reply(
        StatusCode::ACCEPTED,
        json!({"snapshot": model::snapshot_view(&record)}),
    ))
}

pub(crate) async fn update(req: &Req, id: &str) -> Result<Response> {
    req.require_writer()?;
    let body = req.body_object("snapshot")?;
    let name = text_field(&body, &["name", "display_name"])?;
    let description = text_field(&body, &["description", "display_description"])?;
    if name.is_none() && description.is_none() {
        return Err(bad_request(
            "Invalid input received: give name or description.",
        ));
    }
    let s = change(req, id, |s| {
        if let Some(n) = name {
            s.name = Some(n);
        }
        if let Some(d) = description {
            s.description = Some(d);
        }
        Ok(())
    })
    .await?;
    Ok(reply(
        StatusCode::OK,
        json!({"snapshot": model::snapshot_view(&s)}),
    ))
}

pub(crate) async fn delete(req: &Req, id: &str) -> Result<Response> {
    req.require_writer()?;
    remove(req, id, false).await?;
    Ok(accepted())
}

/// Delete a snapshot (`available` or `error`, any status with `force`).
pub(crate) async fn remove(req: &Req, id: &str, force: bool) -> Result<()> {
    let (s, raw) = load(req, id).await?;
    if !force && !matches!(s.status.as_str(), "available" | "error") {
        return Err(bad_request(format!(
            "Invalid snapshot: Volume Snapshot status must be available or error, but is {}.",
            s.status
        )));
    }
    let gone =
        block::delete_snapshot_with(req.gw.meta.as_ref(), id, vec![del(SNAPSHOTS, id)]).await;
    match gone {
        Ok(()) => {}
        // No block snapshot (an error record): drop the record alone.
        Err(strata_volume::VolumeError::NotFound(_)) => {
            req.commit(
                vec![unchanged(SNAPSHOTS, id, raw)],
                vec![del(SNAPSHOTS, id)],
                &format!("Snapshot {id}"),
            )
            .await?
        }
        Err(e) => return Err(volume_fault(e)),
    }
    tracing::info!(snapshot = %id, "snapshot deleted");
    Ok(())
}

pub(crate) async fn action(req: &Req, id: &str) -> Result<Response> {
    let body: Value = req.body()?;
    if let Some(args) = body.get("os-reset_status") {
        req.require_admin()?;
        let status = args
            .get("status")
            .and_then(Value::as_str)
            .filter(|s| {
                matches!(
                    *s,
                    "creating" | "available" | "deleting" | "error" | "error_deleting"
                )
            })
            .ok_or_else(|| bad_request("Invalid input received: Must specify a valid status."))?
            .to_string();
        change(req, id, |s| {
            s.status = status;
            Ok(())
        })
        .await?;
        return Ok(accepted());
    }
    if body.get("os-force_delete").is_some() {
        req.require_admin()?;
        remove(req, id, true).await?;
        return Ok(accepted());
    }
    Err(bad_request("There is no such action."))
}

pub(crate) async fn metadata(req: &Req, id: &str, rest: &[&str]) -> Result<Response> {
    let (s, _) = load(req, id).await?;
    match (rest, req.method.clone()) {
        ([], Method::GET) => Ok(reply(StatusCode::OK, json!({"metadata": s.metadata}))),
        ([key], Method::GET) => match s.metadata.get(*key) {
            Some(v) => Ok(reply(StatusCode::OK, json!({"meta": {*key: v}}))),
            None => Err(not_found(format!("Metadata item was not found: {key}"))),
        },
        ([], Method::POST | Method::PUT) => {
            req.require_writer()?;
            let body: Value = req.body()?;
            let items =
                metadata_field(body.as_object().unwrap_or(&Default::default()), "metadata")?;
            let replace = req.method == Method::PUT;
            let s = change(req, id, |s| {
                if replace {
                    s.metadata = items;
                } else {
                    s.metadata.extend(items);
                }
                Ok(())
            })
            .await?;
            Ok(reply(StatusCode::OK, json!({"metadata": s.metadata})))
        }
        ([key], Method::DELETE) => {
            req.require_writer()?;
            let key = key.to_string();
            change(req, id, |s| {
                s.metadata
                    .remove(&key)
                    .map(|_| ())
                    .ok_or_else(|| not_found(format!("Metadata item was not found: {key}")))
            })
            .await?;
            Ok(reply(StatusCode::OK, json!({})))
        }
        _ => Err(crate::fault(
            StatusCode::METHOD_NOT_ALLOWED,
            "The method is not allowed for this resource.",
        )),
    }
}
