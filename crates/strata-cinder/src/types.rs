//! Volume types and their extra specs. `__DEFAULT__` always exists; creating, changing and
//! deleting types is for admins.

use axum::response::Response;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::HashMap;

use crate::model::{self, TypeRecord, DEFAULT_TYPE_ID, TYPES, VOLUMES};
use crate::volumes::{accepted, metadata_field};
use crate::{
    bad_request, conflict, del, meta_fault, not_found, put, reply, text_field, unchanged, Req,
    Result,
};

/// Every type, the default one included even before anything stored it.
async fn all(req: &Req) -> Result<Vec<(TypeRecord, Option<Vec<u8>>)>> {
    let rows = req
        .gw
        .meta
        .scan(TYPES, "", None, usize::MAX)
        .await
        .map_err(meta_fault)?;
    let mut out: Vec<(TypeRecord, Option<Vec<u8>>)> = rows
        .into_iter()
        .filter_map(|(_, raw)| model::decode::<TypeRecord>(&raw).map(|t| (t, Some(raw))))
        .collect();
    if !out.iter().any(|(t, _)| t.id == DEFAULT_TYPE_ID) {
        out.push((TypeRecord::default_type(), None));
    }
    Ok(out)
}

/// Type id to name, for volume views.
pub(crate) async fn names(req: &Req) -> Result<HashMap<String, String>> {
    Ok(all(req)
        .await?
        .into_iter()
        .map(|(t, _)| (t.id, t.name))
        .collect())
}

/// The type a request names (by name or id); the default type when none is named.
pub(crate) async fn resolve(req: &Req, wanted: Option<&str>) -> Result<String> {
    let Some(wanted) = wanted else {
        return Ok(DEFAULT_TYPE_ID.into());
    };
    all(req)
        .await?
        .into_iter()
        .find(|(t, _)| t.id == wanted || t.name == wanted)
        .map(|(t, _)| t.id)
        .ok_or_else(|| not_found(format!("Volume type {wanted} could not be found.")))
}

async fn load(req: &Req, id: &str) -> Result<(TypeRecord, Option<Vec<u8>>)> {
    all(req)
        .await?
        .into_iter()
        .find(|(t, _)| t.id == id)
        .ok_or_else(|| not_found(format!("Volume type {id} could not be found.")))
}

/// Store a changed type (the default one's first change creates its record).
async fn save(req: &Req, t: &TypeRecord, raw: Option<Vec<u8>>) -> Result<()> {
    let check = match raw {
        Some(raw) => unchanged(TYPES, &t.id, raw),
        None => strata_meta::Check::Absent {
            table: TYPES.into(),
            key: t.id.clone(),
        },
    };
    req.commit(
        vec![check],
        vec![put(TYPES, &t.id, model::encode(t))],
        &format!("Volume type {}", t.id),
    )
    .await
}

pub(crate) async fn list(req: &Req) -> Result<Response> {
    let mut types: Vec<Value> = all(req)
        .await?
        .iter()
        .filter(|(t, _)| t.is_public || req.is_admin())
        .map(|(t, _)| model::type_view(t))
        .collect();
    types.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Ok(reply(StatusCode::OK, json!({"volume_types": types})))
}

pub(crate) async fn show(req: &Req, id: &str) -> Result<Response> {
    // `default` names the default type.
    let id = if id == "default" { DEFAULT_TYPE_ID } else { id };
    let (t, _) = load(req, id).await?;
    Ok(reply(
        StatusCode::OK,
        json!({"volume_type": model::type_view(&t)}),
    ))
}

fn public_flag(m: &serde_json::Map<String, Value>) -> Result<Option<bool>> {
    match m
        .get("os-volume-type-access:is_public")
        .or(m.get("is_public"))
    {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(_) => Err(bad_request(
            "Invalid input received: is_public must be a boolean.",
        )),
    }
}

pub(crate) async fn create(req: &Req) -> Result<Response> {
    req.require_admin()?;
    let body = req.body_object("volume_type")?;
    let name = text_field(&body, &["name"])?
        .filter(|n| !n.trim().is_empty())
        .ok_or_else(|| bad_request("Invalid input received: name is required."))?;
    if all(req).await?.iter().any(|(t, _)| t.name == name) {
        return Err(conflict(format!("Volume Type {name} already exists.")));
    }
    let t = TypeRecord {
        id: model::new_id(),
        name,
        description: text_field(&body, &["description"])?,
        is_public: public_flag(&body)?.unwrap_or(true),
        extra_specs: metadata_field(&body, "extra_specs")?,
    };
    save(req, &t, None).await?;
    Ok(reply(
        StatusCode::OK,
        json!({"volume_type": model::type_view(&t)}),
    ))
}

pub(crate) async fn update(req: &Req, id: &str) -> Result<Response> {
    req.require_admin()?;
    let body = req.body_object("volume_type")?;
    let (mut t, raw) = load(req, id).await?;
    if let Some(n) = text_field(&body, &["name"])? {
        if n != t.name && all(req).await?.iter().any(|(o, _)| o.name == n) {
            return Err(conflict(format!("Volume Type {n} already exists.")));
        }
        t.name = n;
    }
    if let Some(d) = text_field(&body, &["description"])? {
        t.description = Some(d);
    }
    if let Some(p) = public_flag(&body)? {
        t.is_public = p;
    }
    save(req, &t, raw).await?;
    Ok(reply(
        StatusCode::OK,
        json!({"volume_type": model::type_view(&t)}),
    ))
}

pub(crate) async fn delete(req: &Req, id: &str) -> Result<Response> {
    req.require_admin()?;
    if id == DEFAULT_TYPE_ID {
        return Err(bad_request("Default volume type cannot be deleted."));
    }
    let (_, raw) = load(req, id).await?;
    let in_use = req
        .gw
        .meta
        .scan(VOLUMES, "", None, usize::MAX)
        .await
        .map_err(meta_fault)?
        .into_iter()
        .filter_map(|(_, raw)| model::decode::<model::VolumeRecord>(&raw))
        .any(|v| v.volume_type_id == id);
    if in_use {
        return Err(bad_request(format!(
            "Target volume type {id} is still in use."
        )));
    }
    let raw = raw.ok_or_else(|| not_found(format!("Volume type {id} could not be found.")))?;
    req.commit(
        vec![unchanged(TYPES, id, raw)],
        vec![del(TYPES, id)],
        &format!("Volume type {id}"),
    )
    .await?;
    Ok(accepted())
}

pub(crate) async fn extra_specs(req: &Req, id: &str, rest: &[&str]) -> Result<Response> {
    let (mut t, raw) = load(req, id).await?;
    match (rest, req.method.clone()) {
        ([], Method::GET) => Ok(reply(StatusCode::OK, json!({"extra_specs": t.extra_specs}))),
        ([key], Method::GET) => match t.extra_specs.get(*key) {
            Some(v) => Ok(reply(StatusCode::OK, json!({*key: v}))),
            None => Err(not_found(format!(
                "Volume Type {id} has no extra specs with key {key}."
            ))),
        },
        ([], Method::POST) => {
            req.require_admin()?;
            let body: Value = req.body()?;
            let items = metadata_field(
                body.as_object().unwrap_or(&Default::default()),
                "extra_specs",
            )?;
            t.extra_specs.extend(items.clone());
            save(req, &t, raw).await?;
            Ok(reply(StatusCode::OK, json!({"extra_specs": items})))
        }
        ([key], Method::PUT) => {
            req.require_admin()?;
            let body: Value = req.body()?;
            let obj = body.as_object().cloned().unwrap_or_default();
            let value = match (obj.len(), obj.get(*key)) {
                (1, Some(Value::String(v))) if v.len() <= 255 => v.clone(),
                _ => return Err(bad_request("Request body and URI mismatch")),
            };
            t.extra_specs.insert(key.to_string(), value.clone());
            save(req, &t, raw).await?;
            Ok(reply(StatusCode::OK, json!({*key: value})))
        }
        ([key], Method::DELETE) => {
            req.require_admin()?;
            if t.extra_specs.remove(*key).is_none() {
                return Err(not_found(format!(
                    "Volume Type {id} has no extra specs with key {key}."
                )));
            }
            save(req, &t, raw).await?;
            Ok(accepted())
        }
        _ => Err(crate::fault(
            StatusCode::METHOD_NOT_ALLOWED,
            "The method is not allowed for this resource.",
        )),
    }
}
