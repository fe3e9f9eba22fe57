//! Bulk delete (`POST|DELETE ?bulk-delete`) and the result bodies it shares with SLO.
//!
//! The body names one `container/object` or `container` per line, URL-encoded. Every
//! name is deleted as the caller, through the gateway itself, objects before
//! containers; the answer is a 200 whose body carries the real outcome (`Response
//! Status`, `Number Deleted`, `Number Not Found`, `Errors`) as text, JSON or XML by
//! `Accept`. A space goes out every few seconds while a long request works.

use crate::response;
use crate::{hget, SwiftGateway};
use axum::body::Body;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use futures::StreamExt;
use serde_json::Value;
use std::sync::Arc;

/// Most names one request may delete.
pub const MAX_DELETES_PER_REQUEST: usize = 10_000;
/// Failures after which a bulk delete stops.
pub const MAX_FAILED_DELETES: usize = 1000;
/// Longest name line taken (twice Swift's longest container/object path).
const MAX_PATH_BYTES: usize =
    2 * (crate::endpoint::OBJECT_NAME_BYTES_MAX + crate::endpoint::CONTAINER_NAME_BYTES_MAX + 2);
/// Deletes in flight at once.
const DELETE_CONCURRENCY: usize = 4;

/// The offer an `Accept` header prefers (the first offer when there is no header;
/// None when nothing offered is acceptable or the header does not parse).
pub fn best_match<'a>(accept: Option<&str>, offers: &[&'a str]) -> Option<&'a str> {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return offers.first().copied();
    };
    let mut ranges: Vec<(String, f32)> = Vec::new();
    for part in accept.split(',') {
        let mut bits = part.split(';');
        let media = bits.next().unwrap_or("").trim().to_ascii_lowercase();
        if media.is_empty() {
            continue;
        }
        if !media.contains('/') {
            return None;
        }
        let mut q = 1.0f32;
        for p in bits {
            if let Some(v) = p.trim().strip_prefix("q=") {
                q = v.trim().parse().ok()?;
            }
        }
        ranges.push((media, q));
    }
    // Highest quality first; among equals, header order.
    ranges.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal));
    for (media, q) in &ranges {
        if *q <= 0.0 {
            continue;
        }
        let (t, s) = media.split_once('/').unwrap_or((media, "*"));
        for offer in offers {
            let (ot, os) = offer.split_once('/').unwrap_or((offer, ""));
            if (t == "*" || t == ot) && (s == "*" || s == os) {
                return Some(offer);
            }
        }
    }
    None
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A bulk-style result body: `fields` then `Errors` as (name, status) pairs.
pub fn result_body(
    format: &str,
    fields: &[(String, Value)],
    errors: &[(String, String)],
    root: &str,
) -> Vec<u8> {
    if format == "application/json" {
        let mut m = serde_json::Map::new();
        for (k, v) in fields {
            m.insert(k.clone(), v.clone());
        }
        let errs: Vec<Value> = errors
            .iter()
            .map(|(n, s)| Value::Array(vec![n.clone().into(), s.clone().into()]))
            .collect();
        m.insert("Errors".into(), Value::Array(errs));
        return Value::Object(m).to_string().into_bytes();
    }
    let mut sorted: Vec<&(String, Value)> = fields.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = String::new();
    if format.ends_with("/xml") {
        out.push_str(&format!("<{root}>\n"));
        for (k, v) in sorted {
            let key = k.replace(' ', "_").to_lowercase();
            out.push_str(&format!("<{key}>{}</{key}>\n", xml_escape(&plain(v))));
        }
        out.push_str("<errors>\n");
        for (n, s) in errors {
            out.push_str(&format!(
                "<object><name>{}</name><status>{}</status></object>\n",
                xml_escape(n),
                xml_escape(s)
            ));
        }
        out.push_str(&format!("</errors>\n</{root}>\n"));
        return out.into_bytes();
    }
    for (k, v) in sorted {
        out.push_str(&format!("{k}: {}\n", plain(v)));
    }
    out.push_str("Errors:\n");
    for (n, s) in errors {
        out.push_str(&format!("{n}, {s}\n"));
    }
    out.into_bytes()
}

/// One name to delete, `/container/object` or `/container` under the account, or the
/// error found while listing it (code, message).
pub struct Target {
    pub name: String,
    pub error: Option<(u16, String)>,
}

impl Target {
    pub fn named(name: String) -> Target {
        Target { name, error: None }
    }
}

/// The names of a bulk-delete body.
fn names_of(body: &[u8]) -> Result<Vec<Target>, (StatusCode, String)> {
    let mut out = Vec::new();
    for line in body.split(|b| *b == b'\n') {
        if line.len() > MAX_PATH_BYTES {
            return Err((StatusCode::BAD_REQUEST, "Invalid File Name".into()));
        }
        let raw = String::from_utf8_lossy(line);
        let raw = raw.trim();
        if raw.is_empty() {
            continue;
        }
        let name = percent_encoding::percent_decode_str(raw)
            .decode_utf8_lossy()
            .to_string();
        out.push(Target::named(name));
        if out.len() > MAX_DELETES_PER_REQUEST {
            return Err((
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("Maximum Bulk Deletes: {MAX_DELETES_PER_REQUEST} per request"),
            ));
        }
    }
    Ok(out)
}

/// `?bulk-delete` on an account.
pub async fn bulk_delete(
    gw: &Arc<SwiftGateway>,
    account: &str,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let out_type = best_match(hget(headers, "accept"), &crate::slo::ACCEPTABLE);
    if let Some(ct) = hget(headers, "content-type") {
        if !ct.trim().is_empty() && !ct.trim_start().starts_with("text/plain") {
            return response::text(StatusCode::NOT_ACCEPTABLE, "Not Acceptable");
        }
    }
    if !headers.contains_key("content-length") && !headers.contains_key("transfer-encoding") {
        return response::text(StatusCode::LENGTH_REQUIRED, "Length Required");
    }
    let limit = (MAX_DELETES_PER_REQUEST + 1) * (MAX_PATH_BYTES + 1);
    let names = match axum::body::to_bytes(body, limit).await {
        Ok(b) => names_of(&b),
        Err(_) => Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Maximum Bulk Deletes: {MAX_DELETES_PER_REQUEST} per request"),
        )),
    };
    match names {
        Ok(targets) => delete_response(gw, account, headers, targets, out_type).await,
        Err((status, msg)) => {
            let format = out_type.unwrap_or("text/plain");
            let fields = vec![
                (
                    "Response Status".into(),
                    crate::slo::status_line(status).into(),
                ),
                ("Response Body".into(), msg.into()),
                ("Number Deleted".into(), 0.into()),
                ("Number Not Found".into(), 0.into()),
            ];
            let mut h = HeaderMap::new();
            response::put_str(&mut h, "content-type", format);
            response::with_body(
                StatusCode::OK,
                h,
                Body::from(result_body(format, &fields, &[], "delete")),
            )
        }
    }
}

/// Delete `targets` (objects first, then containers) and answer with the tally.
pub async fn delete_response(
    gw: &Arc<SwiftGateway>,
    account: &str,
    headers: &HeaderMap,
    targets: Vec<Target>,
    out_type: Option<&str>,
) -> Response {
    let Some(format) = out_type else {
        return response::text(StatusCode::NOT_ACCEPTABLE, "Not Acceptable");
    };
    let gw = gw.clone();
    let account = account.to_string();
    let auth = caller_auth(headers);
    let work = async move { run_deletes(&gw, &account, &auth, targets).await };
    streamed_result(format, StatusCode::OK, "delete", work).await
}

/// The caller's token headers, for subrequests made on its behalf.
fn caller_auth(headers: &HeaderMap) -> HeaderMap {
    let mut auth = HeaderMap::new();
    for name in ["x-auth-token", "x-storage-token"] {
        if let Some(v) = headers.get(name) {
            auth.insert(name, v.clone());
        }
    }
    auth
}

/// The outcome of a bulk operation: fields and (name, status) errors.
pub type Outcome = (Vec<(String, Value)>, Vec<(String, String)>);

/// Runs `work` and answers with its outcome as a `root` result body. The answer starts
/// when the work is done or the first heartbeat is due (a space, or the XML
/// declaration, every few seconds), so a quick request is complete by the time its
/// status arrives.
pub async fn streamed_result<F>(
    format: &str,
    status: StatusCode,
    root: &'static str,
    work: F,
) -> Response
where
    F: std::future::Future<Output = Outcome> + Send + 'static,
{
    let format = format.to_string();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    let first = if format.ends_with("/xml") {
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
    } else {
        " "
    };
    let body_format = format.clone();
    tokio::spawn(async move {
        tokio::pin!(work);
        let mut separator = "";
        let mut beat = first;
        let (fields, errors) = loop {
            tokio::select! {
                r = &mut work => break r,
                _ = tokio::time::sleep(std::time::Duration::from_secs(crate::slo::YIELD_FREQUENCY_SECS)) => {
                    let _ = tx.send(Ok(bytes::Bytes::from(beat))).await;
                    beat = " ";
                    separator = "\r\n\r\n";
                }
            }
        };
        let mut out = separator.as_bytes().to_vec();
        out.extend(result_body(&body_format, &fields, &errors, root));
        let _ = tx.send(Ok(bytes::Bytes::from(out))).await;
    });
    let first = rx.recv().await;
    let rest = tokio_stream::wrappers::ReceiverStream::new(rx);
    let stream = futures::stream::iter(first).chain(rest);
    let mut h = HeaderMap::new();
    response::put_str(&mut h, "content-type", &format);
    response::with_body(status, h, Body::from_stream(stream))
}

async fn run_deletes(
    gw: &Arc<SwiftGateway>,
    account: &str,
    auth: &HeaderMap,
    targets: Vec<Target>,
) -> Outcome {
    let mut deleted = 0u64;
    let mut not_found = 0u64;
    let mut failed: Vec<(String, String)> = Vec::new();
    let mut server_error = false;
    let mut aborted = false;
    let (objects, containers): (Vec<Target>, Vec<Target>) = targets
        .into_iter()
        .filter(|t| !t.name.trim_matches('/').is_empty())
        .partition(|t| t.name.trim_matches('/').contains('/'));
    'phases: for phase in [objects, containers] {
        let mut todo = Vec::new();
        for t in phase {
            match t.error {
                Some((404, _)) => not_found += 1,
                Some((_, msg)) => failed.push((crate::quote_path(&t.name), msg)),
                None if t.name.contains('\0') => failed.push((
                    crate::quote_path(&t.name),
                    crate::slo::status_line(StatusCode::PRECONDITION_FAILED),
                )),
                None => todo.push(t.name),
            }
        }
        let mut results = futures::stream::iter(todo.into_iter().map(|name| {
            let uri = format!(
                "/v1/{}/{}",
                crate::quote_path(account),
                crate::quote_path(name.trim_start_matches('/'))
            );
            async move {
                let r = crate::subrequest(gw, Method::DELETE, &uri, auth, Body::empty()).await;
                (name, r.status())
            }
        }))
        .buffered(DELETE_CONCURRENCY);
        while let Some((name, status)) = results.next().await {
            if status.is_success() {
                deleted += 1;
            } else if status == StatusCode::NOT_FOUND {
                not_found += 1;
            } else {
                server_error |= status.is_server_error();
                failed.push((crate::quote_path(&name), crate::slo::status_line(status)));
            }
            if failed.len() >= MAX_FAILED_DELETES {
                aborted = true;
                break 'phases;
            }
        }
    }
    let (status, body) = if aborted {
        (StatusCode::BAD_REQUEST, "Max delete failures exceeded")
    } else if !failed.is_empty() {
        let s = if server_error {
            StatusCode::BAD_GATEWAY
        } else {
            StatusCode::BAD_REQUEST
        };
        (s, "")
    } else if deleted == 0 && not_found == 0 {
        (StatusCode::BAD_REQUEST, "Invalid bulk delete.")
    } else {
        (StatusCode::OK, "")
    };
    if !failed.is_empty() {
        tracing::info!(account, failed = failed.len(), "bulk delete with failures");
    }
    let fields = vec![
        (
            "Response Status".into(),
            crate::slo::status_line(status).into(),
        ),
        ("Response Body".into(), body.into()),
        ("Number Deleted".into(), deleted.into()),
        ("Number Not Found".into(), not_found.into()),
    ];
    (fields, failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation() {
        let o = crate::slo::ACCEPTABLE;
        assert_eq!(best_match(None, &o), Some("text/plain"));
        assert_eq!(
            best_match(Some("application/json"), &o),
            Some("application/json")
        );
        assert_eq!(
            best_match(Some("text/xml;q=0.5, application/json;q=0.9"), &o),
            Some("application/json")
        );
        assert_eq!(best_match(Some("*/*"), &o), Some("text/plain"));
        assert_eq!(best_match(Some("image/png"), &o), None);
        assert_eq!(best_match(Some("garbage"), &o), None);
    }

    #[test]
    fn names_are_decoded_and_bounded() {
        let t = names_of(b"c/o%20x\n\n  c2 \n").unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].name, "c/o x");
        assert_eq!(t[1].name, "c2");
        let long = vec![b'a'; MAX_PATH_BYTES + 1];
        assert!(names_of(&long).is_err());
    }

    #[test]
    fn result_bodies() {
        let f = vec![("Number Deleted".to_string(), Value::from(2))];
        let e = vec![("/c/o".to_string(), "409 Conflict".to_string())];
        let text = String::from_utf8(result_body("text/plain", &f, &e, "delete")).unwrap();
        assert_eq!(text, "Number Deleted: 2\nErrors:\n/c/o, 409 Conflict\n");
        let json: Value =
            serde_json::from_slice(&result_body("application/json", &f, &e, "delete")).unwrap();
        assert_eq!(json["Number Deleted"], 2);
        assert_eq!(json["Errors"][0][1], "409 Conflict");
        let xml = String::from_utf8(result_body("application/xml", &f, &e, "delete")).unwrap();
        assert!(xml.starts_with("<delete>\n<number_deleted>2</number_deleted>"));
    }
}
