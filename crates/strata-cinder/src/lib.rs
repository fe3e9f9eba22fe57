//! The Block Storage gateway: Cinder v2 and v3 (microversion 3.0) on port 8776, and Nova's
//! v1.1 `os-volumes` family backed by the same records ([`nova`]).
//!
//! Owns the API records (meta tables `cinder.*`, see [`model`]) and their status machine;
//! block semantics (layers, snapshots, clones, exports) belong to `strata-volume`, and every
//! change to a block record is made in the same meta transaction as the API record that
//! describes it. Requests carry a Keystone token; the project in the path must be the
//! token's unless the caller is an admin. Faults use Cinder's body form
//! (`{"badRequest": {"code": 400, "message": ...}}`).

mod backups;
pub mod model;
pub mod nova;
mod quotas;
mod snapshots;
mod types;
mod volumes;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use strata_api::auth::{auth_token, AuthContext, TokenValidator};
use strata_api::fault::{Fault, FaultStyle};
use strata_data::DataPlane;
use strata_meta::{Check, MetaStore, Op, Txn};
use strata_object::ObjectService;

/// The one microversion served on v3.
pub const MICROVERSION: &str = "3.0";
/// The largest JSON body accepted.
const MAX_BODY: usize = 1 << 20;

/// Everything the gateway needs from the node.
pub struct CinderGateway {
    pub meta: Arc<dyn MetaStore>,
    pub volumes: strata_volume::Registry,
    pub data: Arc<DataPlane>,
    pub objects: Arc<ObjectService>,
    /// Image bytes, for volumes created from images that need converting.
    pub images: strata_image::data::ImageData,
    pub auth: Arc<dyn TokenValidator>,
    /// `http://H:8776`, for links and version documents.
    pub public_url: String,
    /// Where NBD clients reach this node's exports.
    pub nbd_host: String,
    pub nbd_port: u16,
    /// Where this node's vhost-user-blk sockets are, if it serves them.
    pub vhost_user_dir: Option<std::path::PathBuf>,
}

/// The router serving Cinder on its own port.
pub fn router(gw: Arc<CinderGateway>) -> axum::Router {
    axum::Router::new()
        .fallback(handle)
        .with_state(gw)
        .layer(axum::Extension(FaultStyle::Compute))
}

type Result<T> = std::result::Result<T, Fault>;

pub(crate) fn fault(status: StatusCode, message: impl Into<String>) -> Fault {
    Fault::new(status, message).with_style(FaultStyle::Compute)
}

pub(crate) fn bad_request(message: impl Into<String>) -> Fault {
    fault(StatusCode::BAD_REQUEST, message)
}

pub(crate) fn not_found(message: impl Into<String>) -> Fault {
    fault(StatusCode::NOT_FOUND, message)
}

pub(crate) fn forbidden(message: impl Into<String>) -> Fault {
    fault(StatusCode::FORBIDDEN, message)
}

pub(crate) fn conflict(message: impl Into<String>) -> Fault {
    fault(StatusCode::CONFLICT, message)
}

pub(crate) fn internal(message: impl Into<String>) -> Fault {
    fault(StatusCode::INTERNAL_SERVER_ERROR, message)
}

pub(crate) fn meta_fault(e: strata_meta::MetaError) -> Fault {
    tracing::error!(error = %e, "meta group unavailable");
    fault(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("metadata unavailable: {e}"),
    )
}

pub(crate) fn volume_fault(e: strata_volume::VolumeError) -> Fault {
    use strata_volume::VolumeError as E;
    match e {
        E::Invalid(m) => bad_request(m),
        E::NotFound(m) => not_found(format!("{m} could not be found.")),
        E::Exists(m) | E::Conflict(m) => conflict(m),
        E::Meta(e) => meta_fault(e),
        E::Codec(m) => internal(m),
    }
}

/// A JSON answer with a status.
pub(crate) fn reply(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// One request, after authentication.
pub(crate) struct Req {
    pub gw: Arc<CinderGateway>,
    pub ctx: AuthContext,
    /// `v2` or `v3`.
    pub version: &'static str,
    /// The project in the path.
    pub project: String,
    pub method: Method,
    pub query: HashMap<String, String>,
    pub body: Bytes,
}

impl Req {
    /// The request body as `T`; a 400 when it is missing or malformed.
    pub fn body<T: DeserializeOwned>(&self) -> Result<T> {
        if self.body.is_empty() {
            return Err(bad_request("The request body is missing."));
        }
        serde_json::from_slice(&self.body).map_err(|e| {
            tracing::info!(error = %e, "malformed Cinder request body");
            bad_request(format!("Malformed request body: {e}"))
        })
    }

    /// The body as a JSON object holding `key`; 400 otherwise.
    pub fn body_object(&self, key: &str) -> Result<serde_json::Map<String, Value>> {
        let v: Value = self.body()?;
        match v.get(key) {
            Some(Value::Object(m)) => Ok(m.clone()),
            _ => Err(bad_request(format!(
                "Missing required element '{key}' in request body."
            ))),
        }
    }

    pub fn is_admin(&self) -> bool {
        self.ctx.is_admin()
    }

    /// Changing calls need a role that may write (not only `reader`).
    pub fn require_writer(&self) -> Result<()> {
        if self.ctx.may_write() {
            return Ok(());
        }
        Err(forbidden(
            "Policy doesn't allow this operation to be performed.",
        ))
    }

    pub fn require_admin(&self) -> Result<()> {
        if self.is_admin() {
            return Ok(());
        }
        Err(forbidden(
            "Policy doesn't allow this operation to be performed.",
        ))
    }

    /// Whether a record of `project` is visible: the own project, or any for an admin
    /// (lists show other projects' only with `all_tenants`).
    pub fn may_see(&self, project: &str) -> bool {
        project == self.project || self.is_admin()
    }

    pub fn all_tenants(&self) -> bool {
        self.is_admin()
            && self
                .query
                .get("all_tenants")
                .is_some_and(|v| !matches!(v.as_str(), "0" | "false" | "False" | ""))
    }

    pub fn links(&self, kind: &str, id: &str) -> Value {
        model::links(&self.gw.public_url, self.version, &self.project, kind, id)
    }

    /// Read and decode one record linearizably.
    pub async fn load<T: DeserializeOwned>(
        &self,
        table: &str,
        id: &str,
    ) -> Result<Option<(T, Vec<u8>)>> {
        let raw = self.gw.meta.get(table, id).await.map_err(meta_fault)?;
        Ok(raw.and_then(|raw| model::decode(&raw).map(|v| (v, raw))))
    }

    /// A record the caller may see, with its stored bytes (for an `Equals` check); 404
    /// otherwise.
    pub async fn visible<T: model::Owned>(&self, id: &str) -> Result<(T, Vec<u8>)> {
        match self.load::<T>(T::TABLE, id).await? {
            Some((r, raw)) if self.may_see(r.project_id()) => Ok((r, raw)),
            _ => Err(not_found(format!("{} {id} could not be found.", T::KIND))),
        }
    }

    /// Apply `f` to a record in one transaction that fails (409) if the record changed since
    /// it was read; returns the new record.
    pub async fn change<T: model::Owned>(
        &self,
        id: &str,
        f: impl FnOnce(&mut T) -> Result<()>,
    ) -> Result<T> {
        let (mut r, raw) = self.visible::<T>(id).await?;
        f(&mut r)?;
        r.touch(model::now());
        self.commit(
            vec![unchanged(T::TABLE, id, raw)],
            vec![put(T::TABLE, id, model::encode(&r))],
            &format!("{} {id}", T::KIND),
        )
        .await?;
        Ok(r)
    }

    /// Every record of a table this caller may list (own project, or all with `all_tenants`).
    pub async fn list<T: DeserializeOwned>(
        &self,
        table: &str,
        project_of: impl Fn(&T) -> &str,
    ) -> Result<Vec<T>> {
        let all = self.all_tenants();
        let rows = self
            .gw
            .meta
            .scan(table, "", None, usize::MAX)
            .await
            .map_err(meta_fault)?;
        Ok(rows
            .into_iter()
            .filter_map(|(_, raw)| model::decode::<T>(&raw))
            .filter(|r| all || project_of(r) == self.project)
            .collect())
    }

    /// Commit a transaction; a failed check is a 409 (another request changed the record).
    pub async fn commit(&self, checks: Vec<Check>, ops: Vec<Op>, what: &str) -> Result<()> {
        let out = self
            .gw
            .meta
            .write(Txn { checks, ops })
            .await
            .map_err(meta_fault)?;
        if out.succeeded {
            Ok(())
        } else {
            Err(conflict(format!(
                "{what} was changed by another request; try again."
            )))
        }
    }
}

/// The first of `keys` present in a request object, as a string of at most 255 characters;
/// None when none is there (or all are null). Anything else is a 400.
pub(crate) fn text_field(
    m: &serde_json::Map<String, Value>,
    keys: &[&str],
) -> Result<Option<String>> {
    for k in keys {
        match m.get(*k) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s.len() <= 255 => return Ok(Some(s.clone())),
            Some(_) => {
                return Err(bad_request(format!(
                    "Invalid input received: {k} must be a string of at most 255 characters."
                )))
            }
        }
    }
    Ok(None)
}

/// An `Equals` check on a record as read.
pub(crate) fn unchanged(table: &str, id: &str, raw: Vec<u8>) -> Check {
    Check::Equals {
        table: table.into(),
        key: id.into(),
        value: raw,
    }
}

pub(crate) fn put(table: &str, id: &str, value: Vec<u8>) -> Op {
    Op::Put {
        table: table.into(),
        key: id.into(),
        value,
    }
}

pub(crate) fn del(table: &str, id: &str) -> Op {
    Op::Delete {
        table: table.into(),
        key: id.into(),
    }
}

fn version_entry(base: &str, v: &str) -> Value {
    let (id, status, min, max) = match v {
        "v2" => ("v2.0", "DEPRECATED", "", ""),
        _ => ("v3.0", "CURRENT", MICROVERSION, MICROVERSION),
    };
    json!({
        "id": id,
        "status": status,
        "version": max,
        "min_version": min,
        "updated": "2026-11-27T00:00:00Z",
        "links": [
            {"rel": "describedby", "type": "text/html", "href": "https://docs.openstack.org/"},
            {"rel": "self", "href": format!("{base}/{v}/")},
        ],
        "media-types": [
            {"base": "application/json", "type": format!("application/vnd.openstack.volume+json;version={}", &v[1..])}
        ],
    })
}

/// Checks the requested microversion of a v3 call: absent, `3.0` or `latest`.
fn check_microversion(headers: &HeaderMap) -> Result<()> {
    for name in ["openstack-api-version", "x-openstack-volume-api-version"] {
        let Some(v) = headers.get(name) else { continue };
        let v = v.to_str().unwrap_or("").trim();
        let wanted = if name == "openstack-api-version" {
            match v.split_once(char::is_whitespace) {
                Some((service, ver)) if service.eq_ignore_ascii_case("volume") => ver.trim(),
                _ => continue,
            }
        } else {
            v
        };
        if wanted != "latest" && wanted != MICROVERSION && wanted != "3" {
            return Err(fault(
                StatusCode::NOT_ACCEPTABLE,
                format!(
                    "Version {wanted} is not supported by the API. Minimum is {MICROVERSION} and maximum is {MICROVERSION}."
                ),
            ));
        }
    }
    Ok(())
}

fn query_map(uri: &Uri) -> HashMap<String, String> {
    uri.query()
        .map(|q| {
            q.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    let dec = |s: &str| percent_decode(&s.replace('+', " "));
                    (dec(k), dec(v))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle(
    State(gw): State<Arc<CinderGateway>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().trim_end_matches(".json").to_string();
    let segs: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let base = gw.public_url.clone();
    match segs.as_slice() {
        [] if method == Method::GET => {
            return reply(
                StatusCode::MULTIPLE_CHOICES,
                json!({"versions": [version_entry(&base, "v3"), version_entry(&base, "v2")]}),
            )
        }
        [v @ ("v2" | "v3")] if method == Method::GET => {
            return reply(
                StatusCode::OK,
                json!({"versions": [version_entry(&base, v)]}),
            )
        }
        _ => {}
    }
    let version: &'static str = match segs.first() {
        Some(&"v2") => "v2",
        Some(&"v3") => "v3",
        _ => return not_found("The resource could not be found.").into_response(),
    };
    if version == "v3" {
        if let Err(f) = check_microversion(&headers) {
            return f.into_response();
        }
    }
    let mut resp = match dispatch(gw, version, &segs[1..], method, &uri, &headers, body).await {
        Ok(r) => r,
        Err(f) => f.into_response(),
    };
    if version == "v3" {
        let h = resp.headers_mut();
        h.insert(
            "openstack-api-version",
            HeaderValue::from_static("volume 3.0"),
        );
        h.insert("vary", HeaderValue::from_static("OpenStack-API-Version"));
    }
    resp
}

pub(crate) async fn authenticate(gw: &CinderGateway, headers: &HeaderMap) -> Result<AuthContext> {
    let token =
        auth_token(headers).ok_or_else(|| Fault::unauthorized().with_style(FaultStyle::Compute))?;
    gw.auth
        .validate_token(token)
        .await
        .map_err(|f| f.with_style(FaultStyle::Compute))
}

pub(crate) async fn dispatch(
    gw: Arc<CinderGateway>,
    version: &'static str,
    segs: &[&str],
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let Some((project, rest)) = segs.split_first() else {
        return Err(not_found("The resource could not be found."));
    };
    let ctx = authenticate(&gw, headers).await?;
    if !ctx.is_scoped() {
        return Err(forbidden("A project-scoped token is required."));
    }
    if *project != ctx.project_id && !ctx.is_admin() {
        return Err(forbidden(format!(
            "Project {project} is not the project of the token."
        )));
    }
    if body.len() > MAX_BODY {
        return Err(fault(
            StatusCode::PAYLOAD_TOO_LARGE,
            "The request body is too large.",
        ));
    }
    if !body.is_empty() && matches!(method, Method::POST | Method::PUT) {
        let ct = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json");
        if !ct.trim_start().starts_with("application/json") {
            return Err(fault(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Unsupported Content-Type {ct}"),
            ));
        }
    }
    let req = Req {
        gw,
        ctx,
        version,
        project: project.to_string(),
        method,
        query: query_map(uri),
        body,
    };
    let m = req.method.clone();
    match (rest, m) {
        (["volumes"], Method::GET) => volumes::list(&req, false).await,
        (["volumes", "detail"], Method::GET) => volumes::list(&req, true).await,
        (["volumes"], Method::POST) => volumes::create(&req).await,
        (["snapshots"], Method::GET) => snapshots::list(&req, false).await,
        (["snapshots", "detail"], Method::GET) => snapshots::list(&req, true).await,
        (["snapshots"], Method::POST) => snapshots::create(&req).await,
        (["types"], Method::GET) => types::list(&req).await,
        (["types"], Method::POST) => types::create(&req).await,
        (["backups"], Method::GET) => backups::list(&req, false).await,
        (["backups", "detail"], Method::GET) => backups::list(&req, true).await,
        (["backups"], Method::POST) => backups::create(&req).await,
        (["limits"], Method::GET) => quotas::limits(&req).await,
        (["os-quota-sets", rest @ ..], _) => quotas::route(&req, rest).await,
        (["extensions"], Method::GET) => Ok(reply(StatusCode::OK, json!({"extensions": []}))),
        (["os-availability-zone"], Method::GET) => Ok(reply(
            StatusCode::OK,
            json!({"availabilityZoneInfo": [{"zoneName": "nova", "zoneState": {"available": true}}]}),
        )),
        ([_], _) | ([_, "detail"], _)
            if KINDS.contains(&rest[0])
                || matches!(rest[0], "limits" | "extensions" | "os-availability-zone") =>
        {
            Err(method_not_allowed())
        }
        ([kind, _, ..], _) if KINDS.contains(kind) => route_item(&req, rest).await,
        _ => Err(not_found("The resource could not be found.")),
    }
}

const KINDS: &[&str] = &["volumes", "snapshots", "types", "backups"];

fn method_not_allowed() -> Fault {
    fault(
        StatusCode::METHOD_NOT_ALLOWED,
        "The method is not allowed for this resource.",
    )
}

async fn route_item(req: &Req, rest: &[&str]) -> Result<Response> {
    let m = req.method.clone();
    match (rest, m) {
        (["volumes", id], Method::GET) => volumes::show(req, id).await,
        (["volumes", id], Method::PUT) => volumes::update(req, id).await,
        (["volumes", id], Method::DELETE) => volumes::delete(req, id).await,
        (["volumes", id, "action"], Method::POST) => volumes::action(req, id).await,
        (["volumes", id, "metadata", rest @ ..], _) => volumes::metadata(req, id, rest).await,
        (["snapshots", id], Method::GET) => snapshots::show(req, id).await,
        (["snapshots", id], Method::PUT) => snapshots::update(req, id).await,
        (["snapshots", id], Method::DELETE) => snapshots::delete(req, id).await,
        (["snapshots", id, "action"], Method::POST) => snapshots::action(req, id).await,
        (["snapshots", id, "metadata", rest @ ..], _) => snapshots::metadata(req, id, rest).await,
        (["types", id], Method::GET) => types::show(req, id).await,
        (["types", id], Method::PUT) => types::update(req, id).await,
        (["types", id], Method::DELETE) => types::delete(req, id).await,
        (["types", id, "extra_specs", rest @ ..], _) => types::extra_specs(req, id, rest).await,
        (["backups", id], Method::GET) => backups::show(req, id).await,
        (["backups", id], Method::DELETE) => backups::delete(req, id).await,
        (["backups", id, "restore"], Method::POST) => backups::restore(req, id).await,
        ([_, _] | [_, _, "action" | "restore"], _) => Err(method_not_allowed()),
        _ => Err(not_found("The resource could not be found.")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn microversions_other_than_3_0_are_refused() {
        assert!(check_microversion(&headers(&[])).is_ok());
        for ok in ["volume 3.0", "volume latest", "Volume  3.0"] {
            assert!(
                check_microversion(&headers(&[("openstack-api-version", ok)])).is_ok(),
                "{ok}"
            );
        }
        // Another service's version is not ours to judge.
        assert!(check_microversion(&headers(&[("openstack-api-version", "compute 2.90")])).is_ok());
        let f =
            check_microversion(&headers(&[("openstack-api-version", "volume 3.70")])).unwrap_err();
        assert_eq!(f.status, StatusCode::NOT_ACCEPTABLE);
        assert!(
            check_microversion(&headers(&[("x-openstack-volume-api-version", "3.5")])).is_err()
        );
    }

    #[test]
    fn queries_and_paths_are_decoded() {
        let uri: Uri = "/v3/p/volumes?name=a%20b&all_tenants=1&x=%zz&flag"
            .parse()
            .unwrap();
        let q = query_map(&uri);
        assert_eq!(q["name"], "a b");
        assert_eq!(q["all_tenants"], "1");
        assert_eq!(q["x"], "%zz");
        assert_eq!(q["flag"], "");
        assert_eq!(percent_decode("%41%"), "A%");
        assert_eq!(percent_decode("%e2%82%ac"), "€");
    }

    #[test]
    fn version_documents_name_3_0() {
        let v3 = version_entry("http://h:8776", "v3");
        assert_eq!(v3["id"], "v3.0");
        assert_eq!(
            (v3["version"].as_str(), v3["min_version"].as_str()),
            (Some("3.0"), Some("3.0"))
        );
        assert_eq!(v3["links"][1]["href"], "http://h:8776/v3/");
        assert_eq!(version_entry("http://h:8776", "v2")["status"], "DEPRECATED");
    }
}
