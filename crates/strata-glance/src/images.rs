//! Images: create, list, show, JSON-patch update, delete, data upload and download, tags
//! and the deactivate/reactivate actions.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use http::{HeaderValue, StatusCode};
use serde_json::{json, Map, Value};
use std::cmp::Ordering;
use strata_image::{
    self as image, ImageRecord, CONTAINER_FORMATS, DISK_FORMATS, IMAGES, VISIBILITIES,
};
use strata_meta::{Check, Op, Txn};

use crate::{bad_request, conflict, fault, forbidden, image_fault, not_found, reply, Req, Result};

/// Attributes the server sets; a request naming one gets a 403.
const READ_ONLY: &[&str] = &[
    "status",
    "size",
    "virtual_size",
    "checksum",
    "os_hash_algo",
    "os_hash_value",
    "created_at",
    "updated_at",
    "file",
    "self",
    "schema",
    "direct_url",
    "locations",
    "stores",
];
/// Attributes no request may name.
const RESERVED: &[&str] = &["deleted", "deleted_at", "location"];
/// Attributes a request may set that are not free-form properties.
const BASE: &[&str] = &[
    "id",
    "name",
    "visibility",
    "protected",
    "os_hidden",
    "tags",
    "disk_format",
    "container_format",
    "min_disk",
    "min_ram",
    "owner",
];
/// Glance's default `image_tag_quota` and `image_property_quota`.
const TAGS_MAX: usize = 128;
const PROPERTIES_MAX: usize = 128;
const LIMIT_DEFAULT: usize = 25;
const LIMIT_MAX: usize = 1000;

const PATCH_TYPES: &[&str] = &[
    "application/openstack-images-v2.1-json-patch",
    "application/openstack-images-v2.0-json-patch",
];

/// The image as Glance shows it: every base attribute (null when unset), then the
/// caller's properties at the top level.
pub(crate) fn view(r: &ImageRecord) -> Value {
    let mut m = Map::new();
    for (k, v) in &r.properties {
        m.insert(k.clone(), Value::String(v.clone()));
    }
    let base = json!({
        "id": r.id,
        "name": r.name,
        "status": r.status,
        "visibility": r.visibility,
        "protected": r.protected,
        "os_hidden": r.os_hidden,
        "tags": r.tags,
        "disk_format": r.disk_format,
        "container_format": r.container_format,
        "min_disk": r.min_disk,
        "min_ram": r.min_ram,
        "size": r.size,
        "virtual_size": r.virtual_size,
        "checksum": r.checksum,
        "os_hash_algo": r.os_hash_algo,
        "os_hash_value": r.os_hash_value,
        "owner": r.owner,
        "created_at": r.created_at,
        "updated_at": r.updated_at,
        "file": format!("/v2/images/{}/file", r.id),
        "self": format!("/v2/images/{}", r.id),
        "schema": "/v2/schemas/image",
    });
    if let Value::Object(b) = base {
        m.extend(b);
    }
    Value::Object(m)
}

fn no_image(id: &str) -> crate::Fault {
    not_found(format!("No image found with ID {id}"))
}

/// An image the caller may see, with its stored bytes; 404 otherwise (as Glance, which
/// does not reveal images one may not see).
pub(crate) async fn visible(req: &Req, id: &str) -> Result<(ImageRecord, Vec<u8>)> {
    let meta = req.gw.meta.as_ref();
    let (rec, raw) = image::get(meta, id)
        .await
        .map_err(image_fault)?
        .ok_or_else(|| no_image(id))?;
    if !image::readable(meta, &req.caller(), &rec)
        .await
        .map_err(image_fault)?
    {
        return Err(no_image(id));
    }
    Ok((rec, raw))
}

/// An image the caller may change; 403 when it may only see it.
async fn owned(req: &Req, id: &str) -> Result<(ImageRecord, Vec<u8>)> {
    req.require_writer()?;
    let (rec, raw) = visible(req, id).await?;
    if !req.caller().may_change(&rec) {
        return Err(forbidden(format!(
            "You are not permitted to modify image {id}."
        )));
    }
    Ok((rec, raw))
}

/// Store a changed record if the stored one is still `raw`; 409 otherwise.
async fn commit(req: &Req, rec: &ImageRecord, raw: Vec<u8>) -> Result<()> {
    let out = req
        .gw
        .meta
        .write(Txn {
            checks: vec![Check::Equals {
                table: IMAGES.into(),
                key: rec.id.clone(),
                value: raw,
            }],
            ops: vec![Op::Put {
                table: IMAGES.into(),
                key: rec.id.clone(),
                value: image::encode(rec),
            }],
        })
        .await
        .map_err(|e| image_fault(e.into()))?;
    if out.succeeded {
        Ok(())
    } else {
        Err(conflict(format!(
            "Image {} was changed by another request; try again.",
            rec.id
        )))
    }
}

fn string_or_null(key: &str, v: &Value) -> Result<Option<String>> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) if s.len() <= 255 => Ok(Some(s.clone())),
        _ => Err(bad_request(format!(
            "Invalid value for {key}: expected a string of at most 255 characters or null"
        ))),
    }
}

fn enum_or_null(key: &str, v: &Value, allowed: &[&str]) -> Result<Option<String>> {
    let s = string_or_null(key, v)?;
    match &s {
        Some(x) if !allowed.contains(&x.as_str()) => Err(bad_request(format!(
            "Invalid value '{x}' for {key}: expected one of {allowed:?}"
        ))),
        _ => Ok(s),
    }
}

fn boolean(key: &str, v: &Value) -> Result<bool> {
    match v {
        Value::Bool(b) => Ok(*b),
        // Glance's JSON-patch accepts the strings too.
        Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
        _ => Err(bad_request(format!(
            "Invalid value for {key}: expected a boolean"
        ))),
    }
}

fn count(key: &str, v: &Value) -> Result<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
    .filter(|&n| n < (1 << 53))
    .ok_or_else(|| bad_request(format!("Invalid value for {key}: expected an integer >= 0")))
}

fn tags(v: &Value) -> Result<Vec<String>> {
    let Value::Array(items) = v else {
        return Err(bad_request(
            "Invalid value for tags: expected an array of strings",
        ));
    };
    let mut out: Vec<String> = Vec::new();
    for t in items {
        match t {
            Value::String(s) if !s.is_empty() && s.len() <= 255 => {
                if !out.contains(s) {
                    out.push(s.clone());
                }
            }
            _ => {
                return Err(bad_request(
                    "Invalid value for tags: each tag is a string of 1 to 255 characters",
                ))
            }
        }
    }
    if out.len() > TAGS_MAX {
        return Err(fault(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Maximum number of tags exceeded: {TAGS_MAX}"),
        ));
    }
    Ok(out)
}

/// Set one attribute or property of `rec` from a request value. `queued_only` formats may
/// change only before data is uploaded.
fn set(req: &Req, rec: &mut ImageRecord, key: &str, v: &Value) -> Result<()> {
    if READ_ONLY.contains(&key) {
        return Err(forbidden(format!("Attribute '{key}' is read-only.")));
    }
    if RESERVED.contains(&key) {
        return Err(forbidden(format!("Attribute '{key}' is reserved.")));
    }
    match key {
        "id" => return Err(forbidden("Attribute 'id' is read-only.")),
        "name" => rec.name = string_or_null(key, v)?,
        "visibility" => {
            let vis = enum_or_null(key, v, VISIBILITIES)?
                .ok_or_else(|| bad_request("Invalid value for visibility: null"))?;
            if vis == "public" && !req.is_admin() && rec.visibility != "public" {
                return Err(forbidden(
                    "You are not authorized to complete publicize_image action.",
                ));
            }
            rec.visibility = vis;
        }
        "protected" => rec.protected = boolean(key, v)?,
        "os_hidden" => rec.os_hidden = boolean(key, v)?,
        "tags" => rec.tags = tags(v)?,
        "disk_format" | "container_format" => {
            if !matches!(rec.status.as_str(), "queued") {
                return Err(forbidden(format!(
                    "Attribute {key} can be only replaced for a queued image."
                )));
            }
            if key == "disk_format" {
                rec.disk_format = enum_or_null(key, v, DISK_FORMATS)?;
            } else {
                rec.container_format = enum_or_null(key, v, CONTAINER_FORMATS)?;
            }
        }
        "min_disk" => rec.min_disk = count(key, v)?,
        "min_ram" => rec.min_ram = count(key, v)?,
        "owner" => {
            let owner = string_or_null(key, v)?
                .ok_or_else(|| bad_request("Invalid value for owner: null"))?;
            if owner != rec.owner && !req.is_admin() {
                return Err(forbidden("Owner must be specified to create an image for yourself; only admins may give images away."));
            }
            rec.owner = owner;
        }
        _ => {
            if key.is_empty() || key.len() > 255 {
                return Err(bad_request(format!(
                    "Invalid property name {key:?}: 1 to 255 characters"
                )));
            }
            match v {
                Value::String(s) if s.len() <= 65535 => {
                    rec.properties.insert(key.to_string(), s.clone());
                }
                _ => {
                    return Err(bad_request(format!(
                        "Invalid value for property {key}: expected a string"
                    )))
                }
            }
            if rec.properties.len() > PROPERTIES_MAX {
                return Err(fault(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("Maximum number of properties exceeded: {PROPERTIES_MAX}"),
                ));
            }
        }
    }
    Ok(())
}

pub(crate) async fn create(req: &Req, body: Body) -> Result<Response> {
    req.require_writer()?;
    let v = req.json(body).await?;
    let Value::Object(body) = v else {
        return Err(bad_request("The request body must be a JSON object."));
    };
    let id = match body.get("id") {
        None | Some(Value::Null) => uuid::Uuid::new_v4().to_string(),
        Some(Value::String(s)) => uuid::Uuid::parse_str(s)
            .map(|u| u.hyphenated().to_string())
            .map_err(|_| bad_request(format!("Invalid image id {s:?}: not a UUID")))?,
        Some(_) => return Err(bad_request("Invalid image id: not a UUID")),
    };
    let mut rec = ImageRecord::queued(&id, &req.ctx.project_id);
    for (k, v) in &body {
        if k == "id" {
            continue;
        }
        set(req, &mut rec, k, v)?;
    }
    let out = req
        .gw
        .meta
        .write(Txn {
            checks: vec![Check::Absent {
                table: IMAGES.into(),
                key: id.clone(),
            }],
            ops: vec![Op::Put {
                table: IMAGES.into(),
                key: id.clone(),
                value: image::encode(&rec),
            }],
        })
        .await
        .map_err(|e| image_fault(e.into()))?;
    if !out.succeeded {
        return Err(conflict(format!(
            "An image with identifier {id} already exists"
        )));
    }
    tracing::info!(image = %id, owner = %rec.owner, "image created");
    let mut resp = reply(StatusCode::CREATED, view(&rec));
    if let Ok(loc) = HeaderValue::from_str(&format!("{}/v2/images/{id}", req.gw.public_url)) {
        resp.headers_mut().insert(http::header::LOCATION, loc);
    }
    Ok(resp)
}

pub(crate) async fn show(req: &Req, id: &str) -> Result<Response> {
    let (rec, _) = visible(req, id).await?;
    Ok(reply(StatusCode::OK, view(&rec)))
}

/// Compare two images by one sort key (its shown value: numbers as numbers, the rest as
/// strings, nulls first).
fn compare(a: &Value, b: &Value, key: &str) -> Ordering {
    match (&a[key], &b[key]) {
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Value::Null, Value::Null) => Ordering::Equal,
        (Value::Null, _) => Ordering::Less,
        (_, Value::Null) => Ordering::Greater,
        (x, y) => x.to_string().cmp(&y.to_string()),
    }
}

const SORT_KEYS: &[&str] = &[
    "name",
    "status",
    "container_format",
    "disk_format",
    "size",
    "id",
    "created_at",
    "updated_at",
    "visibility",
    "min_disk",
    "min_ram",
    "owner",
    "virtual_size",
];

/// The sort order a list asks for: `sort=k1:asc,k2` or `sort_key`/`sort_dir` pairs;
/// `created_at` then `id`, newest first, by default and as tie-breakers.
fn sort_order(req: &Req) -> Result<Vec<(String, bool)>> {
    let mut keys: Vec<(String, bool)> = Vec::new();
    let check = |k: &str| -> Result<()> {
        if SORT_KEYS.contains(&k) {
            Ok(())
        } else {
            Err(bad_request(format!("Invalid sort key: {k}")))
        }
    };
    let dir = |d: &str| -> Result<bool> {
        match d {
            "asc" => Ok(true),
            "desc" => Ok(false),
            _ => Err(bad_request(format!("Invalid sort direction: {d}"))),
        }
    };
    if let Some(sort) = req.query_one("sort") {
        if req.query_one("sort_key").is_some() || req.query_one("sort_dir").is_some() {
            return Err(bad_request(
                "The 'sort' parameter cannot be combined with sort_key or sort_dir.",
            ));
        }
        for part in sort.split(',').filter(|p| !p.is_empty()) {
            let (k, d) = part.split_once(':').unwrap_or((part, "desc"));
            check(k.trim())?;
            keys.push((k.trim().to_string(), dir(d.trim())?));
        }
    } else {
        let dirs: Vec<&str> = req
            .query
            .iter()
            .filter(|(k, _)| k == "sort_dir")
            .map(|(_, v)| v.as_str())
            .collect();
        for (i, (_, k)) in req
            .query
            .iter()
            .filter(|(k, _)| k == "sort_key")
            .enumerate()
        {
            check(k)?;
            let d = dirs.get(i).or(dirs.first()).copied().unwrap_or("desc");
            keys.push((k.clone(), dir(d)?));
        }
        if keys.is_empty() && !dirs.is_empty() {
            keys.push(("created_at".into(), dir(dirs[0])?));
        }
    }
    for tie in ["created_at", "id"] {
        if !keys.iter().any(|(k, _)| k == tie) {
            let asc = keys.first().map(|k| k.1).unwrap_or(false);
            keys.push((tie.into(), asc));
        }
    }
    Ok(keys)
}

/// `gt:`/`lt:`-style operators are not served; an `in:` list is.
fn matches_text(want: &str, have: Option<&str>) -> bool {
    match want.strip_prefix("in:") {
        Some(list) => have.is_some_and(|h| list.split(',').any(|x| x.trim() == h)),
        None => have == Some(want),
    }
}

pub(crate) async fn list(req: &Req) -> Result<Response> {
    let meta = req.gw.meta.as_ref();
    let caller = req.caller();
    let limit = match req.query_one("limit") {
        None => LIMIT_DEFAULT,
        Some(l) => l
            .parse::<usize>()
            .map_err(|_| bad_request(format!("Invalid limit: {l}")))?
            .min(LIMIT_MAX),
    };
    let visibility = req.query_one("visibility");
    if let Some(v) = visibility {
        if !VISIBILITIES.contains(&v) && v != "all" {
            return Err(bad_request(format!("Invalid visibility value: {v}")));
        }
    }
    let member_status = req.query_one("member_status").unwrap_or("accepted");
    if !matches!(member_status, "accepted" | "pending" | "rejected" | "all") {
        return Err(bad_request(format!(
            "Invalid status value: {member_status}"
        )));
    }
    let hidden = match req.query_one("os_hidden") {
        None => false,
        Some(v) => boolean("os_hidden", &Value::String(v.into()))?,
    };
    let order = sort_order(req)?;
    let mine = image::memberships(meta, &caller.project)
        .await
        .map_err(image_fault)?;
    let member_ok = |id: &str| {
        mine.get(id)
            .is_some_and(|m| member_status == "all" || m.status == member_status)
    };
    let tags_wanted: Vec<&str> = req
        .query
        .iter()
        .filter(|(k, _)| k == "tag")
        .map(|(_, v)| v.as_str())
        .collect();
    let size_bound = |k: &str| -> Result<Option<u64>> {
        req.query_one(k)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| bad_request(format!("Invalid {k}: {v}")))
            })
            .transpose()
    };
    let (size_min, size_max) = (size_bound("size_min")?, size_bound("size_max")?);
    const NOT_FILTERS: &[&str] = &[
        "limit",
        "marker",
        "sort",
        "sort_key",
        "sort_dir",
        "visibility",
        "member_status",
        "os_hidden",
        "tag",
        "size_min",
        "size_max",
    ];
    let mut rows: Vec<(ImageRecord, Value)> = image::list(meta)
        .await
        .map_err(image_fault)?
        .into_iter()
        .filter(|r| {
            let own = r.owner == caller.project;
            let seen = match visibility {
                None | Some("all") => {
                    caller.admin
                        || own
                        || r.visibility == "public"
                        || (visibility == Some("all") && r.visibility == "community")
                        || (r.visibility == "shared" && member_ok(&r.id))
                }
                Some("shared") => {
                    r.visibility == "shared" && (own || member_ok(&r.id) || caller.admin)
                }
                Some("private") => r.visibility == "private" && (own || caller.admin),
                Some(v) => r.visibility == v,
            };
            seen && r.os_hidden == hidden
        })
        .filter(|r| tags_wanted.iter().all(|t| r.tags.iter().any(|x| x == t)))
        .filter(|r| size_min.is_none_or(|m| r.size.is_some_and(|s| s >= m)))
        .filter(|r| size_max.is_none_or(|m| r.size.is_some_and(|s| s <= m)))
        .map(|r| {
            let v = view(&r);
            (r, v)
        })
        .filter(|(_, v)| {
            req.query
                .iter()
                .filter(|(k, _)| !NOT_FILTERS.contains(&k.as_str()))
                .all(|(k, want)| {
                    let have = match &v[k.as_str()] {
                        Value::String(s) => Some(s.clone()),
                        Value::Null => None,
                        other => Some(other.to_string()),
                    };
                    matches_text(want, have.as_deref())
                })
        })
        .collect();
    rows.sort_by(|(_, a), (_, b)| {
        for (k, asc) in &order {
            let o = compare(a, b, k);
            if o != Ordering::Equal {
                return if *asc { o } else { o.reverse() };
            }
        }
        Ordering::Equal
    });
    let start = match req.query_one("marker") {
        None => 0,
        Some(m) => {
            rows.iter().position(|(r, _)| r.id == m).ok_or_else(|| {
                bad_request(format!("Invalid marker. Image {m} could not be found."))
            })? + 1
        }
    };
    let page: Vec<&(ImageRecord, Value)> = rows.iter().skip(start).take(limit).collect();
    let mut out = json!({
        "images": page.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>(),
        "first": "/v2/images",
        "schema": "/v2/schemas/images",
    });
    if start + page.len() < rows.len() && limit > 0 {
        if let Some((last, _)) = page.last() {
            let mut q: Vec<String> = req
                .query
                .iter()
                .filter(|(k, _)| k != "marker")
                .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
                .collect();
            q.push(format!("marker={}", last.id));
            if req.query_one("limit").is_none() {
                q.push(format!("limit={limit}"));
            }
            out["next"] = Value::String(format!("/v2/images?{}", q.join("&")));
        }
    }
    Ok(reply(StatusCode::OK, out))
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A JSON pointer of one level (`/name`), unescaped.
fn pointer(path: &Value) -> Result<String> {
    let Some(p) = path.as_str() else {
        return Err(bad_request(
            "Invalid JSON pointer: the path must be a string",
        ));
    };
    let Some(rest) = p.strip_prefix('/') else {
        return Err(bad_request(format!(
            "Invalid JSON pointer {p:?}: must start with /"
        )));
    };
    if rest.is_empty() || rest.contains('/') {
        return Err(bad_request(format!(
            "Invalid JSON pointer {p:?}: only top-level attributes can be changed"
        )));
    }
    Ok(rest.replace("~1", "/").replace("~0", "~"))
}

pub(crate) async fn update(req: &Req, id: &str, body: Body) -> Result<Response> {
    req.require_type(PATCH_TYPES)?;
    let (mut rec, raw) = owned(req, id).await?;
    let v = req.json(body).await?;
    let Value::Array(ops) = v else {
        return Err(bad_request("A JSON-patch body is an array of operations."));
    };
    for op in &ops {
        let Value::Object(op) = op else {
            return Err(bad_request("Each JSON-patch operation is an object."));
        };
        let kind = op.get("op").and_then(Value::as_str).unwrap_or("");
        let key = pointer(op.get("path").unwrap_or(&Value::Null))?;
        let exists = BASE.contains(&key.as_str())
            || READ_ONLY.contains(&key.as_str())
            || rec.properties.contains_key(&key);
        match kind {
            "add" | "replace" => {
                let value = op
                    .get("value")
                    .ok_or_else(|| bad_request(format!("Operation {kind} needs a value")))?;
                if kind == "replace" && !exists {
                    return Err(conflict(format!("Property {key} does not exist.")));
                }
                set(req, &mut rec, &key, value)?;
            }
            "remove" => {
                if READ_ONLY.contains(&key.as_str()) || BASE.contains(&key.as_str()) {
                    return Err(forbidden(format!("Properties {key} cannot be removed.")));
                }
                if rec.properties.remove(&key).is_none() {
                    return Err(conflict(format!("Property {key} does not exist.")));
                }
            }
            other => {
                return Err(bad_request(format!(
                    "Invalid operation {other:?}: expected add, replace or remove"
                )))
            }
        }
    }
    rec.updated_at = image::now();
    commit(req, &rec, raw).await?;
    Ok(reply(StatusCode::OK, view(&rec)))
}

pub(crate) async fn delete(req: &Req, id: &str) -> Result<Response> {
    let (rec, raw) = owned(req, id).await?;
    if rec.protected {
        return Err(forbidden(format!(
            "Image {id} is protected and cannot be deleted."
        )));
    }
    image::delete(req.gw.meta.as_ref(), &rec, raw)
        .await
        .map_err(image_fault)?;
    tracing::info!(image = %id, "image deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(crate) async fn upload(req: &Req, id: &str, body: Body) -> Result<Response> {
    req.require_type(&["application/octet-stream"])?;
    let (rec, _) = owned(req, id).await?;
    if rec.status != "queued" {
        return Err(conflict(format!(
            "Image status transition from {} to saving is not allowed",
            rec.status
        )));
    }
    if rec.disk_format.is_none() || rec.container_format.is_none() {
        return Err(bad_request(
            "Properties disk_format, container_format must be set prior to saving data.",
        ));
    }
    let hint = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .or_else(|| req.headers.get("x-openstack-image-size"))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let stream = body.into_data_stream();
    let done = req
        .gw
        .images
        .upload(id, stream, hint)
        .await
        .map_err(image_fault)?;
    tracing::info!(image = %id, size = done.size, "image uploaded");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// One `bytes=a-b` range of a `size`-byte image: `Ok(None)` for none (or one we ignore),
/// `Err` when it cannot be satisfied.
fn range(header: Option<&str>, size: u64) -> std::result::Result<Option<(u64, u64)>, ()> {
    let Some(h) = header else { return Ok(None) };
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(s), Ok(e)) if e >= s => (s, e.saturating_add(1).min(size)),
        (Ok(s), Err(_)) if b.is_empty() => (s, size),
        (Err(_), Ok(n)) if a.is_empty() && n > 0 => (size.saturating_sub(n), size),
        _ => return Ok(None),
    };
    if start >= size {
        return Err(());
    }
    Ok(Some((start, end)))
}

pub(crate) async fn download(req: &Req, id: &str) -> Result<Response> {
    let (rec, _) = visible(req, id).await?;
    match rec.status.as_str() {
        "active" => {}
        "deactivated" if req.is_admin() => {}
        "deactivated" => {
            return Err(forbidden(
                "The requested image has been deactivated. Image data download is forbidden.",
            ))
        }
        _ => return Ok(StatusCode::NO_CONTENT.into_response()),
    }
    let size = rec.size.unwrap_or(0);
    let wanted = range(
        req.headers
            .get(http::header::RANGE)
            .and_then(|v| v.to_str().ok()),
        size,
    );
    let (start, end, status) = match wanted {
        Ok(None) => (0, size, StatusCode::OK),
        Ok(Some((s, e))) => (s, e, StatusCode::PARTIAL_CONTENT),
        Err(()) => {
            return Err(fault(
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!("Requested range not satisfiable: the image has {size} bytes"),
            )
            .with_header(
                http::header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{size}"))
                    .unwrap_or(HeaderValue::from_static("bytes */0")),
            ))
        }
    };
    let body = match &rec.data {
        None => Body::empty(),
        Some(name) => {
            let snap = strata_volume::records::get_snapshot(req.gw.meta.as_ref(), name)
                .await
                .map_err(|e| image_fault(e.into()))?
                .ok_or_else(|| {
                    fault(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("The data of image {id} is missing."),
                    )
                })?;
            let id = id.to_string();
            let stream = req.gw.images.read(&snap, size, start, end).map(move |r| {
                r.map_err(|e| {
                    tracing::error!(image = %id, error = %e, "image download failed");
                    std::io::Error::other(e.to_string())
                })
            });
            Body::from_stream(stream)
        }
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(end - start));
    if let Some(md5) = rec
        .checksum
        .as_deref()
        .and_then(|c| HeaderValue::from_str(c).ok())
    {
        h.insert("content-md5", md5);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", end - 1)) {
            h.insert(http::header::CONTENT_RANGE, v);
        }
    }
    Ok(resp)
}

pub(crate) async fn add_tag(req: &Req, id: &str, tag: &str) -> Result<Response> {
    let (mut rec, raw) = owned(req, id).await?;
    if tag.is_empty() || tag.len() > 255 {
        return Err(bad_request("A tag is a string of 1 to 255 characters."));
    }
    if !rec.tags.iter().any(|t| t == tag) {
        if rec.tags.len() >= TAGS_MAX {
            return Err(fault(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("Maximum number of tags exceeded: {TAGS_MAX}"),
            ));
        }
        rec.tags.push(tag.to_string());
        rec.updated_at = image::now();
        commit(req, &rec, raw).await?;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(crate) async fn remove_tag(req: &Req, id: &str, tag: &str) -> Result<Response> {
    let (mut rec, raw) = owned(req, id).await?;
    let before = rec.tags.len();
    rec.tags.retain(|t| t != tag);
    if rec.tags.len() == before {
        return Err(not_found(format!("Tag {tag} not found on image {id}")));
    }
    rec.updated_at = image::now();
    commit(req, &rec, raw).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(crate) async fn action(req: &Req, id: &str, action: &str) -> Result<Response> {
    let (want, from) = match action {
        "deactivate" => ("deactivated", "active"),
        "reactivate" => ("active", "deactivated"),
        _ => return Err(not_found("The resource could not be found.")),
    };
    let (mut rec, raw) = visible(req, id).await?;
    if !req.is_admin() {
        return Err(forbidden(format!(
            "You are not authorized to complete {action}_image action."
        )));
    }
    if rec.status == want {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    if rec.status != from {
        return Err(forbidden(format!(
            "Not allowed to {action} image in status '{}'",
            rec.status
        )));
    }
    rec.status = want.into();
    rec.updated_at = image::now();
    commit(req, &rec, raw).await?;
    tracing::info!(image = %id, status = want, "image {action}d");
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(range(None, 10), Ok(None));
        assert_eq!(range(Some("bytes=2-4"), 10), Ok(Some((2, 5))));
        assert_eq!(range(Some("bytes=2-"), 10), Ok(Some((2, 10))));
        assert_eq!(range(Some("bytes=-3"), 10), Ok(Some((7, 10))));
        assert_eq!(range(Some("bytes=5-100"), 10), Ok(Some((5, 10))));
        assert_eq!(range(Some("bytes=10-"), 10), Err(()));
        assert_eq!(range(Some("bytes=1-2,4-5"), 10), Ok(None));
        assert_eq!(range(Some("items=1-2"), 10), Ok(None));
        assert_eq!(range(Some("bytes=4-2"), 10), Ok(None));
    }

    #[test]
    fn pointers_are_one_level_and_unescaped() {
        assert_eq!(pointer(&json!("/name")).unwrap(), "name");
        assert_eq!(pointer(&json!("/a~1b~0c")).unwrap(), "a/b~c");
        assert!(pointer(&json!("name")).is_err());
        assert!(pointer(&json!("/tags/0")).is_err());
        assert!(pointer(&json!("/")).is_err());
        assert!(pointer(&json!(3)).is_err());
    }

    #[test]
    fn in_lists_match_any() {
        assert!(matches_text("in:a,b", Some("b")));
        assert!(!matches_text("in:a,b", Some("c")));
        assert!(matches_text("raw", Some("raw")));
        assert!(!matches_text("raw", None));
    }
}
