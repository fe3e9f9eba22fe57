//! Swift response helpers: its HTML-ish fault bodies, header writers, dates,
//! ranges and `/info`.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use std::collections::BTreeMap;
use strata_types::Timestamp;

/// The faults Swift answers with a canned body.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Conflict,
    PreconditionFailed,
    LengthRequired,
    TooLarge,
    UnprocessableEntity,
    Internal,
    ServiceUnavailable,
}

pub fn fault(f: Fault) -> Response {
    let (status, title, text) = match f {
        Fault::Unauthorized => (
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "This server could not verify that you are authorized to access the document you requested.",
        ),
        Fault::Forbidden => (StatusCode::FORBIDDEN, "Forbidden", "Access was denied to this resource."),
        Fault::NotFound => (StatusCode::NOT_FOUND, "Not Found", "The resource could not be found."),
        Fault::MethodNotAllowed => (
            StatusCode::METHOD_NOT_ALLOWED,
            "Method Not Allowed",
            "The method is not allowed for this resource.",
        ),
        Fault::Conflict => (
            StatusCode::CONFLICT,
            "Conflict",
            "There was a conflict when trying to complete your request.",
        ),
        Fault::PreconditionFailed => (
            StatusCode::PRECONDITION_FAILED,
            "Precondition Failed",
            "A precondition for this request was not met.",
        ),
        Fault::LengthRequired => (
            StatusCode::LENGTH_REQUIRED,
            "Length Required",
            "Length Required",
        ),
        Fault::TooLarge => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request Entity Too Large",
            "The body of your request was too large for this server.",
        ),
        Fault::UnprocessableEntity => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "Unprocessable Entity",
            "Unable to process the contained instructions",
        ),
        Fault::Internal => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal Error",
            "The server has either erred or is incapable of performing the requested operation.",
        ),
        Fault::ServiceUnavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable",
            "The server is currently unavailable. Please try again at a later time.",
        ),
    };
    let body = format!("<html><h1>{title}</h1><p>{text}</p></html>");
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=UTF-8"),
    );
    with_body(status, h, Body::from(body))
}

pub fn text(status: StatusCode, msg: &str) -> Response {
    text_with(status, msg, HeaderMap::new())
}

pub fn text_with(status: StatusCode, msg: &str, mut h: HeaderMap) -> Response {
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=UTF-8"),
    );
    with_body(status, h, Body::from(msg.to_string()))
}

/// A response without a body (Content-Length 0 unless already set).
pub fn empty(status: StatusCode, mut h: HeaderMap) -> Response {
    if !h.contains_key(header::CONTENT_LENGTH) {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    }
    if !h.contains_key(header::CONTENT_TYPE) {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=UTF-8"),
        );
    }
    with_body(status, h, Body::empty())
}

pub fn with_body(status: StatusCode, h: HeaderMap, body: Body) -> Response {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = h;
    let now = httpdate::fmt_http_date(std::time::SystemTime::now());
    if let Ok(v) = HeaderValue::from_str(&now) {
        resp.headers_mut().insert(header::DATE, v);
    }
    resp
}

pub fn put_str(h: &mut HeaderMap, name: &str, value: &str) {
    if let (Ok(n), Ok(v)) = (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(value),
    ) {
        h.insert(n, v);
    }
}

pub fn put_num(h: &mut HeaderMap, name: &str, value: u64) {
    put_str(h, name, &value.to_string());
}

pub fn put_meta(h: &mut HeaderMap, prefix: &str, meta: &BTreeMap<String, String>) {
    for (k, v) in meta {
        let name = HeaderName::from_bytes(format!("{prefix}{k}").as_bytes());
        if let (Ok(n), Ok(v)) = (name, HeaderValue::from_bytes(&meta_value_bytes(v))) {
            h.insert(n, v);
        }
    }
}

/// Marks a stored metadata value that holds raw (non-UTF-8) bytes as hex. A header value
/// never holds NUL, so the marker cannot clash with a real value.
const RAW_META_MARK: char = '\0';

/// How a metadata value given as header bytes is stored: as is when UTF-8, else marked hex
/// (Swift keeps whatever bytes the client sent).
pub fn meta_value_from_bytes(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => s.to_string(),
        Err(_) => {
            let mut out = String::with_capacity(1 + 2 * b.len());
            out.push(RAW_META_MARK);
            for x in b {
                out.push_str(&format!("{x:02x}"));
            }
            out
        }
    }
}

/// The header bytes of a stored metadata value.
pub fn meta_value_bytes(v: &str) -> Vec<u8> {
    let Some(hex) = v.strip_prefix(RAW_META_MARK) else {
        return v.as_bytes().to_vec();
    };
    let digits = hex.as_bytes();
    digits
        .chunks(2)
        .filter_map(|p| {
            std::str::from_utf8(p)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
        })
        .collect()
}

/// RFC 7231 date of a timestamp, rounded up to the second as Swift does.
pub fn http_date(ts: Timestamp) -> String {
    let secs = ts.as_micros().div_ceil(1_000_000);
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

/// A listing's `last_modified`: ISO 8601 with microseconds, no zone.
pub fn iso_date(ts: Timestamp) -> String {
    let secs = ts.as_secs() as i64;
    let micros = ts.as_micros() % 1_000_000;
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            micros
        ),
        Err(_) => "1970-01-01T00:00:00.000000".into(),
    }
}

/// What a `Range` header asks of an object of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeOutcome {
    /// Malformed: serve the whole object (as Swift does for junk).
    Ignore,
    Unsatisfiable,
    /// The satisfiable ranges, bytes `[start, end)` each, in the order asked.
    Ranges(Vec<(u64, u64)>),
}

/// Most ranges one request may ask for; more and the header is ignored (as Swift).
const RANGES_MAX: usize = 50;

/// RFC 7233 byte ranges, whitespace allowed around every part.
pub fn parse_ranges(header: &str, size: u64) -> RangeOutcome {
    let compact: String = header.chars().filter(|c| !c.is_whitespace()).collect();
    let lower = compact.to_ascii_lowercase();
    let Some(spec) = lower.strip_prefix("bytes=") else {
        return RangeOutcome::Ignore;
    };
    let specs: Vec<&str> = spec.split(',').collect();
    if specs.is_empty() || specs.len() > RANGES_MAX {
        return RangeOutcome::Ignore;
    }
    let mut out = Vec::new();
    for one in specs {
        let Some((a, b)) = one.split_once('-') else {
            return RangeOutcome::Ignore;
        };
        match (a.is_empty(), b.is_empty()) {
            (true, true) => return RangeOutcome::Ignore,
            (true, false) => match b.parse::<u64>() {
                Ok(0) => {}
                Ok(_) if size == 0 => {}
                Ok(n) => out.push((size.saturating_sub(n), size)),
                Err(_) => return RangeOutcome::Ignore,
            },
            (false, _) => {
                let Ok(start) = a.parse::<u64>() else {
                    return RangeOutcome::Ignore;
                };
                let end = if b.is_empty() {
                    size
                } else {
                    match b.parse::<u64>() {
                        Ok(e) if e >= start => e.saturating_add(1).min(size),
                        _ => return RangeOutcome::Ignore,
                    }
                };
                if start < size {
                    out.push((start, end));
                }
            }
        }
    }
    if out.is_empty() {
        RangeOutcome::Unsatisfiable
    } else {
        RangeOutcome::Ranges(out)
    }
}

/// Headers only the account's owner sees (Swift's `swift_owner_headers`).
const OWNER_HEADERS: [&str; 10] = [
    "x-account-access-control",
    "x-container-read",
    "x-container-write",
    "x-container-sync-key",
    "x-container-sync-to",
    "x-account-meta-temp-url-key",
    "x-account-meta-temp-url-key-2",
    "x-container-meta-temp-url-key",
    "x-container-meta-temp-url-key-2",
    "x-account-access-control",
];

/// An account or container answer as the caller may see it: without the owner's headers
/// when the caller is not the owner.
/// A request's headers without those only an owner may set.
pub fn without_owner_headers(h: &HeaderMap) -> HeaderMap {
    let mut out = h.clone();
    for name in OWNER_HEADERS {
        out.remove(name);
        out.remove(format!("x-remove-{}", &name[2..]).as_str());
    }
    out
}

pub fn for_owner(mut resp: Response, owner: bool) -> Response {
    if !owner {
        for name in OWNER_HEADERS {
            resp.headers_mut().remove(name);
        }
    }
    resp
}

/// `/info`: exactly what this gateway implements.
pub fn info(method: &Method) -> Response {
    let doc = serde_json::json!({
        "swift": {
            "version": "2.38.3",
            "max_file_size": crate::OBJECT_BYTES_MAX,
            "max_meta_name_length": crate::META_NAME_BYTES_MAX,
            "max_meta_value_length": crate::META_VALUE_BYTES_MAX,
            "max_meta_count": crate::META_COUNT_MAX,
            "max_meta_overall_size": crate::META_OVERALL_BYTES_MAX,
            "max_header_size": 8192,
            "max_object_name_length": crate::endpoint::OBJECT_NAME_BYTES_MAX,
            "max_container_name_length": crate::endpoint::CONTAINER_NAME_BYTES_MAX,
            "max_account_name_length": crate::endpoint::ACCOUNT_NAME_BYTES_MAX,
            "container_listing_limit": crate::LISTING_LIMIT_MAX,
            "account_listing_limit": crate::LISTING_LIMIT_MAX,
            "extra_header_count": 0,
            "strict_cors_mode": true,
            "account_autocreate": true,
            "allow_account_management": false,
            "policies": [{"name": "Policy-0", "aliases": "Policy-0", "default": true}],
        },
        "tempauth": {"account_acls": true},
        "slo": {
            "max_manifest_segments": crate::slo::MAX_MANIFEST_SEGMENTS,
            "max_manifest_size": crate::slo::MAX_MANIFEST_BYTES,
            "yield_frequency": crate::slo::YIELD_FREQUENCY_SECS,
            "min_segment_size": 1,
            "allow_async_delete": false,
        },
        "account_quotas": {},
        "container_quotas": {},
        "bulk_upload": {
            "max_containers_per_extraction": crate::extract::MAX_CONTAINERS_PER_EXTRACTION,
            "max_failed_extractions": crate::extract::MAX_FAILED_EXTRACTIONS,
        },
        "bulk_delete": {
            "max_deletes_per_request": crate::bulk::MAX_DELETES_PER_REQUEST,
            "max_failed_deletes": crate::bulk::MAX_FAILED_DELETES,
        },
        "tempurl": {
            "methods": crate::tempurl::METHODS,
            "incoming_remove_headers": crate::tempurl::INCOMING_REMOVE_HEADERS,
            "incoming_allow_headers": crate::tempurl::INCOMING_ALLOW_HEADERS,
            "outgoing_remove_headers": crate::tempurl::OUTGOING_REMOVE_HEADERS,
            "outgoing_allow_headers": crate::tempurl::OUTGOING_ALLOW_HEADERS,
            "allowed_digests": crate::tempurl::ALLOWED_DIGESTS,
            "deprecated_digests": crate::tempurl::DEPRECATED_DIGESTS,
        },
        "versioned_writes": {
            "allowed_flags": [
                crate::versioning::VERSIONS_LOCATION,
                crate::versioning::HISTORY_LOCATION,
            ],
        },
    });
    let body = doc.to_string();
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    put_num(&mut h, "content-length", body.len() as u64);
    let body = if *method == Method::HEAD {
        Body::empty()
    } else {
        Body::from(body)
    };
    with_body(StatusCode::OK, h, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_7233() {
        use RangeOutcome::*;
        let one = |s, e| Ranges(vec![(s, e)]);
        assert_eq!(parse_ranges("bytes=0-9", 100), one(0, 10));
        assert_eq!(parse_ranges("bytes=90-", 100), one(90, 100));
        assert_eq!(parse_ranges("bytes=-10", 100), one(90, 100));
        assert_eq!(parse_ranges("bytes=-200", 100), one(0, 100));
        assert_eq!(parse_ranges("bytes=50-500", 100), one(50, 100));
        assert_eq!(parse_ranges("bytes = 0 - 2", 100), one(0, 3));
        assert_eq!(parse_ranges("BYTES=0-2 ", 100), one(0, 3));
        assert_eq!(
            parse_ranges("bytes=0-1,5-6,200-", 100),
            Ranges(vec![(0, 2), (5, 7)])
        );
        assert_eq!(parse_ranges("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_ranges("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_ranges("bytes=9-1", 100), Ignore);
        assert_eq!(parse_ranges("bytes=0-1,x", 100), Ignore);
        assert_eq!(parse_ranges("items=0-1", 100), Ignore);
    }

    #[test]
    fn raw_metadata_bytes_round_trip() {
        for b in [
            &b"plain"[..],
            "uni\u{e12}".as_bytes(),
            &[0xe2, 0x98, b'x', 0xff][..],
        ] {
            assert_eq!(meta_value_bytes(&meta_value_from_bytes(b)), b);
        }
        assert_eq!(meta_value_from_bytes(b"plain"), "plain");
    }

    #[test]
    fn dates_have_swift_shapes() {
        let ts = Timestamp(1_700_000_000_123_456);
        assert_eq!(iso_date(ts), "2023-11-14T22:13:20.123456");
        assert_eq!(http_date(ts), "Tue, 14 Nov 2023 22:13:21 GMT");
    }
}
