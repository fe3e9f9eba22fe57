//! The Image gateway: Glance v2 on port 9292 (images, their data, tags, members, schemas,
//! deactivation). Image records and bytes belong to `strata-image`; this crate parses
//! requests, applies Glance's rules for who may do what, and shapes answers. Requests carry
//! a Keystone token scoped to a project; faults are short text bodies, as Glance's are.

mod images;
mod members;
mod schemas;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Method, StatusCode, Uri};
use serde_json::{json, Value};
use std::sync::Arc;
use strata_api::auth::{auth_token, AuthContext, TokenValidator};
use strata_api::fault::{Fault, FaultStyle};
use strata_image::data::ImageData;
use strata_image::{Caller, ImageError};
use strata_meta::MetaStore;

/// The largest JSON body accepted.
const MAX_BODY: usize = 1 << 20;
/// The newest minor version of v2 served; every one from 2.0 up is listed.
const NEWEST_MINOR: u32 = 9;

/// Everything the gateway needs from the node.
pub struct GlanceGateway {
    pub meta: Arc<dyn MetaStore>,
    pub images: ImageData,
    pub auth: Arc<dyn TokenValidator>,
    /// `http://H:9292`, for version documents.
    pub public_url: String,
}

/// The router serving Glance on its own port.
pub fn router(gw: Arc<GlanceGateway>) -> axum::Router {
    axum::Router::new()
        .fallback(handle)
        .with_state(gw)
        .layer(axum::Extension(FaultStyle::Plain))
}

type Result<T> = std::result::Result<T, Fault>;

pub(crate) fn fault(status: StatusCode, message: impl Into<String>) -> Fault {
    Fault::new(status, message).with_style(FaultStyle::Plain)
}

pub(crate) fn bad_request(message: impl Into<String>) -> Fault {
    fault(StatusCode::BAD_REQUEST, message)
}

pub(crate) fn forbidden(message: impl Into<String>) -> Fault {
    fault(StatusCode::FORBIDDEN, message)
}

pub(crate) fn not_found(message: impl Into<String>) -> Fault {
    fault(StatusCode::NOT_FOUND, message)
}

pub(crate) fn conflict(message: impl Into<String>) -> Fault {
    fault(StatusCode::CONFLICT, message)
}

pub(crate) fn image_fault(e: ImageError) -> Fault {
    match e {
        ImageError::Invalid(m) | ImageError::Body(m) => bad_request(m),
        ImageError::NotFound(m) => not_found(m),
        ImageError::Conflict(m) => conflict(m),
        ImageError::TooLarge(m) => fault(StatusCode::PAYLOAD_TOO_LARGE, m),
        ImageError::Storage(m) => fault(StatusCode::SERVICE_UNAVAILABLE, m),
        ImageError::Meta(e) => {
            tracing::error!(error = %e, "meta group unavailable");
            fault(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("metadata unavailable: {e}"),
            )
        }
    }
}

/// A JSON answer with a status.
pub(crate) fn reply(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// One authenticated request.
pub(crate) struct Req {
    pub gw: Arc<GlanceGateway>,
    pub ctx: AuthContext,
    pub headers: HeaderMap,
    /// Query pairs in order, decoded; keys may repeat (`tag`).
    pub query: Vec<(String, String)>,
}

impl Req {
    pub fn caller(&self) -> Caller {
        Caller {
            project: self.ctx.project_id.clone(),
            admin: self.ctx.is_admin(),
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
        Err(forbidden("You are not authorized to complete this action."))
    }

    pub fn query_one(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (at most 1 MiB); a 400 when missing or malformed.
    pub async fn json(&self, body: Body) -> Result<Value> {
        let bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
            fault(
                StatusCode::PAYLOAD_TOO_LARGE,
                "The request body is too large.",
            )
        })?;
        if bytes.is_empty() {
            return Err(bad_request("The request body is missing."));
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            tracing::info!(error = %e, "malformed Glance request body");
            bad_request(format!("Malformed JSON in request body: {e}"))
        })
    }

    fn content_type(&self) -> &str {
        self.headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
    }

    /// A 415 unless the request's media type is one of `wanted`.
    pub fn require_type(&self, wanted: &[&str]) -> Result<()> {
        let ct = self.content_type();
        if wanted.iter().any(|w| ct.eq_ignore_ascii_case(w)) {
            return Ok(());
        }
        Err(fault(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Unsupported Content-Type {ct:?}; expected one of {wanted:?}"),
        ))
    }
}

pub(crate) fn query_pairs(uri: &Uri) -> Vec<(String, String)> {
    uri.query()
        .map(|q| {
            q.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (decode(&k.replace('+', " ")), decode(&v.replace('+', " ")))
                })
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

fn versions(base: &str) -> Value {
    let list: Vec<Value> = (0..=NEWEST_MINOR)
        .rev()
        .map(|minor| {
            json!({
                "id": format!("v2.{minor}"),
                "status": if minor == NEWEST_MINOR { "CURRENT" } else { "SUPPORTED" },
                "links": [{"rel": "self", "href": format!("{base}/v2/")}],
            })
        })
        .collect();
    json!({ "versions": list })
}

async fn handle(
    State(gw): State<Arc<GlanceGateway>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let segs: Vec<String> = uri
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .map(decode)
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    match segs.as_slice() {
        [] if method == Method::GET => {
            reply(StatusCode::MULTIPLE_CHOICES, versions(&gw.public_url))
        }
        ["versions"] if method == Method::GET => reply(StatusCode::OK, versions(&gw.public_url)),
        ["v2", rest @ ..] => {
            let rest = rest.to_vec();
            match dispatch(gw, &rest, method, &uri, headers, body).await {
                Ok(r) => r,
                Err(f) => f.into_response(),
            }
        }
        _ => not_found("The resource could not be found.").into_response(),
    }
}

async fn dispatch(
    gw: Arc<GlanceGateway>,
    segs: &[&str],
    method: Method,
    uri: &Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let token =
        auth_token(&headers).ok_or_else(|| Fault::unauthorized().with_style(FaultStyle::Plain))?;
    let ctx = gw
        .auth
        .validate_token(token)
        .await
        .map_err(|f| f.with_style(FaultStyle::Plain))?;
    if !ctx.is_scoped() {
        return Err(forbidden("A project-scoped token is required."));
    }
    let req = Req {
        gw,
        ctx,
        headers,
        query: query_pairs(uri),
    };
    match (segs, method) {
        (["images"], Method::GET) => images::list(&req).await,
        (["images"], Method::POST) => images::create(&req, body).await,
        (["images", id], Method::GET) => images::show(&req, id).await,
        (["images", id], Method::PATCH) => images::update(&req, id, body).await,
        (["images", id], Method::DELETE) => images::delete(&req, id).await,
        (["images", id, "file"], Method::PUT) => images::upload(&req, id, body).await,
        (["images", id, "file"], Method::GET) => images::download(&req, id).await,
        (["images", id, "tags", tag], Method::PUT) => images::add_tag(&req, id, tag).await,
        (["images", id, "tags", tag], Method::DELETE) => images::remove_tag(&req, id, tag).await,
        (["images", id, "actions", action], Method::POST) => images::action(&req, id, action).await,
        (["images", id, "members"], Method::GET) => members::list(&req, id).await,
        (["images", id, "members"], Method::POST) => members::add(&req, id, body).await,
        (["images", id, "members", member], Method::GET) => members::show(&req, id, member).await,
        (["images", id, "members", member], Method::PUT) => {
            members::update(&req, id, member, body).await
        }
        (["images", id, "members", member], Method::DELETE) => {
            members::remove(&req, id, member).await
        }
        (["schemas", name], Method::GET) => schemas::get(name),
        (["info", "import"], Method::GET) => Ok(reply(
            StatusCode::OK,
            json!({"import-methods": {
                "description": "Import methods available.",
                "type": "array",
                "value": [],
            }}),
        )),
        (["info", "stores"], Method::GET) => {
            Err(not_found("Multi backend is not supported at this site."))
        }
        (["images"], _)
        | (["images", _], _)
        | (["images", _, "file" | "members"], _)
        | (["images", _, "tags" | "members" | "actions", _], _)
        | (["schemas", _], _)
        | (["info", _], _) => Err(fault(
            StatusCode::METHOD_NOT_ALLOWED,
            "The method is not allowed for this resource.",
        )),
        _ => Err(not_found("The resource could not be found.")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_list_names_the_current_one_first() {
        let v = versions("http://h:9292");
        assert_eq!(v["versions"][0]["id"], "v2.9");
        assert_eq!(v["versions"][0]["status"], "CURRENT");
        assert_eq!(v["versions"][9]["id"], "v2.0");
        assert_eq!(v["versions"][9]["links"][0]["href"], "http://h:9292/v2/");
    }

    #[test]
    fn queries_keep_repeats_and_decode() {
        let uri: Uri = "/v2/images?tag=a&tag=b%20c&name=x+y&flag".parse().unwrap();
        let q = query_pairs(&uri);
        assert_eq!(
            q,
            vec![
                ("tag".into(), "a".into()),
                ("tag".into(), "b c".into()),
                ("name".into(), "x y".into()),
                ("flag".into(), "".into()),
            ]
        );
    }
}
