//! Static large objects (SLO): an object whose body is a manifest of segments.
//!
//! `PUT ?multipart-manifest=put` takes the client's list of `{path, etag, size_bytes,
//! range}` and `{data}` segments, HEADs every path with the caller's own token, and
//! stores Swift's internal manifest (`{name, bytes, hash, content_type,
//! last_modified, range, sub_slo}` and `{data}`) as an ordinary object with
//! `X-Static-Large-Object: True`, the large object's etag and size in sysmeta, and
//! `;swift_bytes=<size>` on its content type so listings show the assembled size.
//! GET assembles the segments (nested manifests and ranges included) and checks each
//! against the manifest before the first byte goes out; HEAD answers from sysmeta.
//! `DELETE ?multipart-manifest=delete` removes segments, sub-manifests, then the
//! manifest, answering as bulk delete does.

use crate::bulk;
use crate::response::{self, fault, Fault};
use crate::{authorize, hget, object_error, Handled, Need, ObjectRef, SwiftGateway};
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use base64::Engine;
use futures::StreamExt;
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use strata_object::{ObjectInfo, PutOptions};

/// Most object-backed segments in one manifest.
pub const MAX_MANIFEST_SEGMENTS: usize = 1000;
/// Largest manifest body taken.
pub const MAX_MANIFEST_BYTES: usize = 8 << 20;
/// Deepest nesting of manifests a GET follows.
const MAX_NESTING: usize = 10;
/// Seconds between heartbeat spaces of a `heartbeat=on` PUT.
pub const YIELD_FREQUENCY_SECS: u64 = 10;

pub const SLO_HEADER: &str = "x-static-large-object";
pub const SYSMETA_ETAG: &str = "x-object-sysmeta-slo-etag";
pub const SYSMETA_SIZE: &str = "x-object-sysmeta-slo-size";
/// The etag a container listing shows for the object instead of its own.
pub const LISTING_ETAG: &str = strata_object::LISTING_ETAG_OVERRIDE;

/// Whether a record is an SLO manifest.
pub fn is_slo(info: &ObjectInfo) -> bool {
    info.headers
        .get(SLO_HEADER)
        .is_some_and(|v| crate::truthy(Some(v)))
}

/// The large object's etag (unquoted) and size, from sysmeta.
pub fn slo_etag_size(info: &ObjectInfo) -> Option<(String, u64)> {
    let etag = info.headers.get(SYSMETA_ETAG)?.clone();
    let size = info.headers.get(SYSMETA_SIZE)?.parse().ok()?;
    Some((etag, size))
}

/// A content type without its `;swift_bytes=` parameter, and that parameter.
pub fn split_swift_bytes(ct: &str) -> (&str, Option<u64>) {
    if let Some((left, right)) = ct.rsplit_once(';') {
        if let Some(v) = right.trim_start().strip_prefix("swift_bytes=") {
            return (left, v.trim().parse().ok());
        }
    }
    (ct, None)
}

/// One segment of a stored manifest, in Swift's own shape.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StoredSegment {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub_slo: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}

impl StoredSegment {
    /// The bytes this segment contributes to the large object.
    fn length(&self) -> u64 {
        if let Some(d) = &self.data {
            return decode_b64(d).map(|v| v.len() as u64).unwrap_or(0);
        }
        let size = self.bytes.unwrap_or(0);
        match self.range.as_deref().and_then(|r| one_range(r, size)) {
            Some((s, e)) => e - s,
            None => size,
        }
    }
}

fn decode_b64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

/// The single byte range `spec` ("M-N", "M-" or "-N") names in an object of `size`.
fn one_range(spec: &str, size: u64) -> Option<(u64, u64)> {
    match response::parse_ranges(&format!("bytes={spec}"), size) {
        response::RangeOutcome::Ranges(r) if r.len() == 1 => Some(r[0]),
        _ => None,
    }
}

/// A segment of the client's manifest, validated.
enum InSegment {
    Path {
        path: String,
        etag: Option<String>,
        size: Option<u64>,
        range: Option<String>,
    },
    Data(Vec<u8>),
}

/// Swift's checks of a manifest body; every problem is reported, one line each.
fn parse_input(body: &[u8], self_path: &str) -> Result<Vec<InSegment>, Response> {
    let Ok(parsed) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Err(response::text(
            StatusCode::BAD_REQUEST,
            "Manifest must be valid JSON.\n",
        ));
    };
    let Some(list) = parsed.as_array() else {
        return Err(response::text(
            StatusCode::BAD_REQUEST,
            "Manifest must be a list.\n",
        ));
    };
    let mut errors = Vec::new();
    let mut out = Vec::new();
    let last = list.len().saturating_sub(1);
    for (i, seg) in list.iter().enumerate() {
        let Some(obj) = seg.as_object() else {
            errors.push(format!("Index {i}: not a JSON object"));
            continue;
        };
        let kind = if obj.contains_key("path") {
            "path"
        } else if obj.contains_key("data") {
            "data"
        } else {
            errors.push(format!(
                "Index {i}: expected keys to include one of 'path' or 'data'"
            ));
            continue;
        };
        let allowed: &[&str] = if kind == "path" {
            &["path", "etag", "size_bytes", "range"]
        } else {
            &["data"]
        };
        let mut extra: Vec<&String> = obj
            .keys()
            .filter(|k| !allowed.contains(&k.as_str()))
            .collect();
        if !extra.is_empty() {
            extra.sort();
            let names: Vec<String> = extra
                .iter()
                .map(|k| serde_json::Value::String((*k).clone()).to_string())
                .collect();
            errors.push(format!("Index {i}: extraneous keys {}", names.join(", ")));
            continue;
        }
        if kind == "data" {
            let data = obj["data"].as_str().and_then(decode_b64);
            match data {
                None => errors.push(format!("Index {i}: data must be valid base64")),
                Some(d) if d.is_empty() => errors.push(format!(
                    "Index {i}: too small; each segment must be at least 1 byte."
                )),
                Some(d) => out.push(InSegment::Data(d)),
            }
            continue;
        }
        let Some(path) = obj["path"].as_str() else {
            errors.push(format!("Index {i}: \"path\" must be a string"));
            continue;
        };
        let etag = match obj.get("etag") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(_) => {
                errors.push(format!(
                    "Index {i}: \"etag\" must be a string or null (if provided)"
                ));
                continue;
            }
        };
        if !path.trim_matches('/').contains('/') {
            errors.push(format!(
                "Index {i}: path does not refer to an object. Path must be of the form /container/object."
            ));
            continue;
        }
        let size = match obj.get("size_bytes") {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => {
                let n = match v {
                    serde_json::Value::Number(n) => n.as_i64(),
                    serde_json::Value::String(s) => s.trim().parse::<i64>().ok(),
                    _ => None,
                };
                match n {
                    None => {
                        errors.push(format!("Index {i}: invalid size_bytes"));
                        continue;
                    }
                    Some(n) if n < 1 && i != last => {
                        errors.push(format!(
                            "Index {i}: too small; each segment must be at least 1 byte."
                        ));
                        continue;
                    }
                    Some(n) => Some(n.max(0) as u64),
                }
            }
        };
        if format!("/{}", path.trim_start_matches('/')) == self_path {
            errors.push(format!(
                "Index {i}: manifest must not include itself as a segment"
            ));
            continue;
        }
        let range = match obj.get("range") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(r)) if r.is_empty() => None,
            Some(serde_json::Value::String(r)) => {
                match response::parse_ranges(&format!("bytes={r}"), u64::MAX) {
                    response::RangeOutcome::Ignore => {
                        errors.push(format!("Index {i}: invalid range"));
                        continue;
                    }
                    response::RangeOutcome::Ranges(v) if v.len() > 1 => {
                        errors.push(format!("Index {i}: multiple ranges (only one allowed)"));
                        continue;
                    }
                    _ => {}
                }
                if size.is_some_and(|s| one_range(r, s).is_none()) {
                    errors.push(format!("Index {i}: unsatisfiable range"));
                    continue;
                }
                Some(r.clone())
            }
            Some(_) => {
                errors.push(format!("Index {i}: invalid range"));
                continue;
            }
        };
        out.push(InSegment::Path {
            path: path.to_string(),
            etag,
            size,
            range,
        });
    }
    if !list.is_empty() && out.iter().all(|s| matches!(s, InSegment::Data(_))) && errors.is_empty()
    {
        errors.push("Inline data segments require at least one object-backed segment.".into());
    }
    if !errors.is_empty() {
        let body: String = errors.iter().map(|e| format!("{e}\n")).collect();
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        return Err(response::with_body(
            StatusCode::BAD_REQUEST,
            h,
            Body::from(body),
        ));
    }
    Ok(out)
}

/// What a HEAD of a segment path answered.
struct SegHead {
    size: u64,
    etag: String,
    content_type: String,
    last_modified: String,
    is_slo: bool,
}

/// HEAD `/<container>/<object>` of `account` as the caller, through the gateway itself.
async fn head_segment(
    gw: &Arc<SwiftGateway>,
    headers: &HeaderMap,
    account: &str,
    path: &str,
) -> Result<SegHead, String> {
    let uri = format!(
        "/v1/{}/{}",
        crate::quote_path(account),
        crate::quote_path(path.trim_start_matches('/'))
    );
    let resp = crate::subrequest(gw, Method::HEAD, &uri, headers, Body::empty()).await;
    let status = resp.status();
    if !status.is_success() {
        return Err(status_line(status));
    }
    let h = resp.headers();
    let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    let last_modified = crate::http_time(get("last-modified"))
        .map(|secs| response::iso_date(strata_types::Timestamp(secs * 1_000_000)))
        .unwrap_or_default();
    Ok(SegHead {
        size: get("content-length").parse().unwrap_or(0),
        etag: get("etag").trim_matches('"').to_string(),
        content_type: get("content-type").to_string(),
        last_modified,
        is_slo: crate::truthy(Some(get(SLO_HEADER))),
    })
}

/// "404 Not Found", as Swift writes a status.
pub fn status_line(s: StatusCode) -> String {
    format!("{} {}", s.as_u16(), s.canonical_reason().unwrap_or(""))
}

/// The formats SLO and bulk answers come in.
pub const ACCEPTABLE: [&str; 4] = [
    "text/plain",
    "application/json",
    "application/xml",
    "text/xml",
];

/// `PUT ?multipart-manifest=put`.
pub async fn put_manifest(
    gw: &Arc<SwiftGateway>,
    o: ObjectRef<'_>,
    headers: &HeaderMap,
    query: &BTreeMap<String, String>,
    body: Body,
) -> Handled {
    if headers.contains_key("x-copy-from") {
        return Err(response::text(
            StatusCode::METHOD_NOT_ALLOWED,
            "Multipart Manifest PUTs cannot be COPY requests",
        ));
    }
    let too_large = || {
        response::text(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("Manifest File > {MAX_MANIFEST_BYTES} bytes"),
        )
    };
    match hget(headers, "content-length") {
        Some(l) => match l.trim().parse::<u64>() {
            Ok(n) if n > MAX_MANIFEST_BYTES as u64 => return Err(too_large()),
            Ok(_) => {}
            Err(_) => return Err(crate::bad_request("Invalid Content-Length")),
        },
        None if !headers.contains_key(header::TRANSFER_ENCODING) => {
            return Err(fault(Fault::LengthRequired))
        }
        None => {}
    }
    let manifest = axum::body::to_bytes(body, MAX_MANIFEST_BYTES)
        .await
        .map_err(|_| too_large())?;
    let self_path = format!("/{}/{}", o.container, o.object);
    let parsed = parse_input(&manifest, &self_path)?;
    let object_segments = parsed
        .iter()
        .filter(|s| matches!(s, InSegment::Path { .. }))
        .count();
    if object_segments > MAX_MANIFEST_SEGMENTS {
        return Err(response::text(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("Number of object-backed segments must be <= {MAX_MANIFEST_SEGMENTS}"),
        ));
    }
    crate::check_if_none_match(gw, o, headers).await?;
    crate::quota::check_upload(gw, headers, o.account, o.container, manifest.len() as u64).await?;
    let out_type = bulk::best_match(hget(headers, "accept"), &ACCEPTABLE).unwrap_or("text/plain");
    let heartbeat = crate::truthy(query.get("heartbeat").map(String::as_str));
    let (kept, _) = crate::kept_headers(headers, false)?;
    let meta = crate::meta_from_headers(headers, "x-object-meta-")?;
    let job = ManifestJob {
        gw: gw.clone(),
        account: o.account.to_string(),
        container: o.container.to_string(),
        object: o.object.to_string(),
        headers: headers.clone(),
        parsed,
        kept,
        meta,
    };
    if !heartbeat {
        return match job.run().await {
            ManifestOutcome::Stored(resp) => Ok(resp),
            ManifestOutcome::Problems(problems) => {
                let body = bulk::result_body(out_type, &[], &problems, "upload");
                let mut h = HeaderMap::new();
                response::put_str(&mut h, "content-type", out_type);
                Err(response::with_body(
                    StatusCode::BAD_REQUEST,
                    h,
                    Body::from(body),
                ))
            }
            ManifestOutcome::Failed(resp) => Err(resp),
        };
    }
    // Heartbeat: 202 at once, a space every few seconds while segments are checked,
    // then the outcome as a bulk-style body.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    let out_type_owned = out_type.to_string();
    tokio::spawn(async move {
        let _ = tx.send(Ok(bytes::Bytes::from_static(b" "))).await;
        let work = job.run();
        tokio::pin!(work);
        let outcome = loop {
            tokio::select! {
                o = &mut work => break o,
                _ = tokio::time::sleep(std::time::Duration::from_secs(YIELD_FREQUENCY_SECS)) => {
                    let _ = tx.send(Ok(bytes::Bytes::from_static(b" "))).await;
                }
            }
        };
        let (fields, problems) = heartbeat_fields(outcome).await;
        let body = bulk::result_body(&out_type_owned, &fields, &problems, "upload");
        let mut out = b"\r\n\r\n".to_vec();
        out.extend_from_slice(&body);
        let _ = tx.send(Ok(bytes::Bytes::from(out))).await;
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let mut h = HeaderMap::new();
    response::put_str(&mut h, "content-type", out_type);
    Ok(response::with_body(
        StatusCode::ACCEPTED,
        h,
        Body::from_stream(stream),
    ))
}

/// The fields of a heartbeat answer: `Response Status`, `Response Body`, and on
/// success `Etag` and `Last Modified`.
async fn heartbeat_fields(
    outcome: ManifestOutcome,
) -> (Vec<(String, serde_json::Value)>, Vec<(String, String)>) {
    let mut fields = Vec::new();
    match outcome {
        ManifestOutcome::Problems(problems) => {
            fields.push(("Response Status".into(), "400 Bad Request".into()));
            fields.push(("Response Body".into(), BAD_REQUEST_TEXT.into()));
            (fields, problems)
        }
        ManifestOutcome::Stored(resp) | ManifestOutcome::Failed(resp) => {
            let status = resp.status();
            fields.push(("Response Status".into(), status_line(status).into()));
            let h = resp.headers().clone();
            if status.is_success() {
                if let Some(e) = h.get("etag").and_then(|v| v.to_str().ok()) {
                    fields.push(("Etag".into(), e.into()));
                }
                if let Some(l) = h.get("last-modified").and_then(|v| v.to_str().ok()) {
                    fields.push(("Last Modified".into(), l.into()));
                }
            }
            let body = axum::body::to_bytes(resp.into_body(), 64 << 10)
                .await
                .unwrap_or_default();
            let mut text = String::from_utf8_lossy(&body).to_string();
            if status == StatusCode::UNPROCESSABLE_ENTITY {
                text = UNPROCESSABLE_TEXT.to_string();
            } else if text.is_empty() && !status.is_success() {
                text = status.canonical_reason().unwrap_or("").to_string();
            }
            fields.push(("Response Body".into(), text.into()));
            (fields, Vec::new())
        }
    }
}

/// Swift's reason and explanation of a 400 and a 422, as heartbeat bodies give them.
const BAD_REQUEST_TEXT: &str = "Bad Request\nThe server could not comply with the request since it is either malformed or otherwise incorrect.";
const UNPROCESSABLE_TEXT: &str =
    "Unprocessable Entity\nUnable to process the contained instructions";

struct ManifestJob {
    gw: Arc<SwiftGateway>,
    account: String,
    container: String,
    object: String,
    headers: HeaderMap,
    parsed: Vec<InSegment>,
    kept: BTreeMap<String, String>,
    meta: BTreeMap<String, String>,
}

enum ManifestOutcome {
    /// The manifest is stored: the 201.
    Stored(Response),
    /// Segments that failed validation: (quoted name, reason).
    Problems(Vec<(String, String)>),
    /// Another refusal (422, 404 of the container, ...).
    Failed(Response),
}

impl ManifestJob {
    async fn run(self) -> ManifestOutcome {
        let mut heads: HashMap<String, Result<SegHead, String>> = HashMap::new();
        for seg in &self.parsed {
            if let InSegment::Path { path, .. } = seg {
                if !heads.contains_key(path) {
                    let h = head_segment(&self.gw, &self.headers, &self.account, path).await;
                    heads.insert(path.clone(), h);
                }
            }
        }
        let mut problems = Vec::new();
        let mut stored = Vec::new();
        let mut total = 0u64;
        let last = self.parsed.len().saturating_sub(1);
        for (i, seg) in self.parsed.iter().enumerate() {
            match seg {
                InSegment::Data(d) => {
                    total += d.len() as u64;
                    stored.push(StoredSegment {
                        data: Some(base64::engine::general_purpose::STANDARD.encode(d)),
                        ..Default::default()
                    });
                }
                InSegment::Path {
                    path,
                    etag,
                    size,
                    range,
                } => {
                    let quoted = crate::quote_path(path);
                    let head = match &heads[path] {
                        Ok(h) => h,
                        Err(status) => {
                            problems.push((quoted, status.clone()));
                            continue;
                        }
                    };
                    let mut length = head.size;
                    let mut kept_range = None;
                    if let Some(r) = range {
                        match one_range(r, head.size) {
                            None => problems.push((quoted.clone(), "Unsatisfiable Range".into())),
                            Some((0, e)) if e == head.size => {}
                            Some((s, e)) => {
                                kept_range = Some(format!("{s}-{}", e - 1));
                                length = e - s;
                            }
                        }
                    }
                    if length < 1 && i != last {
                        problems.push((
                            quoted.clone(),
                            "Too small; each segment must be at least 1 byte.".into(),
                        ));
                    }
                    if size.is_some_and(|s| s != head.size) {
                        problems.push((quoted.clone(), "Size Mismatch".into()));
                    }
                    if etag.as_ref().is_some_and(|e| *e != head.etag) {
                        problems.push((quoted.clone(), "Etag Mismatch".into()));
                    }
                    total += length;
                    stored.push(StoredSegment {
                        name: Some(format!("/{}", path.trim_start_matches('/'))),
                        bytes: Some(head.size),
                        hash: Some(head.etag.clone()),
                        content_type: Some(head.content_type.clone()),
                        last_modified: Some(head.last_modified.clone()),
                        range: kept_range,
                        sub_slo: head.is_slo.then_some(true),
                        data: None,
                    });
                }
            }
        }
        if !problems.is_empty() {
            return ManifestOutcome::Problems(problems);
        }
        let slo_etag = large_object_etag(&stored);
        if let Some(client) = hget(&self.headers, "etag") {
            let client = client.trim().trim_matches('"');
            if !client.is_empty() && client != slo_etag {
                return ManifestOutcome::Failed(fault(Fault::UnprocessableEntity));
            }
        }
        let target = ObjectRef {
            account: &self.account,
            container: &self.container,
            object: &self.object,
        };
        if let Err(resp) = crate::versioning::before_write(&self.gw, target).await {
            return ManifestOutcome::Failed(resp);
        }
        let json = serde_json::to_vec(&stored).unwrap_or_default();
        let manifest_md5 = crate::hex_lower(&Md5::digest(&json));
        let content_type = match hget(&self.headers, "content-type") {
            Some(ct) if !ct.trim().is_empty() => ct.to_string(),
            _ => crate::guess_type(&self.object).to_string(),
        };
        let mut kept = self.kept;
        kept.insert(SLO_HEADER.into(), "True".into());
        kept.insert(SYSMETA_ETAG.into(), slo_etag.clone());
        kept.insert(SYSMETA_SIZE.into(), total.to_string());
        kept.insert(
            LISTING_ETAG.into(),
            format!("{manifest_md5}; slo_etag={slo_etag}"),
        );
        let opts = PutOptions {
            content_type: Some(format!("{content_type};swift_bytes={total}")),
            meta: self.meta,
            headers: kept,
            expected_etag: None,
        };
        let body = futures::stream::iter([Ok::<_, String>(bytes::Bytes::from(json))]);
        match self
            .gw
            .objects
            .put_object(&self.account, &self.container, &self.object, body, opts)
            .await
        {
            Err(e) => ManifestOutcome::Failed(object_error(e)),
            Ok(info) => {
                let mut h = HeaderMap::new();
                response::put_str(&mut h, "etag", &format!("\"{slo_etag}\""));
                response::put_str(
                    &mut h,
                    "last-modified",
                    &response::http_date(info.timestamp),
                );
                response::put_str(&mut h, "x-timestamp", &info.timestamp.to_swift());
                ManifestOutcome::Stored(response::empty(StatusCode::CREATED, h))
            }
        }
    }
}

/// The large object's etag: the MD5 of its segments' etags (ranges and data included).
fn large_object_etag(segments: &[StoredSegment]) -> String {
    let mut md5 = Md5::new();
    for s in segments {
        if let Some(d) = &s.data {
            md5.update(crate::hex_lower(&Md5::digest(
                decode_b64(d).unwrap_or_default(),
            )));
        } else if let Some(r) = &s.range {
            md5.update(format!("{}:{r};", s.hash.as_deref().unwrap_or("")));
        } else {
            md5.update(s.hash.as_deref().unwrap_or(""));
        }
    }
    crate::hex_lower(&md5.finalize())
}

/// A stored manifest's segments.
pub async fn read_manifest(
    gw: &SwiftGateway,
    account: &str,
    container: &str,
    object: &str,
    info: &ObjectInfo,
) -> Result<Vec<StoredSegment>, Response> {
    let mut body = Vec::with_capacity(info.size as usize);
    let mut s = Box::pin(
        gw.objects
            .read_range(account, container, object, info, 0, info.size),
    );
    while let Some(chunk) = s.next().await {
        body.extend_from_slice(&chunk.map_err(object_error)?);
    }
    serde_json::from_slice(&body).map_err(|e| {
        tracing::error!(account, container, object, error = %e, "unreadable SLO manifest");
        response::text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Unable to load SLO manifest",
        )
    })
}

/// A piece of an assembled large object.
#[derive(Clone)]
pub enum Piece {
    /// Bytes `[start, end)` of an object in the same account.
    Object {
        container: String,
        name: String,
        info: Arc<ObjectInfo>,
        start: u64,
        end: u64,
    },
    /// Inline bytes.
    Data(bytes::Bytes),
}

impl Piece {
    pub fn len(&self) -> u64 {
        match self {
            Piece::Object { start, end, .. } => end - start,
            Piece::Data(d) => d.len() as u64,
        }
    }

    /// The part `[from, to)` of this piece (offsets within it).
    pub fn slice(&self, from: u64, to: u64) -> Piece {
        match self {
            Piece::Object {
                container,
                name,
                info,
                start,
                ..
            } => Piece::Object {
                container: container.clone(),
                name: name.clone(),
                info: info.clone(),
                start: start + from,
                end: start + to,
            },
            Piece::Data(d) => Piece::Data(d.slice(from as usize..to as usize)),
        }
    }
}

/// The pieces `[start, end)` of a list of pieces.
pub fn slice_pieces(pieces: &[Piece], start: u64, end: u64) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut off = 0u64;
    for p in pieces {
        let (s, e) = (off, off + p.len());
        off = e;
        if e <= start || s >= end {
            continue;
        }
        out.push(p.slice(start.saturating_sub(s), end.min(e) - s));
    }
    out
}

/// Segments are read with the caller's rights on their containers.
pub struct SegmentReader<'a> {
    gw: &'a SwiftGateway,
    headers: &'a HeaderMap,
    account: &'a str,
    allowed: HashMap<String, bool>,
}

impl<'a> SegmentReader<'a> {
    pub fn new(gw: &'a SwiftGateway, headers: &'a HeaderMap, account: &'a str) -> Self {
        SegmentReader {
            gw,
            headers,
            account,
            allowed: HashMap::new(),
        }
    }

    /// Every piece of a manifest's large object, each checked against the manifest.
    /// A missing, changed or unreadable segment is a 409, as in Swift.
    pub async fn expand(
        &mut self,
        segments: &[StoredSegment],
        depth: usize,
    ) -> Result<Vec<Piece>, Response> {
        if depth > MAX_NESTING {
            tracing::info!(account = self.account, "SLO nesting too deep");
            return Err(fault(Fault::Conflict));
        }
        let mut out = Vec::new();
        for seg in segments {
            if let Some(d) = &seg.data {
                let d = decode_b64(d).ok_or_else(|| fault(Fault::Conflict))?;
                out.push(Piece::Data(bytes::Bytes::from(d)));
                continue;
            }
            let name = seg.name.as_deref().unwrap_or("");
            let Some((c, obj)) = name.trim_start_matches('/').split_once('/') else {
                return Err(fault(Fault::Conflict));
            };
            if !self.may_read(c).await {
                tracing::info!(
                    account = self.account,
                    segment = name,
                    "SLO segment not readable"
                );
                return Err(fault(Fault::Conflict));
            }
            let info = match self.gw.objects.head_object(self.account, c, obj).await {
                Ok(i) => i,
                Err(e) => {
                    tracing::info!(account = self.account, segment = name, error = %e, "SLO segment missing");
                    return Err(fault(Fault::Conflict));
                }
            };
            let pieces = if is_slo(&info) {
                let (etag, size) = slo_etag_size(&info).unwrap_or_default();
                check_segment(seg, &etag, size, name)?;
                let sub = read_manifest(self.gw, self.account, c, obj, &info).await?;
                Box::pin(self.expand(&sub, depth + 1)).await?
            } else {
                check_segment(seg, &info.etag, info.size, name)?;
                let size = info.size;
                vec![Piece::Object {
                    container: c.to_string(),
                    name: obj.to_string(),
                    info: Arc::new(info),
                    start: 0,
                    end: size,
                }]
            };
            let total: u64 = pieces.iter().map(Piece::len).sum();
            match seg.range.as_deref().and_then(|r| one_range(r, total)) {
                Some((s, e)) => out.extend(slice_pieces(&pieces, s, e)),
                None => out.extend(pieces),
            }
        }
        Ok(out)
    }

    async fn may_read(&mut self, container: &str) -> bool {
        if let Some(ok) = self.allowed.get(container) {
            return *ok;
        }
        let ok = authorize(
            self.gw,
            self.headers,
            self.account,
            Some(container),
            Need::ReadObject,
        )
        .await
        .is_ok();
        self.allowed.insert(container.to_string(), ok);
        ok
    }
}

fn check_segment(seg: &StoredSegment, etag: &str, size: u64, name: &str) -> Result<(), Response> {
    let etag_ok = seg.hash.as_deref().is_none_or(|h| h == etag);
    let size_ok = seg.bytes.is_none_or(|b| b == size);
    if etag_ok && size_ok {
        return Ok(());
    }
    tracing::warn!(
        segment = name,
        "SLO segment changed since the manifest was written"
    );
    Err(fault(Fault::Conflict))
}

/// The lengths of a manifest's top-level segments (for `part-number`).
pub fn part_lengths(segments: &[StoredSegment]) -> Vec<u64> {
    segments.iter().map(StoredSegment::length).collect()
}

/// The bytes `[start, end)` of top-level segment `n` (1-based), if there is one.
pub fn part_range(segments: &[StoredSegment], n: usize) -> Option<(u64, u64)> {
    let lengths = part_lengths(segments);
    let len = *lengths.get(n.checked_sub(1)?)?;
    let start: u64 = lengths[..n - 1].iter().sum();
    Some((start, start + len))
}

/// `part-number` of a GET or HEAD: None when absent; 400 when invalid.
pub fn part_number(
    query: &BTreeMap<String, String>,
    headers: &HeaderMap,
    method: &Method,
) -> Result<Option<usize>, Response> {
    let Some(v) = query.get("part-number") else {
        return Ok(None);
    };
    let bad = |msg: &str| {
        if *method == Method::HEAD {
            response::empty(StatusCode::BAD_REQUEST, HeaderMap::new())
        } else {
            response::text(StatusCode::BAD_REQUEST, msg)
        }
    };
    match v.trim().parse::<i64>() {
        Ok(n) if n > 0 => {
            if headers.contains_key(header::RANGE) {
                return Err(bad(
                    "Range requests are not supported with part number queries",
                ));
            }
            Ok(Some(n as usize))
        }
        _ => Err(bad("Part number must be an integer greater than 0")),
    }
}

/// The raw form of a stored manifest (`?multipart-manifest=get&format=raw`):
/// the client's `{path, etag, size_bytes, range}` shape.
pub fn raw_manifest(segments: &[StoredSegment]) -> Vec<u8> {
    let list: Vec<serde_json::Value> = segments
        .iter()
        .map(|s| {
            if let Some(d) = &s.data {
                return serde_json::json!({ "data": d });
            }
            let mut m = serde_json::Map::new();
            m.insert("etag".into(), s.hash.clone().into());
            m.insert("path".into(), s.name.clone().into());
            if let Some(r) = &s.range {
                m.insert("range".into(), r.clone().into());
            }
            m.insert("size_bytes".into(), s.bytes.into());
            serde_json::Value::Object(m)
        })
        .collect();
    serde_json::to_vec(&list).unwrap_or_default()
}

/// `DELETE ?multipart-manifest=delete`: the segments (and sub-manifests' segments),
/// then the manifests, each deleted as the caller through the gateway.
pub async fn delete_manifest(
    gw: &Arc<SwiftGateway>,
    o: ObjectRef<'_>,
    headers: &HeaderMap,
) -> Handled {
    let out_type = bulk::best_match(hget(headers, "accept"), &ACCEPTABLE);
    let mut names: Vec<bulk::Target> = Vec::new();
    let mut queue: std::collections::VecDeque<(String, bool)> =
        std::collections::VecDeque::from([(format!("/{}/{}", o.container, o.object), true)]);
    while let Some((name, sub_slo)) = queue.pop_front() {
        if queue.len() > MAX_MANIFEST_SEGMENTS * 10 {
            return Err(crate::bad_request(
                "Too many buffered slo segments to delete.",
            ));
        }
        if !sub_slo {
            names.push(bulk::Target::named(name));
            continue;
        }
        match manifest_segments(gw, headers, o.account, &name).await {
            Ok(segs) => {
                for s in segs {
                    if s.data.is_some() {
                        continue;
                    }
                    if let Some(n) = s.name {
                        queue.push_back((n, s.sub_slo.unwrap_or(false)));
                    }
                }
                queue.push_back((name, false));
            }
            Err((code, message)) => names.push(bulk::Target {
                name,
                error: Some((code, message)),
            }),
        }
    }
    Ok(bulk::delete_response(gw, o.account, headers, names, out_type).await)
}

/// A manifest's segments read as the caller (`GET ?multipart-manifest=get`).
async fn manifest_segments(
    gw: &Arc<SwiftGateway>,
    headers: &HeaderMap,
    account: &str,
    name: &str,
) -> Result<Vec<StoredSegment>, (u16, String)> {
    let uri = format!(
        "/v1/{}/{}?multipart-manifest=get",
        crate::quote_path(account),
        crate::quote_path(name.trim_start_matches('/'))
    );
    let resp = crate::subrequest(gw, Method::GET, &uri, headers, Body::empty()).await;
    let status = resp.status();
    let is_manifest = crate::truthy(hget(resp.headers(), SLO_HEADER));
    if status.is_success() {
        if !is_manifest {
            return Err((400, "Not an SLO manifest".into()));
        }
        let body = axum::body::to_bytes(resp.into_body(), MAX_MANIFEST_BYTES * 2)
            .await
            .map_err(|_| (500, "Unable to load SLO manifest".to_string()))?;
        return serde_json::from_slice(&body)
            .map_err(|_| (500, "Unable to load SLO manifest".to_string()));
    }
    Err(match status {
        StatusCode::NOT_FOUND => (404, "SLO manifest not found".into()),
        StatusCode::UNAUTHORIZED => (401, "401 Unauthorized".into()),
        _ => (500, "Unable to load SLO manifest or segment.".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors_of(body: &str) -> Option<StatusCode> {
        parse_input(body.as_bytes(), "/c/m")
            .err()
            .map(|r| r.status())
    }

    #[test]
    fn manifest_input_is_checked() {
        assert_eq!(errors_of("{"), Some(StatusCode::BAD_REQUEST));
        assert_eq!(errors_of("{}"), Some(StatusCode::BAD_REQUEST));
        assert_eq!(errors_of("[1]"), Some(StatusCode::BAD_REQUEST));
        assert_eq!(
            errors_of(r#"[{"path":"nocontainer"}]"#),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            errors_of(r#"[{"path":"/c/m"}]"#),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            errors_of(r#"[{"path":"/c/o","range":"x"}]"#),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            errors_of(r#"[{"path":"/c/o","range":"1-2,4-5"}]"#),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            errors_of(r#"[{"path":"/c/o","size_bytes":5,"range":"9-"}]"#),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            errors_of(r#"[{"data":"!!"}]"#),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            errors_of(r#"[{"data":"YQ=="}]"#),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            errors_of(r#"[{"path":"/c/o","x":1}]"#),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            errors_of(r#"[{"path":"/c/o","size_bytes":"a"}]"#),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            errors_of(r#"[{"path":"/c/o","etag":null,"size_bytes":null}]"#),
            None
        );
        assert_eq!(
            errors_of(r#"[{"data":"YQ=="},{"path":"c/o","range":"-3"}]"#),
            None
        );
    }

    #[test]
    fn large_object_etag_covers_ranges_and_data() {
        let plain = StoredSegment {
            name: Some("/c/a".into()),
            hash: Some("aa".into()),
            bytes: Some(10),
            ..Default::default()
        };
        let ranged = StoredSegment {
            range: Some("1-2".into()),
            ..plain.clone()
        };
        let data = StoredSegment {
            data: Some("YQ==".into()),
            ..Default::default()
        };
        let expect = crate::hex_lower(&Md5::digest(format!(
            "aaaa:1-2;{}",
            crate::hex_lower(&Md5::digest(b"a"))
        )));
        assert_eq!(large_object_etag(&[plain, ranged.clone(), data]), expect);
        assert_eq!(ranged.length(), 2);
    }

    #[test]
    fn pieces_slice_across_boundaries() {
        let p = vec![
            Piece::Data(bytes::Bytes::from_static(b"abc")),
            Piece::Data(bytes::Bytes::from_static(b"defg")),
        ];
        let s = slice_pieces(&p, 2, 5);
        let joined: Vec<u8> = s
            .iter()
            .flat_map(|x| match x {
                Piece::Data(d) => d.to_vec(),
                _ => vec![],
            })
            .collect();
        assert_eq!(joined, b"cde");
    }

    #[test]
    fn swift_bytes_is_split_off() {
        assert_eq!(
            split_swift_bytes("text/plain;swift_bytes=12"),
            ("text/plain", Some(12))
        );
        assert_eq!(split_swift_bytes("text/plain"), ("text/plain", None));
    }
}
