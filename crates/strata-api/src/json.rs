//! A JSON body extractor whose rejections are OpenStack faults.

use crate::fault::{Fault, FaultStyle};
use axum::extract::{FromRequest, Request};
use axum::response::{IntoResponse, Response};
use http::header;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The largest JSON body [`Json`] reads.
pub const DEFAULT_JSON_LIMIT: usize = 1 << 20;

/// Like `axum::Json`, but malformed JSON, a non-JSON content type or an oversized body
/// become a 400 (or 413) [`Fault`] in the style found in the request extensions
/// (add one with `router.layer(axum::Extension(FaultStyle::Compute))`; Keystone's by default).
/// As a response it serializes `T` as JSON.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Json<T>(pub T);

fn is_json_content_type(ct: &str) -> bool {
    let media = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
}

#[axum::async_trait]
impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Fault;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Fault> {
        let style = req
            .extensions()
            .get::<FaultStyle>()
            .copied()
            .unwrap_or_default();
        let path = req.uri().path().to_string();
        if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
            let ct = ct.to_str().unwrap_or("");
            if !ct.trim().is_empty() && !is_json_content_type(ct) {
                tracing::info!(%path, content_type = ct, "rejected non-JSON request body");
                return Err(Fault::bad_request(format!(
                    "Content-Type {ct} is not supported; expected application/json."
                ))
                .with_style(style));
            }
        }
        let bytes = match axum::body::to_bytes(req.into_body(), DEFAULT_JSON_LIMIT).await {
            Ok(b) => b,
            Err(e) => {
                tracing::info!(%path, error = %e, "rejected request body");
                return Err(Fault::payload_too_large(format!(
                    "Request body is too large or unreadable (limit {DEFAULT_JSON_LIMIT} bytes)."
                ))
                .with_style(style));
            }
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            tracing::info!(%path, "rejected empty JSON body");
            return Err(
                Fault::bad_request("The request body must be a JSON object.").with_style(style),
            );
        }
        match serde_json::from_slice::<T>(&bytes) {
            Ok(v) => Ok(Json(v)),
            Err(e) => {
                tracing::info!(%path, error = %e, "rejected malformed JSON body");
                Err(Fault::bad_request(format!("Malformed request body: {e}")).with_style(style))
            }
        }
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::post;
    use axum::{Extension, Router};
    use http::StatusCode;
    use serde::Deserialize;
    use tower::ServiceExt;

    #[derive(Deserialize, Serialize)]
    struct Thing {
        name: String,
    }

    fn app() -> Router {
        Router::new().route("/", post(|Json(t): Json<Thing>| async move { Json(t) }))
    }

    async fn call(app: Router, ct: Option<&str>, body: &'static str) -> (StatusCode, String) {
        let mut req = Request::post("/");
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        let resp = app
            .oneshot(req.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn good_body_round_trips() {
        let (s, b) = call(app(), Some("application/json"), r#"{"name":"x"}"#).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(b, r#"{"name":"x"}"#);
        let (s, _) = call(app(), None, r#"{"name":"x"}"#).await;
        assert_eq!(s, StatusCode::OK);
    }

    #[tokio::test]
    async fn malformed_body_is_a_400_fault() {
        for (ct, body) in [
            (Some("application/json"), "{not json"),
            (Some("application/json"), r#"{"other": 1}"#),
            (Some("application/json"), ""),
            (Some("text/plain"), r#"{"name":"x"}"#),
        ] {
            let (s, b) = call(app(), ct, body).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
            let v: serde_json::Value = serde_json::from_str(&b).unwrap();
            assert_eq!(v["error"]["code"], 400);
            assert_eq!(v["error"]["title"], "Bad Request");
        }
    }

    #[tokio::test]
    async fn style_comes_from_extension() {
        let app = app().layer(Extension(FaultStyle::Compute));
        let (s, b) = call(app, Some("application/json"), "[").await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["badRequest"]["code"], 400);
    }

    #[tokio::test]
    async fn oversized_body_is_rejected() {
        let big: &'static str = Box::leak(
            format!(r#"{{"name":"{}"}}"#, "a".repeat(DEFAULT_JSON_LIMIT + 1)).into_boxed_str(),
        );
        let (s, b) = call(app(), Some("application/json"), big).await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(b.contains("\"code\":413"));
    }
}
