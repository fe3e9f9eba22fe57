//! OpenStack fault bodies.
//!
//! Keystone answers `{"error": {"code": 401, "message": "...", "title": "Unauthorized"}}`;
//! Nova and Cinder answer `{"itemNotFound": {"code": 404, "message": "..."}}`; Swift answers
//! plain text.

use axum::response::{IntoResponse, Response};
use http::{header, HeaderName, HeaderValue, StatusCode};
use serde_json::json;
use std::fmt;

/// How a [`Fault`] renders its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FaultStyle {
    /// Keystone: `{"error": {"code", "message", "title"}}`.
    #[default]
    Keystone,
    /// Nova, Cinder, Glance v1 style: `{"<faultName>": {"code", "message"}}`.
    Compute,
    /// Swift: a short text body.
    Plain,
}

/// An HTTP error answer in OpenStack form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub status: StatusCode,
    pub message: String,
    pub style: FaultStyle,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Fault {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Fault {
            status,
            message: message.into(),
            style: FaultStyle::default(),
            headers: Vec::new(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 401 with Keystone's standard message.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "The request you have made requires authentication.",
        )
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "The method is not allowed for this resource.",
        )
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }

    pub fn payload_too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, message)
    }

    pub fn over_limit(message: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, message)
    }

    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    pub fn not_implemented(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_IMPLEMENTED, message)
    }

    pub fn service_unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    /// Render in `style`.
    pub fn with_style(mut self, style: FaultStyle) -> Self {
        self.style = style;
        self
    }

    /// Add a response header (e.g. `WWW-Authenticate`).
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// Keystone's `title`: the canonical reason phrase.
    pub fn title(&self) -> &'static str {
        self.status.canonical_reason().unwrap_or("Error")
    }

    /// The key of a Nova/Cinder style fault body.
    pub fn compute_name(&self) -> &'static str {
        match self.status.as_u16() {
            400 => "badRequest",
            401 => "unauthorized",
            403 => "forbidden",
            404 => "itemNotFound",
            405 => "badMethod",
            409 => "conflict",
            413 | 429 => "overLimit",
            415 => "badMediaType",
            501 => "notImplemented",
            503 => "serviceUnavailable",
            s if s >= 500 => "computeFault",
            _ => "badRequest",
        }
    }

    /// The JSON body in the fault's style (`None` for [`FaultStyle::Plain`]).
    pub fn body_json(&self) -> Option<serde_json::Value> {
        let code = self.status.as_u16();
        match self.style {
            FaultStyle::Keystone => Some(json!({
                "error": {"code": code, "message": self.message, "title": self.title()}
            })),
            FaultStyle::Compute => Some(json!({
                self.compute_name(): {"code": code, "message": self.message}
            })),
            FaultStyle::Plain => None,
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

impl std::error::Error for Fault {}

impl IntoResponse for Fault {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = self.status.as_u16(), message = %self.message, "server fault");
        }
        let mut resp = match self.body_json() {
            Some(body) => {
                let bytes = serde_json::to_vec(&body).unwrap_or_default();
                let mut r = (self.status, bytes).into_response();
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                r
            }
            None => {
                let text = if self.message.is_empty() {
                    self.title().to_string()
                } else {
                    self.message.clone()
                };
                let mut r = (self.status, text).into_response();
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=UTF-8"),
                );
                r
            }
        };
        for (name, value) in self.headers {
            resp.headers_mut().insert(name, value);
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keystone_body() {
        let f = Fault::unauthorized();
        assert_eq!(
            f.body_json().unwrap(),
            json!({"error": {
                "code": 401,
                "title": "Unauthorized",
                "message": "The request you have made requires authentication."
            }})
        );
    }

    #[test]
    fn compute_bodies() {
        let f = Fault::not_found("Volume x could not be found.").with_style(FaultStyle::Compute);
        assert_eq!(
            f.body_json().unwrap(),
            json!({"itemNotFound": {"code": 404, "message": "Volume x could not be found."}})
        );
        let names: Vec<_> = [400u16, 401, 403, 404, 409, 413, 500, 503]
            .iter()
            .map(|s| Fault::new(StatusCode::from_u16(*s).unwrap(), "").compute_name())
            .collect();
        assert_eq!(
            names,
            [
                "badRequest",
                "unauthorized",
                "forbidden",
                "itemNotFound",
                "conflict",
                "overLimit",
                "computeFault",
                "serviceUnavailable"
            ]
        );
    }

    #[tokio::test]
    async fn into_response_sets_status_type_and_headers() {
        let f = Fault::conflict("dup").with_header(
            HeaderName::from_static("www-authenticate"),
            HeaderValue::from_static("Keystone uri=\"x\""),
        );
        let resp = f.into_response();
        assert_eq!(resp.status(), StatusCode::CONFLICT);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(resp.headers()["www-authenticate"], "Keystone uri=\"x\"");
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            json!({"error": {"code": 409, "message": "dup", "title": "Conflict"}})
        );

        let resp = Fault::unauthorized()
            .with_style(FaultStyle::Plain)
            .into_response();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert!(resp.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain"));
    }
}
