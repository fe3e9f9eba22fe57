//! Request ids: `X-Openstack-Request-Id: req-<uuid>` and Swift's `X-Trans-Id: tx<hex>`.

use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use http::HeaderValue;
use tracing::Instrument;

/// The ids of one request, available to handlers as a request extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId {
    /// `req-<uuid>`.
    pub openstack: String,
    /// `tx<21 hex>-<10 hex unix time>`, the shape Swift uses.
    pub trans_id: String,
}

impl RequestId {
    pub fn generate() -> Self {
        let uuid = uuid::Uuid::new_v4();
        let hex = uuid.simple().to_string();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        RequestId {
            openstack: format!("req-{}", uuid.hyphenated()),
            trans_id: format!("tx{}-{:010x}", &hex[..21], now),
        }
    }
}

async fn request_id_mw(mut req: Request, next: Next) -> Response {
    let id = RequestId::generate();
    req.extensions_mut().insert(id.clone());
    let span = tracing::info_span!(
        "request",
        id = %id.openstack,
        method = %req.method(),
        path = %req.uri().path()
    );
    let mut resp = next.run(req).instrument(span).await;
    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&id.openstack) {
        headers.insert("x-openstack-request-id", v);
    }
    if let Ok(v) = HeaderValue::from_str(&id.trans_id) {
        headers.insert("x-trans-id", v);
    }
    resp
}

/// Give every response of `router` the request id headers.
pub fn with_request_id<S>(router: Router<S>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    router.layer(middleware::from_fn(request_id_mw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::get;
    use axum::Extension;
    use tower::ServiceExt;

    #[test]
    fn id_shapes() {
        let id = RequestId::generate();
        assert!(id.openstack.starts_with("req-"));
        assert_eq!(id.openstack.len(), 4 + 36);
        assert!(id.trans_id.starts_with("tx"));
        assert_eq!(id.trans_id.len(), 2 + 21 + 1 + 10);
        assert_ne!(id, RequestId::generate());
    }

    #[tokio::test]
    async fn every_response_gets_ids() {
        let app = with_request_id(Router::new().route(
            "/",
            get(|Extension(id): Extension<RequestId>| async move { id.openstack }),
        ));
        let resp = app
            .clone()
            .oneshot(Request::get("/").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let hdr = resp.headers()["x-openstack-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(hdr.starts_with("req-"));
        assert!(resp.headers()["x-trans-id"]
            .to_str()
            .unwrap()
            .starts_with("tx"));
        let body = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
        assert_eq!(body, hdr.as_bytes());
        // Unknown routes too.
        let resp = app
            .oneshot(Request::get("/nope").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), 404);
        assert!(resp.headers().contains_key("x-openstack-request-id"));
    }
}
