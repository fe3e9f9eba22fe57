//! The OpenStack Swift gateway, served at the root of its port as real Swift
//! is: `/info` and `/v1/AUTH_<project>/<container>/<object>`.
//!
//! One `Endpoint` enum parsed from the path, one handler per resource kind.
//! Owns the wire: headers, status codes, listing formats and Swift's fault
//! bodies. It must not know how objects are stored: `strata-object` does.

// Handlers answer early with a ready response; boxing every one buys nothing here.
#![allow(clippy::result_large_err)]

mod account_acl;
mod bulk;
mod endpoint;
mod extract;
mod listing;
mod quota;
mod response;
mod slo;
mod tempurl;
mod versioning;

pub use endpoint::{parse_path, Endpoint, PathError};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::Router;
use futures::StreamExt;
use md5::{Digest, Md5};
use response::{fault, Fault};
use std::collections::BTreeMap;
use std::sync::Arc;
use strata_api::AuthContext;
use strata_identity::Identity;
use strata_object::{ObjectError, ObjectInfo, ObjectService, PutOptions};

/// Swift's metadata limits, also advertised in `/info`.
pub const META_NAME_BYTES_MAX: usize = 128;
pub const META_VALUE_BYTES_MAX: usize = 256;
pub const META_COUNT_MAX: usize = 90;
pub const META_OVERALL_BYTES_MAX: usize = 4096;
/// The largest single object (5 GiB + 2, as Swift).
pub const OBJECT_BYTES_MAX: u64 = 5 * (1 << 30) + 2;
/// The longest header value taken.
pub const MAX_HEADER_BYTES: usize = 8192;
/// The latest X-Delete-At kept (Swift clamps to ten digits).
const DELETE_AT_MAX: u64 = 9_999_999_999;
/// Listing page size cap.
pub const LISTING_LIMIT_MAX: usize = 10_000;

/// The gateway's shared state.
pub struct SwiftGateway {
    pub objects: Arc<ObjectService>,
    pub identity: Arc<Identity>,
}

/// The Swift router: `/info`, TempAuth and everything under `/v1/`.
pub fn router(gw: Arc<SwiftGateway>) -> Router {
    let tempauth = gw.identity.tempauth_router();
    Router::new()
        .fallback(handle)
        .with_state(gw)
        .merge(tempauth)
}

/// What a request needs from the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Account or container reads that only the owner may do (account GET/HEAD).
    OwnerRead,
    /// Account and container changes: the owner only.
    OwnerWrite,
    /// A container listing or HEAD: the owner, or the container's read ACL.
    ListContainer,
    /// An object GET/HEAD: the owner, or the container's read ACL (incl. referrers).
    ReadObject,
    /// An object PUT/POST/DELETE: the owner, or the container's write ACL.
    WriteObject,
}

/// A header value as UTF-8 (Swift takes any UTF-8 in values).
fn hget<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
}

fn truthy(v: Option<&str>) -> bool {
    v.is_some_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "true" | "1" | "yes" | "on" | "t" | "y"
        )
    })
}

async fn handle(State(gw): State<Arc<SwiftGateway>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let headers = req.headers().clone();
    let mut resp = match tempurl::intercept(&gw, req).await {
        tempurl::Intercept::Pass(req) => route(&gw, req).await,
        tempurl::Intercept::Granted(req, grant) => tempurl::serve(grant, route(&gw, req)).await,
        tempurl::Intercept::Answer(resp) => resp,
    };
    finish_response(&mut resp, &path, &headers);
    resp
}

async fn route(gw: &Arc<SwiftGateway>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let query = parse_query(parts.uri.query());
    if path == "/v1" || path == "/v1/" {
        return response::text(StatusCode::PRECONDITION_FAILED, "Bad URL");
    }
    let ep = match parse_path(&path) {
        Ok(ep) => ep,
        Err(PathError::NotFound) => return fault(Fault::NotFound),
        Err(PathError::InvalidUtf8OrNul) => {
            return response::text(
                StatusCode::PRECONDITION_FAILED,
                "Invalid UTF8 or contains NULL",
            )
        }
        Err(PathError::TooLong { what, len, max }) => {
            let mut h = HeaderMap::new();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=UTF-8"),
            );
            return response::with_body(
                StatusCode::BAD_REQUEST,
                h,
                Body::from(format!("{what} length of {len} longer than {max}")),
            );
        }
    };
    let method = parts.method.clone();
    let headers = parts.headers;
    if method == Method::OPTIONS {
        return preflight(gw, &ep, &headers).await;
    }
    if let (&Method::PUT, Some(kind)) = (
        &method,
        query
            .get("extract-archive")
            .and_then(|v| extract::compression(v)),
    ) {
        let target = match &ep {
            Endpoint::Account { account } => Some((account, String::new())),
            Endpoint::Container { account, container } => Some((account, container.clone())),
            Endpoint::Object {
                account,
                container,
                object,
            } => Some((account, format!("{container}/{object}"))),
            _ => None,
        };
        if let Some((account, base)) = target {
            return extract::extract_archive(gw, account, &base, kind, &headers, body).await;
        }
    }
    if query.contains_key("bulk-delete") && (method == Method::POST || method == Method::DELETE) {
        if let Endpoint::Account { account }
        | Endpoint::Container { account, .. }
        | Endpoint::Object { account, .. } = &ep
        {
            return bulk::bulk_delete(gw, account, &headers, body).await;
        }
    }
    let cors_container = match &ep {
        Endpoint::Container { account, container }
        | Endpoint::Object {
            account, container, ..
        } => Some((account.clone(), container.clone())),
        _ => None,
    };
    let read = method == Method::GET || method == Method::HEAD;
    // COPY reads its source here; the destination is checked once the source is found.
    let reads_object = read || method.as_str() == "COPY";
    let result = match ep {
        Endpoint::Info => {
            return match method {
                Method::GET | Method::HEAD => response::info(&method),
                _ => fault(Fault::MethodNotAllowed),
            }
        }
        Endpoint::Account { account } => {
            let need = if read {
                Need::OwnerRead
            } else {
                Need::OwnerWrite
            };
            match authorize(gw, &headers, &account, None, need).await {
                Err(resp) => return resp,
                Ok(ctx) => {
                    let owner = swift_owner(gw, ctx.as_ref(), &account).await;
                    account_request(gw, &method, &account, &headers, &query, ctx.as_ref())
                        .await
                        .map(|r| response::for_owner(r, owner))
                }
            }
        }
        Endpoint::Container { account, container } => {
            let need = if read {
                Need::ListContainer
            } else {
                Need::OwnerWrite
            };
            match authorize(gw, &headers, &account, Some(&container), need).await {
                Err(resp) => return resp,
                Ok(ctx) => {
                    let owner = swift_owner(gw, ctx.as_ref(), &account).await;
                    // Only owners change ACLs and temp URL keys; others' attempts are dropped.
                    let headers = if owner {
                        headers.clone()
                    } else {
                        response::without_owner_headers(&headers)
                    };
                    container_request(gw, &method, &account, &container, &headers, &query)
                        .await
                        .map(|r| response::for_owner(r, owner))
                }
            }
        }
        Endpoint::Object {
            account,
            container,
            object,
        } => {
            let need = if reads_object {
                Need::ReadObject
            } else {
                Need::WriteObject
            };
            match authorize(gw, &headers, &account, Some(&container), need).await {
                Err(resp) => return resp,
                Ok(_) => {
                    let o = ObjectRef {
                        account: &account,
                        container: &container,
                        object: &object,
                    };
                    object_request(gw, &method, o, &headers, &query, body).await
                }
            }
        }
    };
    let mut resp = result.unwrap_or_else(|e| e);
    if let (Some(origin), Some(c)) = (hget(&headers, "origin"), cors_container) {
        add_cors(gw, &mut resp, origin, &c.0, &c.1).await;
    }
    resp
}

/// Methods a CORS preflight may allow.
const CORS_METHODS: &str = "HEAD, GET, PUT, POST, COPY, OPTIONS, DELETE";

/// The origin a container's CORS settings let in, as `Access-Control-Allow-Origin` says it.
fn cors_allowed(meta: &BTreeMap<String, String>, origin: &str) -> Option<String> {
    let allowed = meta.get("access-control-allow-origin")?;
    let list: Vec<&str> = allowed.split_whitespace().collect();
    if list.contains(&"*") {
        Some("*".into())
    } else if list.contains(&origin) {
        Some(origin.to_string())
    } else {
        None
    }
}

/// A CORS preflight (`OPTIONS`): no token; the container's CORS metadata decides.
async fn preflight(gw: &SwiftGateway, ep: &Endpoint, headers: &HeaderMap) -> Response {
    let mut h = HeaderMap::new();
    response::put_str(&mut h, "allow", CORS_METHODS);
    let (account, container) = match ep {
        Endpoint::Container { account, container }
        | Endpoint::Object {
            account, container, ..
        } => (account, container),
        _ => return response::empty(StatusCode::OK, h),
    };
    let (Some(origin), Some(req_method)) = (
        hget(headers, "origin"),
        hget(headers, "access-control-request-method"),
    ) else {
        return fault(Fault::Unauthorized);
    };
    let Ok(info) = gw.objects.container(account, container).await else {
        return fault(Fault::Unauthorized);
    };
    let Some(allow) = cors_allowed(&info.meta, origin) else {
        return fault(Fault::Unauthorized);
    };
    if !CORS_METHODS.split(", ").any(|m| m == req_method.trim()) {
        return fault(Fault::Unauthorized);
    }
    response::put_str(&mut h, "access-control-allow-origin", &allow);
    response::put_str(&mut h, "access-control-allow-methods", CORS_METHODS);
    if let Some(req_headers) = hget(headers, "access-control-request-headers") {
        response::put_str(&mut h, "access-control-allow-headers", req_headers);
    }
    if let Some(age) = info.meta.get("access-control-max-age") {
        response::put_str(&mut h, "access-control-max-age", age);
    }
    response::empty(StatusCode::OK, h)
}

/// CORS headers of an actual request from `origin` (strict mode: only what the container allows).
async fn add_cors(
    gw: &SwiftGateway,
    resp: &mut Response,
    origin: &str,
    account: &str,
    container: &str,
) {
    let Ok(info) = gw.objects.container(account, container).await else {
        return;
    };
    let Some(allow) = cors_allowed(&info.meta, origin) else {
        return;
    };
    let mut expose: Vec<String> = [
        "cache-control",
        "content-language",
        "content-type",
        "expires",
        "last-modified",
        "pragma",
        "etag",
        "x-timestamp",
        "x-trans-id",
        "x-openstack-request-id",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for name in resp.headers().keys() {
        let n = name.as_str();
        if n.starts_with("x-object-meta-") || n.starts_with("x-container-meta-") {
            expose.push(n.to_string());
        }
    }
    if let Some(extra) = info.meta.get("access-control-expose-headers") {
        expose.extend(
            extra
                .split([',', ' '])
                .filter(|s| !s.is_empty())
                .map(|s| s.to_ascii_lowercase()),
        );
    }
    let h = resp.headers_mut();
    response::put_str(h, "access-control-allow-origin", &allow);
    response::put_str(h, "access-control-expose-headers", &expose.join(", "));
}

/// What every `/v1` answer carries: the realm of a 401, and an echoed keep-alive.
fn finish_response(resp: &mut Response, path: &str, headers: &HeaderMap) {
    if resp.status() == StatusCode::UNAUTHORIZED {
        let account = path
            .strip_prefix("/v1/")
            .and_then(|r| r.split('/').next())
            .unwrap_or("");
        let decoded = percent_encoding::percent_decode_str(account).collect::<Vec<u8>>();
        let realm = percent_encoding::percent_encode(&decoded, PATH_SEGMENT).to_string();
        if let Ok(v) = HeaderValue::from_str(&format!("Swift realm=\"{realm}\"")) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
    }
    let keep_alive =
        hget(headers, "connection").is_some_and(|c| c.trim().eq_ignore_ascii_case("keep-alive"));
    if keep_alive {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
    }
}

fn parse_query(q: Option<&str>) -> BTreeMap<String, String> {
    form_urlencoded::parse(q.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// Whether a Swift ACL element names the caller (keystone form `project:user`, either part an
/// id, a name or `*`; a bare element is a role name, which counts only on the caller's own
/// account, as keystoneauth checks the tenant before role ACLs).
fn acl_names(elem: &str, ctx: &AuthContext, account: &str) -> bool {
    match elem.split_once(':') {
        Some((p, u)) => {
            let p_ok = p == "*"
                || (!ctx.project_id.is_empty() && (p == ctx.project_id || p == ctx.project_name));
            let u_ok = u == "*" || u == ctx.user_id || u == ctx.user_name;
            p_ok && u_ok
        }
        // A bare name: a role on the caller's own project (keystoneauth), or TempAuth's
        // groups: the account's name for any of its users, `AUTH_<project>` for its
        // operators.
        None => {
            let own = !ctx.project_id.is_empty() && account == format!("AUTH_{}", ctx.project_id);
            !elem.starts_with('.')
                && ((own && ctx.has_role(elem))
                    || (!ctx.project_name.is_empty() && elem == ctx.project_name)
                    || (elem == format!("AUTH_{}", ctx.project_id) && is_owner(Some(ctx), elem)))
        }
    }
}

/// Whether a referrer element (`.r:*`, `.r:host`, `.r:.domain`, `.r:-host`) lets `referer` in.
fn referrer_allows(acl: &str, referer: Option<&str>) -> bool {
    let host = referer
        .and_then(|r| r.split_once("://").map(|(_, rest)| rest))
        .map(|rest| rest.split(['/', ':']).next().unwrap_or(""))
        .unwrap_or("");
    let mut allowed = false;
    for elem in acl.split(',').map(str::trim) {
        let Some(spec) = elem
            .strip_prefix(".r:")
            .or_else(|| elem.strip_prefix(".referrer:"))
        else {
            continue;
        };
        let (deny, spec) = match spec.strip_prefix('-') {
            Some(s) => (true, s),
            None => (false, spec),
        };
        // `*.example.com` is the same as `.example.com`.
        let spec = spec
            .strip_prefix('*')
            .filter(|s| s.starts_with('.'))
            .unwrap_or(spec);
        let hit = spec == "*"
            || (!host.is_empty()
                && (host == spec
                    || (spec.starts_with('.') && (host.ends_with(spec) || host == &spec[1..]))));
        if hit {
            allowed = !deny;
        }
    }
    allowed
}

/// Whether the caller owns the account (Swift's `swift_owner`): an operator role on its own
/// project, or ResellerAdmin. Owners see the ACLs and temp-URL keys.
fn is_owner(ctx: Option<&AuthContext>, account: &str) -> bool {
    ctx.is_some_and(|ctx| {
        let own = !ctx.project_id.is_empty() && account == format!("AUTH_{}", ctx.project_id);
        let operator =
            ctx.has_role("admin") || ctx.has_role("member") || ctx.has_role("SwiftOperator");
        ctx.has_role("ResellerAdmin") || (own && operator)
    })
}

/// An owner of the account: its operators, a reseller admin, or an account ACL admin.
async fn swift_owner(gw: &SwiftGateway, ctx: Option<&AuthContext>, account: &str) -> bool {
    is_owner(ctx, account)
        || account_acl::level(gw, ctx, account).await == account_acl::Level::Admin
}

/// Check the token, the caller's roles on the account and, for container and object
/// requests by others, the container's ACLs. A valid temp URL decides alone.
async fn authorize(
    gw: &SwiftGateway,
    headers: &HeaderMap,
    account: &str,
    container: Option<&str>,
    need: Need,
) -> Result<Option<AuthContext>, Response> {
    if let Some(ok) = tempurl::granted(account, container) {
        if ok {
            return Ok(None);
        }
        tracing::info!(%account, ?container, "temp url does not reach this path");
        return Err(fault(Fault::Unauthorized));
    }
    let ctx = match strata_api::auth_token(headers) {
        None => None,
        Some(token) => match gw.identity.validate(token).await {
            Ok(ctx) => Some(ctx),
            Err(e) => {
                tracing::info!(error = %e, "swift request with an invalid token");
                return Err(fault(Fault::Unauthorized));
            }
        },
    };
    if let Some(ctx) = &ctx {
        let own = !ctx.project_id.is_empty() && account == format!("AUTH_{}", ctx.project_id);
        let read = matches!(
            need,
            Need::OwnerRead | Need::ListContainer | Need::ReadObject
        );
        if is_owner(Some(ctx), account) || (own && read && ctx.has_role("reader")) {
            return Ok(ctx.clone().into());
        }
        let granted = match account_acl::level(gw, Some(ctx), account).await {
            account_acl::Level::Admin => true,
            account_acl::Level::ReadWrite => container.is_some() || read,
            account_acl::Level::ReadOnly => read,
            account_acl::Level::None => false,
        };
        if granted {
            return Ok(ctx.clone().into());
        }
    }
    if let (Some(c), true) = (
        container,
        matches!(
            need,
            Need::ListContainer | Need::ReadObject | Need::WriteObject
        ),
    ) {
        if let Ok(info) = gw.objects.container(account, c).await {
            let acl = |name: &str| info.headers.get(name).cloned().unwrap_or_default();
            let names = |acl: &str| {
                ctx.as_ref().is_some_and(|ctx| {
                    acl.split(',')
                        .map(str::trim)
                        .any(|e| !e.is_empty() && acl_names(e, ctx, account))
                })
            };
            let referer = hget(headers, "referer");
            let ok = match need {
                Need::ReadObject => {
                    let r = acl("x-container-read");
                    names(&r) || referrer_allows(&r, referer)
                }
                Need::ListContainer => {
                    let r = acl("x-container-read");
                    names(&r)
                        || (referrer_allows(&r, referer)
                            && r.split(',').any(|e| e.trim() == ".rlistings"))
                }
                _ => names(&acl("x-container-write")),
            };
            if ok {
                return Ok(ctx);
            }
        }
    }
    Err(if ctx.is_none() {
        fault(Fault::Unauthorized)
    } else {
        fault(Fault::Forbidden)
    })
}

type Handled = Result<Response, Response>;

fn object_error(e: ObjectError) -> Response {
    match e {
        ObjectError::NoContainer { .. } | ObjectError::NoObject => fault(Fault::NotFound),
        ObjectError::ContainerNotEmpty { .. } => fault(Fault::Conflict),
        ObjectError::EtagMismatch { .. } => fault(Fault::UnprocessableEntity),
        ObjectError::Body(m) => {
            tracing::info!(error = %m, "request body failed");
            if m.contains("larger than") {
                return fault(Fault::TooLarge);
            }
            response::text(StatusCode::REQUEST_TIMEOUT, "Request body failed")
        }
        ObjectError::Data(e) => {
            tracing::error!(error = %e, "data plane unavailable");
            fault(Fault::ServiceUnavailable)
        }
        ObjectError::Meta(e) => {
            tracing::error!(error = %e, "meta group unavailable");
            fault(Fault::ServiceUnavailable)
        }
        ObjectError::Codec(m) => {
            tracing::error!(error = %m, "stored record unreadable");
            fault(Fault::Internal)
        }
    }
}

fn bad_request(msg: &str) -> Response {
    response::text(StatusCode::BAD_REQUEST, msg)
}

/// Metadata headers with `prefix` (e.g. `x-container-meta-`), names lower-cased, checked
/// against the per-item limits.
fn meta_from_headers(
    headers: &HeaderMap,
    prefix: &str,
) -> Result<BTreeMap<String, String>, Response> {
    let mut out = BTreeMap::new();
    for (name, value) in headers {
        let Some(key) = name.as_str().strip_prefix(prefix) else {
            continue;
        };
        let value_len = value.len();
        let value = response::meta_value_from_bytes(value.as_bytes());
        if key.is_empty() {
            return Err(bad_request("Metadata name cannot be empty"));
        }
        if key.len() > META_NAME_BYTES_MAX {
            return Err(bad_request(&format!(
                "Metadata name too long; max {META_NAME_BYTES_MAX}"
            )));
        }
        if value_len > META_VALUE_BYTES_MAX {
            return Err(bad_request(&format!(
                "Metadata value longer than {META_VALUE_BYTES_MAX}"
            )));
        }
        out.insert(key.to_string(), value);
    }
    check_meta_totals(&out)?;
    Ok(out)
}

/// Count and overall size limits of a whole set of metadata.
fn check_meta_totals(meta: &BTreeMap<String, String>) -> Result<(), Response> {
    if meta.len() > META_COUNT_MAX {
        return Err(bad_request(&format!(
            "Too many metadata items; max {META_COUNT_MAX}"
        )));
    }
    let total: usize = meta
        .iter()
        .map(|(k, v)| k.len() + response::meta_value_bytes(v).len())
        .sum();
    if total > META_OVERALL_BYTES_MAX {
        return Err(bad_request(&format!(
            "Total metadata too large; max {META_OVERALL_BYTES_MAX}"
        )));
    }
    Ok(())
}

/// Metadata a POST sets, and the names it removes (`X-Remove-<kind>-Meta-*`,
/// or an empty value).
fn meta_changes(
    headers: &HeaderMap,
    kind: &str,
) -> Result<(BTreeMap<String, String>, Vec<String>), Response> {
    let meta = meta_from_headers(headers, &format!("x-{kind}-meta-"))?;
    let remove_prefix = format!("x-remove-{kind}-meta-");
    let mut cleared: Vec<String> = headers
        .keys()
        .filter_map(|k| k.as_str().strip_prefix(remove_prefix.as_str()))
        .map(str::to_string)
        .collect();
    let mut set = BTreeMap::new();
    for (k, v) in meta {
        if v.is_empty() {
            cleared.push(k);
        } else {
            set.insert(k, v);
        }
    }
    set.retain(|k, _| !cleared.contains(k));
    Ok((set, cleared))
}

/// The stored metadata after a change, checked against the aggregate limits.
fn check_merged(
    existing: &BTreeMap<String, String>,
    set: &BTreeMap<String, String>,
    cleared: &[String],
) -> Result<(), Response> {
    let mut merged = existing.clone();
    for c in cleared {
        merged.remove(c);
    }
    merged.extend(set.clone());
    // System metadata (quotas, the account ACL) is not the user's to count.
    merged.retain(|k, _| !k.starts_with(quota::SYSMETA_PREFIX));
    check_meta_totals(&merged)
}

fn listing_limit(query: &BTreeMap<String, String>) -> Result<usize, Response> {
    match query.get("limit") {
        Some(l) if !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()) => {
            match l.parse::<usize>() {
                Ok(n) if n <= LISTING_LIMIT_MAX => Ok(n),
                _ => Err(response::text(
                    StatusCode::PRECONDITION_FAILED,
                    &format!("Maximum limit is {LISTING_LIMIT_MAX}"),
                )),
            }
        }
        _ => Ok(LISTING_LIMIT_MAX),
    }
}

/// Content type of a listing response (also on HEAD).
fn listing_content_type(headers: &HeaderMap, query: &BTreeMap<String, String>) -> &'static str {
    match listing::format_of(headers, query) {
        listing::Format::Plain => "text/plain; charset=utf-8",
        listing::Format::Json => "application/json; charset=utf-8",
        listing::Format::Xml => "application/xml; charset=utf-8",
    }
}

async fn account_request(
    gw: &SwiftGateway,
    method: &Method,
    account: &str,
    headers: &HeaderMap,
    query: &BTreeMap<String, String>,
    ctx: Option<&AuthContext>,
) -> Handled {
    let objects = &gw.objects;
    match *method {
        Method::GET | Method::HEAD => {
            let (containers, count, bytes) =
                objects.account_usage(account).await.map_err(object_error)?;
            let meta = objects.account_meta(account).await.map_err(object_error)?;
            let mut h = HeaderMap::new();
            response::put_num(&mut h, "x-account-container-count", containers);
            response::put_num(&mut h, "x-account-object-count", count);
            response::put_num(&mut h, "x-account-bytes-used", bytes);
            let (meta, quotas) = quota::split_account_meta(&meta);
            response::put_meta(&mut h, "x-account-meta-", &meta);
            for (k, v) in quotas {
                response::put_str(&mut h, &k, &v);
            }
            if *method == Method::HEAD {
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(listing_content_type(headers, query)),
                );
                return Ok(response::empty(StatusCode::NO_CONTENT, h));
            }
            let p = listing::ListParams::from_query(query, listing_limit(query)?);
            let all = objects
                .list_containers(account, &p.prefix, None, usize::MAX)
                .await
                .map_err(object_error)?;
            let rows = listing::select(all, &p);
            let items: Vec<_> = rows
                .iter()
                .filter_map(|row| match row {
                    listing::Row::Item(name, info) => Some((name.as_str(), info)),
                    listing::Row::Subdir(_) => None,
                })
                .collect();
            let mut usages = objects
                .usages(account, &items)
                .await
                .map_err(object_error)?
                .into_iter();
            let entries: Vec<_> = rows
                .into_iter()
                .map(|row| match row {
                    listing::Row::Item(name, info) => {
                        let (count, bytes) = usages.next().unwrap_or_default();
                        listing::ContainerRow {
                            name,
                            count,
                            bytes,
                            created: info.last_modified(),
                            subdir: false,
                        }
                    }
                    listing::Row::Subdir(name) => listing::ContainerRow {
                        name,
                        count: 0,
                        bytes: 0,
                        created: strata_types::Timestamp(0),
                        subdir: true,
                    },
                })
                .collect();
            Ok(listing::containers(headers, query, h, account, &entries))
        }
        Method::POST => {
            let mut acl_change = None;
            if let Some(acl) = headers.get("x-account-access-control") {
                if acl.len() > MAX_HEADER_BYTES {
                    return Err(bad_request("Header value too long"));
                }
                let Ok(acl) = std::str::from_utf8(acl.as_bytes()) else {
                    return Err(bad_request("Invalid X-Account-Access-Control"));
                };
                acl_change = Some(account_acl::parse(acl)?);
            }
            let (mut set, mut cleared) = meta_changes(headers, "account")?;
            if let Some(stored) = acl_change {
                let key = format!("{}{}", quota::SYSMETA_PREFIX, account_acl::KEY);
                if stored.is_empty() {
                    cleared.push(key);
                } else {
                    set.insert(key, stored);
                }
            }
            // The legacy quota header is a quota, not metadata.
            set.remove("quota-bytes");
            cleared.retain(|k| k != "quota-bytes");
            let (quota_set, quota_removed) = quota::account_changes(headers, ctx)?;
            set.extend(quota_set);
            cleared.extend(quota_removed);
            let existing = objects.account_meta(account).await.map_err(object_error)?;
            check_merged(&existing, &set, &cleared)?;
            objects
                .update_account_meta(account, set, &cleared)
                .await
                .map_err(object_error)?;
            Ok(response::empty(StatusCode::NO_CONTENT, HeaderMap::new()))
        }
        _ => Ok(fault(Fault::MethodNotAllowed)),
    }
}

/// Container headers stored besides metadata, settable by PUT/POST and removable with
/// `X-Remove-<name without x->`.
const CONTAINER_HEADERS: [&str; 5] = [
    "x-container-read",
    "x-container-write",
    "x-container-sync-key",
    versioning::VERSIONS_LOCATION,
    versioning::HISTORY_LOCATION,
];

fn container_header_changes(
    headers: &HeaderMap,
) -> Result<(BTreeMap<String, String>, Vec<String>), Response> {
    let mut set = BTreeMap::new();
    let mut removed = Vec::new();
    for name in CONTAINER_HEADERS {
        if versioning::is_location(name) {
            continue;
        }
        if let Some(v) = headers.get(name) {
            let v = std::str::from_utf8(v.as_bytes())
                .map_err(|_| bad_request("ACL must be valid UTF-8"))?;
            let v = v.trim();
            if v.is_empty() {
                removed.push(name.to_string());
            } else {
                set.insert(name.to_string(), v.to_string());
            }
        }
        if headers.contains_key(format!("x-remove-{}", &name[2..]).as_str()) {
            removed.push(name.to_string());
            set.remove(name);
        }
    }
    versioning::location_changes(headers, &mut set, &mut removed)?;
    Ok((set, removed))
}

async fn container_request(
    gw: &SwiftGateway,
    method: &Method,
    account: &str,
    container: &str,
    headers: &HeaderMap,
    query: &BTreeMap<String, String>,
) -> Handled {
    let objects = &gw.objects;
    match *method {
        Method::PUT => {
            quota::check_container_headers(headers)?;
            if let Some(policy) = hget(headers, "x-storage-policy") {
                let policy = policy.trim();
                if !policy.is_empty() && !policy.eq_ignore_ascii_case("Policy-0") {
                    return Err(bad_request(&format!("Invalid X-Storage-Policy '{policy}'")));
                }
            }
            let (meta, cleared) = meta_changes(headers, "container")?;
            let (hset, hremoved) = container_header_changes(headers)?;
            let created = objects
                .put_container(account, container, meta.clone(), hset.clone())
                .await;
            let created = created.map_err(object_error)?;
            if !created && (!cleared.is_empty() || !hremoved.is_empty()) {
                let change = strata_object::ContainerChange {
                    remove_meta: cleared,
                    remove_headers: hremoved,
                    ..Default::default()
                };
                objects
                    .update_container(account, container, change)
                    .await
                    .map_err(object_error)?;
            }
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::ACCEPTED
            };
            Ok(response::empty(status, HeaderMap::new()))
        }
        Method::POST => {
            quota::check_container_headers(headers)?;
            let (set, cleared) = meta_changes(headers, "container")?;
            let (hset, hremoved) = container_header_changes(headers)?;
            let info = objects
                .container(account, container)
                .await
                .map_err(object_error)?;
            check_merged(&info.meta, &set, &cleared)?;
            let change = strata_object::ContainerChange {
                set_meta: set,
                remove_meta: cleared,
                set_headers: hset,
                remove_headers: hremoved,
            };
            objects
                .update_container(account, container, change)
                .await
                .map_err(object_error)?;
            Ok(response::empty(StatusCode::NO_CONTENT, HeaderMap::new()))
        }
        Method::DELETE => {
            objects
                .delete_container(account, container)
                .await
                .map_err(object_error)?;
            Ok(response::empty(StatusCode::NO_CONTENT, HeaderMap::new()))
        }
        Method::GET | Method::HEAD => {
            let info = objects
                .container(account, container)
                .await
                .map_err(object_error)?;
            let (count, bytes) = objects
                .usage_of(account, container, &info)
                .await
                .map_err(object_error)?;
            let mut h = HeaderMap::new();
            response::put_num(&mut h, "x-container-object-count", count);
            response::put_num(&mut h, "x-container-bytes-used", bytes);
            response::put_str(&mut h, "x-timestamp", &info.created.to_swift());
            response::put_str(&mut h, "x-put-timestamp", &info.last_modified().to_swift());
            response::put_str(
                &mut h,
                "last-modified",
                &response::http_date(info.last_modified()),
            );
            response::put_str(&mut h, "x-storage-policy", "Policy-0");
            response::put_meta(&mut h, "x-container-meta-", &info.meta);
            for (k, v) in &info.headers {
                response::put_str(&mut h, k, v);
            }
            if *method == Method::HEAD {
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(listing_content_type(headers, query)),
                );
                return Ok(response::empty(StatusCode::NO_CONTENT, h));
            }
            let p = listing::ListParams::from_query(query, listing_limit(query)?);
            let rows = listing::list_objects(objects, account, container, &p)
                .await
                .map_err(object_error)?;
            Ok(listing::objects(headers, query, h, container, &rows))
        }
        _ => Ok(fault(Fault::MethodNotAllowed)),
    }
}

/// The object a request addresses.
#[derive(Clone, Copy)]
struct ObjectRef<'a> {
    account: &'a str,
    container: &'a str,
    object: &'a str,
}

async fn object_request(
    gw: &Arc<SwiftGateway>,
    method: &Method,
    o: ObjectRef<'_>,
    headers: &HeaderMap,
    query: &BTreeMap<String, String>,
    body: Body,
) -> Handled {
    let manifest_op = query.get("multipart-manifest").map(String::as_str);
    if !matches!(method.as_str(), "GET" | "HEAD") && headers.contains_key(slo::SLO_HEADER) {
        let put = method.as_str() == "PUT" && manifest_op == Some("put");
        if !put {
            return Err(bad_request(
                "X-Static-Large-Object is a reserved header. To create a static large object add query param multipart-manifest=put.",
            ));
        }
    }
    match method.as_str() {
        "PUT" if manifest_op == Some("put") => slo::put_manifest(gw, o, headers, query, body).await,
        "DELETE" if manifest_op == Some("delete") => slo::delete_manifest(gw, o, headers).await,
        "PUT" => put_object(gw, o, headers, query, body).await,
        "GET" | "HEAD" => get_object(gw, method, o, headers, query).await,
        "DELETE" => {
            // Versioning may turn the DELETE into one of a version (stack mode).
            let instead = versioning::before_delete(gw, o).await?;
            let (container, object) = match &instead {
                Some((c, name)) => (c.as_str(), name.as_str()),
                None => (o.container, o.object),
            };
            if let (Some(v), None) = (hget(headers, "x-if-delete-at"), &instead) {
                let Ok(at) = v.trim().parse::<u64>() else {
                    return Err(bad_request("Bad X-If-Delete-At header value"));
                };
                let info = gw
                    .objects
                    .head_object(o.account, o.container, o.object)
                    .await
                    .map_err(object_error)?;
                if info.delete_at() != Some(at) {
                    return Err(fault(Fault::PreconditionFailed));
                }
            }
            gw.objects
                .delete_object(o.account, container, object)
                .await
                .map_err(object_error)?;
            Ok(response::empty(StatusCode::NO_CONTENT, HeaderMap::new()))
        }
        "POST" => {
            let meta = meta_from_headers(headers, "x-object-meta-")?;
            let (set_headers, remove_headers) = kept_headers(headers, true)?;
            let mut content_type = hget(headers, "content-type").map(str::to_string);
            if let Some(ct) = &mut content_type {
                // A large object keeps listing its assembled size under a new type.
                if let Ok(info) = gw
                    .objects
                    .head_object(o.account, o.container, o.object)
                    .await
                {
                    if let Some((_, size)) =
                        slo::slo_etag_size(&info).filter(|_| slo::is_slo(&info))
                    {
                        *ct = format!("{};swift_bytes={size}", slo::split_swift_bytes(ct).0);
                    }
                }
            }
            let post = strata_object::ObjectPost {
                meta,
                content_type,
                set_headers,
                remove_headers,
            };
            gw.objects
                .post_object(o.account, o.container, o.object, post)
                .await
                .map_err(object_error)?;
            Ok(response::empty(StatusCode::ACCEPTED, HeaderMap::new()))
        }
        "COPY" => copy_verb(gw, o, headers, query).await,
        _ => Ok(fault(Fault::MethodNotAllowed)),
    }
}

/// Headers stored with an object and given back on GET/HEAD (Swift's allowed headers).
const KEPT_HEADERS: [&str; 8] = [
    "content-encoding",
    "content-disposition",
    "content-language",
    "cache-control",
    "expires",
    "x-robots-tag",
    "x-object-manifest",
    "x-delete-at",
];

/// The kept headers a PUT or POST sets (with `X-Delete-After` turned into `X-Delete-At`),
/// and, for a POST, the ones it drops (all it does not give).
fn kept_headers(
    headers: &HeaderMap,
    post: bool,
) -> Result<(BTreeMap<String, String>, Vec<String>), Response> {
    let mut set = BTreeMap::new();
    for name in KEPT_HEADERS {
        if let Some(v) = headers.get(name) {
            let v = std::str::from_utf8(v.as_bytes())
                .map_err(|_| bad_request("Header must be valid UTF-8"))?;
            set.insert(name.to_string(), v.to_string());
        }
    }
    let now = strata_object::unix_now();
    if let Some(v) = hget(headers, "x-delete-after") {
        let Ok(after) = v.trim().parse::<u64>() else {
            return Err(bad_request("Non-integer X-Delete-After"));
        };
        set.insert("x-delete-at".into(), now.saturating_add(after).to_string());
    }
    if let Some(v) = set.get("x-delete-at") {
        let Ok(at) = v.trim().parse::<f64>() else {
            return Err(bad_request("Non-integer X-Delete-At"));
        };
        if !at.is_finite() || at < 0.0 {
            return Err(bad_request("Non-integer X-Delete-At"));
        }
        let at = (at as u64).min(DELETE_AT_MAX);
        if at <= now && !headers.contains_key("x-delete-after") {
            return Err(bad_request("X-Delete-At in past"));
        }
        set.insert("x-delete-at".into(), at.to_string());
    }
    if let Some(m) = set.get("x-object-manifest") {
        let m = percent_encoding::percent_decode_str(m)
            .decode_utf8_lossy()
            .to_string();
        match m.trim_start_matches('/').split_once('/') {
            Some((c, _)) if !c.is_empty() && !m.contains('?') => {}
            _ => {
                return Err(bad_request(
                    "X-Object-Manifest must be in the format container/prefix",
                ))
            }
        }
    }
    let removed = if post {
        KEPT_HEADERS
            .iter()
            .filter(|n| !set.contains_key(**n))
            .map(|n| n.to_string())
            .collect()
    } else {
        Vec::new()
    };
    Ok((set, removed))
}

/// The content type of a name's extension (Python's mimetypes for the common ones).
fn guess_type(name: &str) -> &'static str {
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "txt" | "text" | "conf" | "log" => "text/plain",
        "html" | "htm" => "text/html",
        "css" => "text/css",
        "csv" => "text/csv",
        "xml" => "text/xml",
        "js" => "text/javascript",
        "json" => "application/json",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "gz" | "tgz" => "application/gzip",
        "tar" => "application/x-tar",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "svg" => "image/svg+xml",
        "ico" => "image/vnd.microsoft.icon",
        "wav" => "audio/x-wav",
        "mp3" => "audio/mpeg",
        "mp4" => "video/mp4",
        "mpg" | "mpeg" => "video/mpeg",
        _ => "application/octet-stream",
    }
}

/// Where a copy reads from.
struct CopySource {
    account: String,
    container: String,
    object: String,
}

/// `container/object` (optionally with a leading slash), percent-encoded as Swift takes it.
fn parse_copy_path(raw: &str, what: &str) -> Result<(String, String), Response> {
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| {
            response::text(
                StatusCode::PRECONDITION_FAILED,
                "Invalid UTF8 or contains NULL",
            )
        })?;
    let path = decoded.strip_prefix('/').unwrap_or(&decoded);
    match path.split_once('/') {
        Some((c, o)) if !c.is_empty() && !o.is_empty() => Ok((c.to_string(), o.to_string())),
        _ => Err(response::text(
            StatusCode::PRECONDITION_FAILED,
            &format!("{what} header must be of the form <container name>/<object name>"),
        )),
    }
}

/// The COPY verb: a PUT at `Destination` copying this object.
async fn copy_verb(
    gw: &Arc<SwiftGateway>,
    o: ObjectRef<'_>,
    headers: &HeaderMap,
    query: &BTreeMap<String, String>,
) -> Handled {
    let Some(dest) = hget(headers, "destination") else {
        return Err(response::text(
            StatusCode::PRECONDITION_FAILED,
            "You must specify a Destination header",
        ));
    };
    let (dc, dobj) = parse_copy_path(dest, "Destination")?;
    let dacct = match hget(headers, "destination-account") {
        Some(a) => percent_encoding::percent_decode_str(a)
            .decode_utf8_lossy()
            .to_string(),
        None => o.account.to_string(),
    };
    let src = CopySource {
        account: o.account.into(),
        container: o.container.into(),
        object: o.object.into(),
    };
    let dest = ObjectRef {
        account: &dacct,
        container: &dc,
        object: &dobj,
    };
    do_copy(gw, src, dest, headers, query, true).await
}

async fn put_object(
    gw: &Arc<SwiftGateway>,
    o: ObjectRef<'_>,
    headers: &HeaderMap,
    query: &BTreeMap<String, String>,
    body: Body,
) -> Handled {
    if let Some(te) = hget(headers, "transfer-encoding") {
        if !te.trim().eq_ignore_ascii_case("chunked") {
            return Err(response::text(
                StatusCode::NOT_IMPLEMENTED,
                "Not Implemented",
            ));
        }
    }
    let chunked = headers.contains_key(header::TRANSFER_ENCODING);
    let length = hget(headers, "content-length");
    let declared = match (length, chunked) {
        (None, false) => return Ok(fault(Fault::LengthRequired)),
        (Some(l), _) => match l.trim().parse::<u64>() {
            Ok(n) if n > OBJECT_BYTES_MAX => return Ok(fault(Fault::TooLarge)),
            Ok(n) => Some(n),
            Err(_) => return Ok(bad_request("Invalid Content-Length")),
        },
        _ => None,
    };
    if let Some(from) = hget(headers, "x-copy-from") {
        if declared.is_some_and(|n| n > 0) {
            return Err(bad_request("Copy requests require a zero byte body"));
        }
        let (sc, so) = parse_copy_path(from, "X-Copy-From")?;
        let sa = match hget(headers, "x-copy-from-account") {
            Some(a) => percent_encoding::percent_decode_str(a)
                .decode_utf8_lossy()
                .to_string(),
            None => o.account.to_string(),
        };
        authorize(gw, headers, &sa, Some(&sc), Need::ReadObject).await?;
        let src = CopySource {
            account: sa,
            container: sc,
            object: so,
        };
        return do_copy(gw, src, o, headers, query, false).await;
    }
    check_if_none_match(gw, o, headers).await?;
    quota::check_upload(gw, headers, o.account, o.container, declared.unwrap_or(0)).await?;
    let (kept, _) = kept_headers(headers, false)?;
    let content_type = match hget(headers, "content-type") {
        Some(ct) if !truthy(hget(headers, "x-detect-content-type")) => ct.to_string(),
        _ => guess_type(o.object).to_string(),
    };
    let opts = PutOptions {
        content_type: Some(content_type),
        meta: meta_from_headers(headers, "x-object-meta-")?,
        headers: kept,
        expected_etag: hget(headers, "etag").map(str::to_string),
    };
    versioning::before_write(gw, o).await?;
    let mut received = 0u64;
    let stream = body.into_data_stream().map(move |chunk| {
        let chunk = chunk.map_err(|e| e.to_string())?;
        received += chunk.len() as u64;
        if received > OBJECT_BYTES_MAX {
            return Err("object larger than the maximum".to_string());
        }
        Ok::<_, String>(chunk)
    });
    let info = gw
        .objects
        .put_object(o.account, o.container, o.object, Box::pin(stream), opts)
        .await
        .map_err(object_error)?;
    Ok(created(&info, HeaderMap::new()))
}

fn created(info: &ObjectInfo, mut h: HeaderMap) -> Response {
    response::put_str(&mut h, "etag", &info.etag);
    response::put_str(
        &mut h,
        "last-modified",
        &response::http_date(info.timestamp),
    );
    response::put_str(&mut h, "x-timestamp", &info.timestamp.to_swift());
    response::empty(StatusCode::CREATED, h)
}

/// `If-None-Match: *` on a PUT: refuse to overwrite. Other values are a bad request.
async fn check_if_none_match(
    gw: &SwiftGateway,
    o: ObjectRef<'_>,
    headers: &HeaderMap,
) -> Result<(), Response> {
    let Some(inm) = hget(headers, "if-none-match") else {
        return Ok(());
    };
    if inm.trim() != "*" {
        return Err(bad_request("If-None-Match only supports *"));
    }
    if gw
        .objects
        .head_object(o.account, o.container, o.object)
        .await
        .is_ok()
    {
        return Err(fault(Fault::PreconditionFailed));
    }
    Ok(())
}

/// The body of an object as GET gives it: its own bytes, or a large object's pieces.
struct Content {
    info: ObjectInfo,
    /// A DLO's or SLO's pieces in order (empty when not expanded); None for a plain
    /// object or a manifest asked for as itself.
    pieces: Option<Vec<slo::Piece>>,
    size: u64,
    etag: String,
    /// A DLO assembled from its segments.
    dlo: bool,
    /// An SLO's top-level segments, when the object is one served as its large object.
    manifest: Option<Vec<slo::StoredSegment>>,
}

impl Content {
    fn plain(info: ObjectInfo) -> Content {
        let (size, etag) = (info.size, info.etag.clone());
        Content {
            info,
            pieces: None,
            size,
            etag,
            dlo: false,
            manifest: None,
        }
    }
}

/// What a GET (`expand`) or HEAD of an object serves: a large object's segments are
/// found and checked only when its bytes are wanted.
async fn content_of(
    gw: &SwiftGateway,
    account: &str,
    container: &str,
    object: &str,
    headers: &HeaderMap,
    query: &BTreeMap<String, String>,
    expand: bool,
) -> Result<Content, Response> {
    let info = gw
        .objects
        .head_object(account, container, object)
        .await
        .map_err(object_error)?;
    let manifest = info.headers.get("x-object-manifest").cloned();
    let want_manifest = query.get("multipart-manifest").is_some_and(|v| v == "get");
    if slo::is_slo(&info) {
        if want_manifest {
            if query.get("format").is_some_and(|f| f == "raw") {
                let segments = slo::read_manifest(gw, account, container, object, &info).await?;
                let raw = bytes::Bytes::from(slo::raw_manifest(&segments));
                let etag = hex_lower(&Md5::digest(&raw));
                let size = raw.len() as u64;
                return Ok(Content {
                    info,
                    pieces: Some(vec![slo::Piece::Data(raw)]),
                    size,
                    etag,
                    dlo: false,
                    manifest: None,
                });
            }
            return Ok(Content::plain(info));
        }
        let segments = slo::read_manifest(gw, account, container, object, &info).await?;
        let (slo_etag, slo_size) = slo::slo_etag_size(&info).unwrap_or_default();
        let pieces = if expand {
            slo::SegmentReader::new(gw, headers, account)
                .expand(&segments, 1)
                .await?
        } else {
            Vec::new()
        };
        return Ok(Content {
            info,
            pieces: Some(pieces),
            size: slo_size,
            etag: format!("\"{slo_etag}\""),
            dlo: false,
            manifest: Some(segments),
        });
    }
    match manifest {
        Some(m) if !want_manifest => {
            let m = percent_encoding::percent_decode_str(&m)
                .decode_utf8_lossy()
                .to_string();
            let m = m.trim_start_matches('/');
            let (sc, prefix) = m.split_once('/').unwrap_or((m, ""));
            // Segments are read with the caller's own rights on their container.
            authorize(gw, headers, account, Some(sc), Need::ListContainer).await?;
            let rows = gw
                .objects
                .list_objects(account, sc, prefix, None, None, usize::MAX)
                .await
                .map_err(object_error)?;
            let mut pieces = Vec::new();
            let mut size = 0;
            let mut md5 = Md5::new();
            for (name, _) in rows {
                let Ok(seg) = gw.objects.head_object(account, sc, &name).await else {
                    continue;
                };
                size += seg.size;
                md5.update(seg.etag.as_bytes());
                let end = seg.size;
                pieces.push(slo::Piece::Object {
                    container: sc.to_string(),
                    name,
                    info: Arc::new(seg),
                    start: 0,
                    end,
                });
            }
            let etag = format!("\"{}\"", hex_lower(&md5.finalize()));
            Ok(Content {
                info,
                pieces: Some(pieces),
                size,
                etag,
                dlo: true,
                manifest: None,
            })
        }
        _ => Ok(Content::plain(info)),
    }
}

fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

type ByteStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<bytes::Bytes, ObjectError>> + Send>>;

/// The bytes `[start, end)` of a content.
fn read_content(
    gw: &SwiftGateway,
    account: &str,
    container: &str,
    object: &str,
    c: &Content,
    start: u64,
    end: u64,
) -> ByteStream {
    match &c.pieces {
        None => Box::pin(
            gw.objects
                .read_range(account, container, object, &c.info, start, end),
        ),
        Some(pieces) => {
            let parts: Vec<ByteStream> = slo::slice_pieces(pieces, start, end)
                .into_iter()
                .map(|p| -> ByteStream {
                    match p {
                        slo::Piece::Object {
                            container,
                            name,
                            info,
                            start,
                            end,
                        } => Box::pin(
                            gw.objects
                                .read_range(account, &container, &name, &info, start, end),
                        ),
                        slo::Piece::Data(d) => {
                            Box::pin(futures::stream::once(async move { Ok(d) }))
                        }
                    }
                })
                .collect();
            Box::pin(futures::stream::iter(parts).flatten())
        }
    }
}

/// Copy `src` (its GET content, honouring Range) to `dest` with Swift's metadata rules.
async fn do_copy(
    gw: &Arc<SwiftGateway>,
    src: CopySource,
    dest: ObjectRef<'_>,
    headers: &HeaderMap,
    query: &BTreeMap<String, String>,
    authorize_dest: bool,
) -> Handled {
    let c = content_of(
        gw,
        &src.account,
        &src.container,
        &src.object,
        headers,
        query,
        true,
    )
    .await?;
    if authorize_dest {
        authorize(
            gw,
            headers,
            dest.account,
            Some(dest.container),
            Need::WriteObject,
        )
        .await?;
    }
    let manifest_get = query.get("multipart-manifest").is_some_and(|v| v == "get");
    if manifest_get && slo::is_slo(&c.info) && c.pieces.is_none() {
        return copy_manifest(gw, &src, dest, headers, &c).await;
    }
    let part = match &c.manifest {
        Some(segments) => match slo::part_number(query, headers, &Method::GET)? {
            Some(n) => Some(slo::part_range(segments, n).ok_or_else(|| {
                response::text(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "The requested part number is not satisfiable",
                )
            })?),
            None => None,
        },
        None => None,
    };
    let (start, end) = match hget(headers, "range").map(|r| response::parse_ranges(r, c.size)) {
        _ if part.is_some() => part.unwrap_or((0, c.size)),
        Some(response::RangeOutcome::Ranges(r)) if r.len() == 1 => r[0],
        Some(response::RangeOutcome::Unsatisfiable) => {
            return Err(response::text(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "Requested range not satisfiable",
            ))
        }
        _ => (0, c.size),
    };
    check_if_none_match(gw, dest, headers).await?;
    quota::check_upload(gw, headers, dest.account, dest.container, end - start).await?;
    versioning::before_write(gw, dest).await?;
    let fresh = truthy(hget(headers, "x-fresh-metadata"));
    let mut meta = if fresh {
        BTreeMap::new()
    } else {
        c.info.meta.clone()
    };
    meta.extend(meta_from_headers(headers, "x-object-meta-")?);
    meta.retain(|_, v| !v.is_empty());
    check_meta_totals(&meta)?;
    let (req_kept, _) = kept_headers(headers, false)?;
    let mut kept: BTreeMap<String, String> = if fresh {
        BTreeMap::new()
    } else {
        c.info.headers.clone()
    };
    kept.remove("x-delete-at");
    if c.pieces.is_some() {
        // The assembled content is copied, not the manifest.
        kept.remove("x-object-manifest");
        for h in [
            slo::SLO_HEADER,
            slo::SYSMETA_ETAG,
            slo::SYSMETA_SIZE,
            slo::LISTING_ETAG,
        ] {
            kept.remove(h);
        }
    }
    kept.extend(req_kept);
    let content_type = hget(headers, "content-type")
        .map(str::to_string)
        .unwrap_or_else(|| {
            if c.pieces.is_some() {
                slo::split_swift_bytes(&c.info.content_type).0.to_string()
            } else {
                c.info.content_type.clone()
            }
        });
    let opts = PutOptions {
        content_type: Some(content_type),
        meta,
        headers: kept,
        expected_etag: None,
    };
    let body = read_content(
        gw,
        &src.account,
        &src.container,
        &src.object,
        &c,
        start,
        end,
    )
    .map(|r| r.map_err(|e| e.to_string()));
    let info = gw
        .objects
        .put_object(dest.account, dest.container, dest.object, body, opts)
        .await
        .map_err(object_error)?;
    let mut h = HeaderMap::new();
    copied_from_headers(&mut h, &src, &c.info);
    Ok(created(&info, h))
}

/// Copy an SLO manifest as itself: it is written anew at the destination as a manifest
/// PUT would be, so its segments are checked there with the caller's rights.
async fn copy_manifest(
    gw: &Arc<SwiftGateway>,
    src: &CopySource,
    dest: ObjectRef<'_>,
    headers: &HeaderMap,
    c: &Content,
) -> Handled {
    let segments =
        slo::read_manifest(gw, &src.account, &src.container, &src.object, &c.info).await?;
    let raw = slo::raw_manifest(&segments);
    let mut h = HeaderMap::new();
    let fresh = truthy(hget(headers, "x-fresh-metadata"));
    if !fresh {
        for (k, v) in &c.info.meta {
            response::put_str(&mut h, &format!("x-object-meta-{k}"), v);
        }
        for (k, v) in &c.info.headers {
            if KEPT_HEADERS.contains(&k.as_str()) && k != "x-delete-at" {
                response::put_str(&mut h, k, v);
            }
        }
        response::put_str(
            &mut h,
            "content-type",
            slo::split_swift_bytes(&c.info.content_type).0,
        );
    }
    for (k, v) in headers {
        let name = k.as_str();
        let passed = name.starts_with("x-object-meta-")
            || KEPT_HEADERS.contains(&name)
            || matches!(
                name,
                "x-auth-token"
                    | "x-storage-token"
                    | "accept"
                    | "content-type"
                    | "if-none-match"
                    | "x-delete-after"
            );
        if passed {
            h.insert(k.clone(), v.clone());
        }
    }
    response::put_num(&mut h, "content-length", raw.len() as u64);
    let resp = slo::put_manifest(gw, dest, &h, &BTreeMap::new(), Body::from(raw)).await?;
    let (mut parts, body) = resp.into_parts();
    copied_from_headers(&mut parts.headers, src, &c.info);
    Ok(Response::from_parts(parts, body))
}

/// `X-Copied-From*` of a copy's answer.
fn copied_from_headers(h: &mut HeaderMap, src: &CopySource, info: &ObjectInfo) {
    let from = format!(
        "{}/{}",
        percent_encoding::utf8_percent_encode(&src.container, PATH_SEGMENT),
        percent_encoding::utf8_percent_encode(&src.object, PATH_SEGMENT)
    );
    response::put_str(h, "x-copied-from", &from);
    response::put_str(h, "x-copied-from-account", &src.account);
    response::put_str(
        h,
        "x-copied-from-last-modified",
        &response::http_date(info.timestamp),
    );
}

/// Characters escaped in a path segment echoed back (X-Copied-From).
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

fn object_headers(c: &Content) -> HeaderMap {
    let info = &c.info;
    let mut h = HeaderMap::new();
    response::put_str(&mut h, "etag", &c.etag);
    response::put_str(
        &mut h,
        "last-modified",
        &response::http_date(info.timestamp),
    );
    response::put_str(&mut h, "x-timestamp", &info.timestamp.to_swift());
    response::put_str(&mut h, "accept-ranges", "bytes");
    response::put_str(
        &mut h,
        "content-type",
        slo::split_swift_bytes(&info.content_type).0,
    );
    for (k, v) in &info.headers {
        if !k.starts_with("x-object-sysmeta-") {
            response::put_str(&mut h, k, v);
        }
    }
    if c.manifest.is_some() {
        response::put_str(&mut h, "x-manifest-etag", &info.etag);
    }
    response::put_meta(&mut h, "x-object-meta-", &info.meta);
    h
}

fn etag_matches(list: &str, etag: &str) -> bool {
    let etag = etag.trim_matches('"');
    list.split(',')
        .map(|t| t.trim().trim_matches('"'))
        .any(|t| t == "*" || t == etag)
}

fn http_time(v: &str) -> Option<u64> {
    httpdate::parse_http_date(v.trim())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
}

async fn get_object(
    gw: &SwiftGateway,
    method: &Method,
    o: ObjectRef<'_>,
    headers: &HeaderMap,
    query: &BTreeMap<String, String>,
) -> Handled {
    let expand = *method != Method::HEAD;
    let c = content_of(gw, o.account, o.container, o.object, headers, query, expand).await?;
    let mut h = object_headers(&c);
    let manifest_get = query.get("multipart-manifest").is_some_and(|v| v == "get");
    if manifest_get && slo::is_slo(&c.info) && query.get("format").is_none_or(|f| f != "raw") {
        response::put_str(&mut h, "content-type", "application/json; charset=utf-8");
    }
    // `part-number` picks one top-level segment of an SLO.
    let mut part: Option<(u64, u64)> = None;
    if let Some(segments) = &c.manifest {
        if let Some(n) = slo::part_number(query, headers, method)? {
            let lengths = slo::part_lengths(segments);
            response::put_num(&mut h, "x-parts-count", lengths.len() as u64);
            if n > lengths.len() {
                response::put_str(&mut h, "content-range", &format!("bytes */{}", c.size));
                if *method == Method::HEAD {
                    return Ok(response::empty(StatusCode::RANGE_NOT_SATISFIABLE, h));
                }
                let msg = "The requested part number is not satisfiable";
                response::put_num(&mut h, "content-length", msg.len() as u64);
                return Ok(response::with_body(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    h,
                    Body::from(msg),
                ));
            }
            let start: u64 = lengths[..n - 1].iter().sum();
            part = Some((start, start + lengths[n - 1]));
        }
    }
    let modified = c.info.timestamp.as_micros().div_ceil(1_000_000);
    if let Some(im) = hget(headers, "if-match") {
        if !etag_matches(im, &c.etag) {
            return Ok(response::empty(StatusCode::PRECONDITION_FAILED, h));
        }
    }
    if let Some(inm) = hget(headers, "if-none-match") {
        if etag_matches(inm, &c.etag) {
            return Ok(response::empty(StatusCode::NOT_MODIFIED, h));
        }
    } else if let Some(since) = hget(headers, "if-modified-since").and_then(http_time) {
        if modified <= since {
            return Ok(response::empty(StatusCode::NOT_MODIFIED, h));
        }
    }
    if let Some(since) = hget(headers, "if-unmodified-since").and_then(http_time) {
        if modified > since {
            return Ok(response::empty(StatusCode::PRECONDITION_FAILED, h));
        }
    }
    let size = c.size;
    if let Some((s, e)) = part {
        response::put_str(
            &mut h,
            "content-range",
            &format!("bytes {s}-{}/{size}", e - 1),
        );
        response::put_num(&mut h, "content-length", e - s);
        let body = if *method == Method::HEAD {
            Body::empty()
        } else {
            Body::from_stream(
                read_content(gw, o.account, o.container, o.object, &c, s, e)
                    .map(|r| r.map_err(|e| std::io::Error::other(e.to_string()))),
            )
        };
        return Ok(response::with_body(StatusCode::PARTIAL_CONTENT, h, body));
    }
    let ranges = match hget(headers, "range").map(|r| response::parse_ranges(r, size)) {
        None | Some(response::RangeOutcome::Ignore) => None,
        Some(response::RangeOutcome::Unsatisfiable) => {
            response::put_str(&mut h, "content-range", &format!("bytes */{size}"));
            h.remove(header::CONTENT_TYPE);
            return Ok(response::text_with(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "Requested range not satisfiable",
                h,
            ));
        }
        // A DLO serves one range at most; more and it serves the whole (as Swift).
        Some(response::RangeOutcome::Ranges(r)) if r.len() > 1 && c.dlo => None,
        Some(response::RangeOutcome::Ranges(r)) => Some(r),
    };
    let to_io = |r: Result<bytes::Bytes, ObjectError>| {
        r.map_err(|e| {
            tracing::error!(error = %e, "object read failed mid-stream");
            std::io::Error::other(e.to_string())
        })
    };
    match ranges {
        None => {
            response::put_num(&mut h, "content-length", size);
            if *method == Method::HEAD {
                return Ok(response::with_body(StatusCode::OK, h, Body::empty()));
            }
            let stream = read_content(gw, o.account, o.container, o.object, &c, 0, size).map(to_io);
            Ok(response::with_body(
                StatusCode::OK,
                h,
                Body::from_stream(stream),
            ))
        }
        Some(r) if r.len() == 1 => {
            let (s, e) = r[0];
            response::put_str(
                &mut h,
                "content-range",
                &format!("bytes {s}-{}/{size}", e - 1),
            );
            response::put_num(&mut h, "content-length", e - s);
            if *method == Method::HEAD {
                return Ok(response::with_body(
                    StatusCode::PARTIAL_CONTENT,
                    h,
                    Body::empty(),
                ));
            }
            let stream = read_content(gw, o.account, o.container, o.object, &c, s, e).map(to_io);
            Ok(response::with_body(
                StatusCode::PARTIAL_CONTENT,
                h,
                Body::from_stream(stream),
            ))
        }
        Some(r) => {
            let boundary = format!("{:032x}", rand_u128());
            let ct = slo::split_swift_bytes(&c.info.content_type).0.to_string();
            let mut pieces: Vec<ByteStream> = Vec::new();
            let mut total = 0u64;
            for (i, (s, e)) in r.iter().enumerate() {
                let head = format!(
                    "{}--{boundary}\r\nContent-Type: {ct}\r\nContent-Range: bytes {s}-{}/{size}\r\n\r\n",
                    if i == 0 { "" } else { "\r\n" },
                    e - 1
                );
                total += head.len() as u64 + (e - s);
                pieces.push(Box::pin(futures::stream::once(async move {
                    Ok(bytes::Bytes::from(head))
                })));
                pieces.push(read_content(
                    gw,
                    o.account,
                    o.container,
                    o.object,
                    &c,
                    *s,
                    *e,
                ));
            }
            let tail = format!("\r\n--{boundary}--");
            total += tail.len() as u64;
            pieces.push(Box::pin(futures::stream::once(async move {
                Ok(bytes::Bytes::from(tail))
            })));
            response::put_str(
                &mut h,
                "content-type",
                &format!("multipart/byteranges;boundary={boundary}"),
            );
            response::put_num(&mut h, "content-length", total);
            if *method == Method::HEAD {
                return Ok(response::with_body(
                    StatusCode::PARTIAL_CONTENT,
                    h,
                    Body::empty(),
                ));
            }
            let stream = futures::stream::iter(pieces).flatten().map(to_io);
            Ok(response::with_body(
                StatusCode::PARTIAL_CONTENT,
                h,
                Body::from_stream(stream),
            ))
        }
    }
}

/// A random-enough multipart boundary.
fn rand_u128() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let mut a = std::collections::hash_map::RandomState::new().build_hasher();
    a.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    let mut b = std::collections::hash_map::RandomState::new().build_hasher();
    b.write_u64(a.finish());
    (u128::from(a.finish()) << 64) | u128::from(b.finish())
}

/// Characters escaped when a name goes back into a path or a result body (Python's
/// `quote` with `/` safe).
pub(crate) fn quote_path(name: &str) -> String {
    percent_encoding::utf8_percent_encode(name, PATH_SEGMENT).to_string()
}

/// A request the gateway makes to itself as the caller: the caller's token goes along,
/// so ACLs and roles apply as they would to the caller's own request.
pub(crate) fn subrequest<'a>(
    gw: &'a Arc<SwiftGateway>,
    method: Method,
    uri: &str,
    caller: &HeaderMap,
    body: Body,
) -> futures::future::BoxFuture<'a, Response> {
    let mut headers = HeaderMap::new();
    for name in ["x-auth-token", "x-storage-token"] {
        if let Some(v) = caller.get(name) {
            headers.insert(name, v.clone());
        }
    }
    subrequest_with(gw, method, uri, headers, body)
}

/// A request the gateway makes to itself with exactly `headers` (the caller's token
/// among them).
pub(crate) fn subrequest_with<'a>(
    gw: &'a Arc<SwiftGateway>,
    method: Method,
    uri: &str,
    headers: HeaderMap,
    body: Body,
) -> futures::future::BoxFuture<'a, Response> {
    let mut req = Request::new(body);
    *req.method_mut() = method;
    match uri.parse() {
        Ok(u) => *req.uri_mut() = u,
        Err(e) => {
            tracing::warn!(uri, error = %e, "internal request to an unparsable path");
            return Box::pin(async { fault(Fault::NotFound) });
        }
    }
    *req.headers_mut() = headers;
    Box::pin(route(gw, req))
}
