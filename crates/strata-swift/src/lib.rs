//! The OpenStack Swift gateway, served at the root of its port as real Swift
//! is: `/info` and `/v1/AUTH_<project>/<container>/<object>`.
//!
//! One `Endpoint` enum parsed from the path, one handler per resource kind.
//! Owns the wire: headers, status codes, listing formats and Swift's fault
//! bodies. It must not know how objects are stored: `strata-object` does.

mod endpoint;
mod listing;
mod response;

pub use endpoint::{parse_path, Endpoint, PathError};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::Router;
use futures::StreamExt;
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
    Router::new().fallback(handle).with_state(gw).merge(tempauth)
}

/// Where the caller may act on an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
}

async fn handle(State(gw): State<Arc<SwiftGateway>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let query = parse_query(parts.uri.query());
    let ep = match parse_path(&path) {
        Ok(ep) => ep,
        Err(PathError::NotFound) => return fault(Fault::NotFound),
        Err(PathError::InvalidUtf8OrNul) => {
            return response::text(StatusCode::PRECONDITION_FAILED, "Invalid UTF8 or contains NULL")
        }
        Err(PathError::TooLong { what, len, max }) => {
            return response::text(
                StatusCode::BAD_REQUEST,
                &format!("{what} length of {len} longer than {max}"),
            )
        }
    };
    let method = parts.method.clone();
    let headers = parts.headers;
    let result = match ep {
        Endpoint::Info => {
            return match method {
                Method::GET | Method::HEAD => response::info(&method),
                _ => fault(Fault::MethodNotAllowed),
            }
        }
        Endpoint::Account { account } => {
            let access = if method == Method::GET || method == Method::HEAD {
                Access::Read
            } else {
                Access::Write
            };
            match authorize(&gw, &headers, &account, access).await {
                Err(resp) => return resp,
                Ok(_) => account_request(&gw, &method, &account, &headers, &query).await,
            }
        }
        Endpoint::Container { account, container } => {
            let access = match method {
                Method::GET | Method::HEAD => Access::Read,
                _ => Access::Write,
            };
            match authorize(&gw, &headers, &account, access).await {
                Err(resp) => return resp,
                Ok(_) => {
                    container_request(&gw, &method, &account, &container, &headers, &query).await
                }
            }
        }
        Endpoint::Object { account, container, object } => {
            let access = match method {
                Method::GET | Method::HEAD => Access::Read,
                _ => Access::Write,
            };
            match authorize(&gw, &headers, &account, access).await {
                Err(resp) => return resp,
                Ok(_) => {
                    let o = ObjectRef { account: &account, container: &container, object: &object };
                    object_request(&gw, &method, o, &headers, body).await
                }
            }
        }
    };
    result.unwrap_or_else(|e| e)
}

fn parse_query(q: Option<&str>) -> BTreeMap<String, String> {
    form_urlencoded::parse(q.unwrap_or("").as_bytes()).into_owned().collect()
}

/// Check the token and the caller's roles on the account.
async fn authorize(
    gw: &SwiftGateway,
    headers: &HeaderMap,
    account: &str,
    access: Access,
) -> Result<AuthContext, Response> {
    let token = headers
        .get("x-auth-token")
        .or_else(|| headers.get("x-storage-token"))
        .and_then(|v| v.to_str().ok());
    let Some(token) = token else {
        return Err(fault(Fault::Unauthorized));
    };
    let ctx = match gw.identity.validate(token).await {
        Ok(ctx) => ctx,
        Err(e) => {
            tracing::info!(error = %e, "swift request with an invalid token");
            return Err(fault(Fault::Unauthorized));
        }
    };
    let own = !ctx.project_id.is_empty() && account == format!("AUTH_{}", ctx.project_id);
    let reseller = ctx.has_role("ResellerAdmin");
    let operator = ctx.has_role("admin") || ctx.has_role("member");
    let allowed = reseller
        || (own && (operator || (access == Access::Read && ctx.has_role("reader"))));
    if allowed {
        Ok(ctx)
    } else {
        Err(fault(Fault::Forbidden))
    }
}

type Handled = Result<Response, Response>;

fn object_error(e: ObjectError) -> Response {
    match e {
        ObjectError::NoContainer { .. } | ObjectError::NoObject => fault(Fault::NotFound),
        ObjectError::ContainerNotEmpty { .. } => fault(Fault::Conflict),
        ObjectError::EtagMismatch { .. } => fault(Fault::UnprocessableEntity),
        ObjectError::Body(m) => {
            tracing::info!(error = %m, "request body failed");
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

/// Metadata headers with `prefix` (e.g. `x-container-meta-`), names lower-cased.
fn meta_from_headers(headers: &HeaderMap, prefix: &str) -> Result<BTreeMap<String, String>, Response> {
    let mut out = BTreeMap::new();
    let mut total = 0;
    for (name, value) in headers {
        let Some(key) = name.as_str().strip_prefix(prefix) else { continue };
        let value = value
            .to_str()
            .map_err(|_| response::text(StatusCode::BAD_REQUEST, "Metadata must be valid UTF-8"))?;
        if key.is_empty() {
            return Err(response::text(StatusCode::BAD_REQUEST, "Metadata name cannot be empty"));
        }
        if key.len() > META_NAME_BYTES_MAX {
            return Err(response::text(
                StatusCode::BAD_REQUEST,
                &format!("Metadata name too long; max {META_NAME_BYTES_MAX}"),
            ));
        }
        if value.len() > META_VALUE_BYTES_MAX {
            return Err(response::text(
                StatusCode::BAD_REQUEST,
                &format!("Metadata value longer than {META_VALUE_BYTES_MAX}"),
            ));
        }
        total += key.len() + value.len();
        out.insert(key.to_string(), value.to_string());
    }
    if out.len() > META_COUNT_MAX {
        return Err(response::text(
            StatusCode::BAD_REQUEST,
            &format!("Too many metadata items; max {META_COUNT_MAX}"),
        ));
    }
    if total > META_OVERALL_BYTES_MAX {
        return Err(response::text(
            StatusCode::BAD_REQUEST,
            &format!("Total metadata too large; max {META_OVERALL_BYTES_MAX}"),
        ));
    }
    Ok(out)
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
    Ok((set, cleared))
}

fn listing_limit(query: &BTreeMap<String, String>) -> Result<usize, Response> {
    match query.get("limit") {
        None => Ok(LISTING_LIMIT_MAX),
        Some(l) => match l.parse::<usize>() {
            Ok(n) if n <= LISTING_LIMIT_MAX => Ok(n),
            _ => Err(response::text(
                StatusCode::PRECONDITION_FAILED,
                &format!("Maximum limit is {LISTING_LIMIT_MAX}"),
            )),
        },
    }
}

async fn account_request(
    gw: &SwiftGateway,
    method: &Method,
    account: &str,
    headers: &HeaderMap,
    query: &BTreeMap<String, String>,
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
            response::put_meta(&mut h, "x-account-meta-", &meta);
            if *method == Method::HEAD {
                return Ok(response::empty(StatusCode::NO_CONTENT, h));
            }
            let limit = listing_limit(query)?;
            let prefix = query.get("prefix").map(String::as_str).unwrap_or("");
            let marker = query.get("marker").map(String::as_str).filter(|m| !m.is_empty());
            let rows = objects
                .list_containers(account, prefix, marker, limit)
                .await
                .map_err(object_error)?;
            let mut entries = Vec::with_capacity(rows.len());
            for (name, info) in rows {
                let (count, bytes) =
                    objects.container_usage(account, &name).await.map_err(object_error)?;
                entries.push(listing::ContainerRow { name, count, bytes, created: info.created });
            }
            Ok(listing::containers(headers, query, h, account, &entries))
        }
        Method::POST => {
            let (set, cleared) = meta_changes(headers, "account")?;
            objects.update_account_meta(account, set, &cleared).await.map_err(object_error)?;
            Ok(response::empty(StatusCode::NO_CONTENT, HeaderMap::new()))
        }
        _ => Ok(fault(Fault::MethodNotAllowed)),
    }
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
            let meta = meta_from_headers(headers, "x-container-meta-")?;
            let created =
                objects.put_container(account, container, meta).await.map_err(object_error)?;
            let status = if created { StatusCode::CREATED } else { StatusCode::ACCEPTED };
            Ok(response::empty(status, HeaderMap::new()))
        }
        Method::POST => {
            let (set, cleared) = meta_changes(headers, "container")?;
            objects
                .update_container_meta(account, container, set, &cleared)
                .await
                .map_err(object_error)?;
            Ok(response::empty(StatusCode::NO_CONTENT, HeaderMap::new()))
        }
        Method::DELETE => {
            objects.delete_container(account, container).await.map_err(object_error)?;
            Ok(response::empty(StatusCode::NO_CONTENT, HeaderMap::new()))
        }
        Method::GET | Method::HEAD => {
            let info = objects.container(account, container).await.map_err(object_error)?;
            let (count, bytes) =
                objects.container_usage(account, container).await.map_err(object_error)?;
            let mut h = HeaderMap::new();
            response::put_num(&mut h, "x-container-object-count", count);
            response::put_num(&mut h, "x-container-bytes-used", bytes);
            response::put_str(&mut h, "x-timestamp", &info.created.to_swift());
            response::put_str(&mut h, "x-storage-policy", "Policy-0");
            response::put_meta(&mut h, "x-container-meta-", &info.meta);
            if *method == Method::HEAD {
                return Ok(response::empty(StatusCode::NO_CONTENT, h));
            }
            let limit = listing_limit(query)?;
            let rows = listing::list_with_delimiter(objects, account, container, query, limit)
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
    gw: &SwiftGateway,
    method: &Method,
    o: ObjectRef<'_>,
    headers: &HeaderMap,
    body: Body,
) -> Handled {
    match *method {
        Method::PUT => put_object(gw, o, headers, body).await,
        Method::GET | Method::HEAD => get_object(gw, method, o, headers).await,
        Method::DELETE => {
            gw.objects.delete_object(o.account, o.container, o.object).await.map_err(object_error)?;
            Ok(response::empty(StatusCode::NO_CONTENT, HeaderMap::new()))
        }
        Method::POST => {
            let meta = meta_from_headers(headers, "x-object-meta-")?;
            gw.objects
                .post_object(o.account, o.container, o.object, meta)
                .await
                .map_err(object_error)?;
            Ok(response::empty(StatusCode::ACCEPTED, HeaderMap::new()))
        }
        _ => Ok(fault(Fault::MethodNotAllowed)),
    }
}

/// Headers stored with an object and given back on GET/HEAD.
const KEPT_HEADERS: [&str; 2] = ["content-encoding", "content-disposition"];

async fn put_object(gw: &SwiftGateway, o: ObjectRef<'_>, headers: &HeaderMap, body: Body) -> Handled {
    let chunked = headers
        .get(header::TRANSFER_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let length = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok());
    match (length, chunked) {
        (None, false) => return Ok(fault(Fault::LengthRequired)),
        (Some(l), _) => match l.parse::<u64>() {
            Ok(n) if n > OBJECT_BYTES_MAX => return Ok(fault(Fault::TooLarge)),
            Ok(_) => {}
            Err(_) => return Ok(response::text(StatusCode::BAD_REQUEST, "Invalid Content-Length")),
        },
        _ => {}
    }
    let mut opts = PutOptions {
        content_type: headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        meta: meta_from_headers(headers, "x-object-meta-")?,
        headers: BTreeMap::new(),
        expected_etag: headers.get(header::ETAG).and_then(|v| v.to_str().ok()).map(str::to_string),
    };
    for name in KEPT_HEADERS {
        if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
            opts.headers.insert(name.to_string(), v.to_string());
        }
    }
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
    let mut h = HeaderMap::new();
    response::put_str(&mut h, "etag", &info.etag);
    response::put_str(&mut h, "last-modified", &response::http_date(info.timestamp));
    response::put_str(&mut h, "x-timestamp", &info.timestamp.to_swift());
    Ok(response::empty(StatusCode::CREATED, h))
}

fn object_headers(info: &ObjectInfo) -> HeaderMap {
    let mut h = HeaderMap::new();
    response::put_str(&mut h, "etag", &info.etag);
    response::put_str(&mut h, "last-modified", &response::http_date(info.timestamp));
    response::put_str(&mut h, "x-timestamp", &info.timestamp.to_swift());
    response::put_str(&mut h, "accept-ranges", "bytes");
    if let Ok(v) = HeaderValue::from_str(&info.content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    for (k, v) in &info.headers {
        response::put_str(&mut h, k, v);
    }
    response::put_meta(&mut h, "x-object-meta-", &info.meta);
    h
}

fn etag_matches(list: &str, etag: &str) -> bool {
    list.split(',').map(|t| t.trim().trim_matches('"')).any(|t| t == "*" || t == etag)
}

async fn get_object(gw: &SwiftGateway, method: &Method, o: ObjectRef<'_>, headers: &HeaderMap) -> Handled {
    let info = gw.objects.head_object(o.account, o.container, o.object).await.map_err(object_error)?;
    let mut h = object_headers(&info);
    if let Some(im) = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()) {
        if !etag_matches(im, &info.etag) {
            return Ok(response::empty(StatusCode::PRECONDITION_FAILED, h));
        }
    }
    if let Some(inm) = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        if etag_matches(inm, &info.etag) {
            return Ok(response::empty(StatusCode::NOT_MODIFIED, h));
        }
    }
    let size = info.size;
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, start, end) = match range.map(|r| response::parse_single_range(r, size)) {
        None | Some(response::RangeOutcome::Ignore) => (StatusCode::OK, 0, size),
        Some(response::RangeOutcome::Unsatisfiable) => {
            response::put_str(&mut h, "content-range", &format!("bytes */{size}"));
            return Ok(response::text_with(StatusCode::RANGE_NOT_SATISFIABLE, "Requested range not satisfiable", h));
        }
        Some(response::RangeOutcome::Range(s, e)) => {
            response::put_str(&mut h, "content-range", &format!("bytes {s}-{}/{size}", e - 1));
            (StatusCode::PARTIAL_CONTENT, s, e)
        }
    };
    response::put_num(&mut h, "content-length", end - start);
    if *method == Method::HEAD {
        return Ok(response::with_body(status, h, Body::empty()));
    }
    let stream = gw
        .objects
        .read_range(o.account, o.container, o.object, &info, start, end)
        .map(|r| {
            r.map_err(|e| {
                tracing::error!(error = %e, "object read failed mid-stream");
                std::io::Error::other(e.to_string())
            })
        });
    Ok(response::with_body(status, h, Body::from_stream(stream)))
}
