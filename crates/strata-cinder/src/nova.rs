//! Nova's volume proxy (`os-volumes`, `os-volume-types`, `os-snapshots`), served on the
//! compute port under `/v1.1/{project}`, `/v2/{project}` and `/v2.1[/{project}]`.
//!
//! Each call runs the matching Cinder call (same records, checks and faults) and renders
//! the answer in Nova's camel-case form.

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Method, StatusCode, Uri};
use serde_json::{json, Value};
use std::sync::Arc;
use strata_api::fault::FaultStyle;

use crate::{dispatch, not_found, reply, CinderGateway};

/// The router for the compute port's volume calls.
pub fn router(gw: Arc<CinderGateway>) -> axum::Router {
    axum::Router::new()
        .fallback(handle)
        .with_state(gw)
        .layer(axum::Extension(FaultStyle::Compute))
}

fn volume(v: &Value) -> Value {
    let attachments: Vec<Value> = v["attachments"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| {
                    json!({"id": x["attachment_id"], "volumeId": v["id"],
                           "serverId": x["server_id"], "device": x["device"]})
                })
                .collect()
        })
        .unwrap_or_default();
    json!({
        "id": v["id"],
        "status": v["status"],
        "size": v["size"],
        "availabilityZone": v["availability_zone"],
        "createdAt": v["created_at"],
        "displayName": v["name"],
        "displayDescription": v["description"],
        "volumeType": v["volume_type"],
        "snapshotId": v["snapshot_id"],
        "metadata": v["metadata"],
        "attachments": attachments,
    })
}

fn snapshot(s: &Value) -> Value {
    json!({
        "id": s["id"],
        "volumeId": s["volume_id"],
        "status": s["status"],
        "size": s["size"],
        "createdAt": s["created_at"],
        "displayName": s["name"],
        "displayDescription": s["description"],
    })
}

fn volume_type(t: &Value) -> Value {
    json!({"id": t["id"], "name": t["name"], "extra_specs": t["extra_specs"]})
}

async fn json_body(resp: Response) -> Option<Value> {
    let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20)
        .await
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

async fn handle(
    State(gw): State<Arc<CinderGateway>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let segs: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    // `/v2.1/os-volumes`: the project comes from the token.
    let token_project;
    let (project, rest): (&str, &[&str]) = match segs.as_slice() {
        ["v2.1", first, ..] if first.starts_with("os-") => {
            let ctx = match crate::authenticate(&gw, &headers).await {
                Ok(c) => c,
                Err(f) => return f.into_response(),
            };
            token_project = ctx.project_id;
            (token_project.as_str(), &segs[1..])
        }
        ["v1.1" | "v2" | "v2.1", project, rest @ ..] => (project, rest),
        _ => return not_found("The resource could not be found.").into_response(),
    };
    let (cinder_rest, kind): (Vec<&str>, &str) = match (rest, &method) {
        (["os-volumes"], &Method::GET) | (["os-volumes", "detail"], &Method::GET) => {
            (vec!["volumes", "detail"], "volumes")
        }
        (["os-volumes"], _) => (vec!["volumes"], "volume"),
        (["os-volumes", id], _) => (vec!["volumes", id], "volume"),
        (["os-volume-types"], _) => (vec!["types"], "volume_types"),
        (["os-volume-types", id], _) => (vec!["types", id], "volume_type"),
        (["os-snapshots"], &Method::GET) | (["os-snapshots", "detail"], &Method::GET) => {
            (vec!["snapshots", "detail"], "snapshots")
        }
        (["os-snapshots"], _) => (vec!["snapshots"], "snapshot"),
        (["os-snapshots", id], _) => (vec!["snapshots", id], "snapshot"),
        _ => return not_found("The resource could not be found.").into_response(),
    };
    let mut segs = vec![project];
    segs.extend(cinder_rest);
    let resp = match dispatch(gw, "v2", &segs, method.clone(), &uri, &headers, body).await {
        Ok(r) => r,
        Err(f) => return f.into_response(),
    };
    let status = resp.status();
    if !status.is_success() {
        return resp;
    }
    if method == Method::DELETE {
        return StatusCode::ACCEPTED.into_response();
    }
    let Some(v) = json_body(resp).await else {
        return status.into_response();
    };
    // Nova answers creations with 200, not Cinder's 202.
    let out = match kind {
        "volumes" => {
            json!({"volumes": v["volumes"].as_array().map(|a| a.iter().map(volume).collect::<Vec<_>>())})
        }
        "volume" => json!({"volume": volume(&v["volume"])}),
        "snapshots" => {
            json!({"snapshots": v["snapshots"].as_array().map(|a| a.iter().map(snapshot).collect::<Vec<_>>())})
        }
        "snapshot" => json!({"snapshot": snapshot(&v["snapshot"])}),
        "volume_types" => {
            json!({"volume_types": v["volume_types"].as_array().map(|a| a.iter().map(volume_type).collect::<Vec<_>>())})
        }
        _ => json!({"volume_type": volume_type(&v["volume_type"])}),
    };
    reply(StatusCode::OK, out)
}
