//! Bulk upload: `PUT ?extract-archive=tar|tar.gz|tar.bz2`.
//!
//! The archive streams through a tar reader on a blocking thread (never whole in
//! memory); each regular file becomes an object PUT through the gateway itself as the
//! caller (so ACLs, quotas and versioning apply), its bytes handed over as they are
//! read. A path's first component is the container (created when missing) unless the
//! URL names one; files at the top level are ignored, as in Swift. The answer is a
//! bulk-style body (`Number Files Created`, `Response Status`, `Errors`) under
//! `<extract>`.

use crate::bulk::{self, Outcome};
use crate::response;
use crate::{hget, SwiftGateway};
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use futures::StreamExt;
use serde_json::Value;
use std::collections::HashSet;
use std::io::Read;
use std::sync::Arc;

/// Most containers one archive may create, and failures before it stops.
pub const MAX_CONTAINERS_PER_EXTRACTION: usize = 10_000;
pub const MAX_FAILED_EXTRACTIONS: usize = 1000;
/// Bytes handed to an object PUT at a time.
const PIECE_BYTES: usize = 256 << 10;

/// The compression `extract-archive=<value>` names; None for a value Swift ignores.
pub fn compression(value: &str) -> Option<&'static str> {
    match value.trim().trim_matches('.').to_ascii_lowercase().as_str() {
        "tar" => Some(""),
        "tar.gz" => Some("gz"),
        "tar.bz2" => Some("bz2"),
        _ => None,
    }
}

/// A pax header naming object metadata (`SCHILY.xattr.user.meta.x` or the libarchive
/// form) as its Swift header.
fn pax_header(key: &str) -> Option<String> {
    let rest = key
        .strip_prefix("SCHILY.xattr.user.")
        .or_else(|| key.strip_prefix("LIBARCHIVE.xattr.user."))?;
    if rest == "mime_type" {
        return Some("content-type".into());
    }
    rest.strip_prefix("meta.")
        .filter(|m| !m.is_empty())
        .map(|m| format!("x-object-meta-{m}"))
}

/// `PUT <account>[/<base>]?extract-archive=...`.
pub async fn extract_archive(
    gw: &Arc<SwiftGateway>,
    account: &str,
    base: &str,
    compression: &'static str,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let Some(format) = bulk::best_match(hget(headers, "accept"), &crate::slo::ACCEPTABLE) else {
        return response::text(StatusCode::NOT_ACCEPTABLE, "Not Acceptable");
    };
    if !headers.contains_key("content-length") && !headers.contains_key("transfer-encoding") {
        return response::text(StatusCode::LENGTH_REQUIRED, "Length Required");
    }
    let mut put_headers = HeaderMap::new();
    for (k, v) in headers {
        let n = k.as_str();
        if matches!(
            n,
            "x-auth-token" | "x-storage-token" | "x-delete-at" | "x-delete-after"
        ) || n.starts_with("x-object-meta-")
        {
            put_headers.insert(k.clone(), v.clone());
        }
    }
    let job = Extraction {
        gw: gw.clone(),
        account: account.to_string(),
        base: base.trim_matches('/').to_string(),
        headers: put_headers,
        rt: tokio::runtime::Handle::current(),
    };
    let stream = body
        .into_data_stream()
        .map(|r| r.map_err(std::io::Error::other));
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
    let work = async move {
        match tokio::task::spawn_blocking(move || job.run(reader, compression)).await {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::error!(error = %e, "archive extraction failed");
                (fields("500 Internal Error", "", 0), Vec::new())
            }
        }
    };
    bulk::streamed_result(format, StatusCode::OK, "extract", work).await
}

fn fields(status: &str, body: &str, created: u64) -> Vec<(String, Value)> {
    vec![
        ("Response Status".into(), status.into()),
        ("Response Body".into(), body.into()),
        ("Number Files Created".into(), created.into()),
    ]
}

struct Extraction {
    gw: Arc<SwiftGateway>,
    account: String,
    base: String,
    headers: HeaderMap,
    rt: tokio::runtime::Handle,
}

/// Why an extraction stopped early.
enum Stop {
    Tar(String),
    Unauthorized,
    TooManyContainers,
}

impl Extraction {
    fn run(self, reader: impl Read + 'static, compression: &str) -> Outcome {
        let reader: Box<dyn Read> = match compression {
            "gz" => Box::new(flate2::read::GzDecoder::new(reader)),
            "bz2" => Box::new(bzip2::read::BzDecoder::new(reader)),
            _ => Box::new(reader),
        };
        let mut created = 0u64;
        let mut failed: Vec<(String, String)> = Vec::new();
        let mut server_error = false;
        let stop = self.entries(reader, &mut created, &mut failed, &mut server_error);
        let (status, body) = match stop {
            Err(Stop::Tar(e)) => {
                tracing::info!(account = %self.account, error = %e, "invalid archive");
                (
                    "400 Bad Request".to_string(),
                    format!("Invalid Tar File: {e}"),
                )
            }
            Err(Stop::Unauthorized) => ("401 Unauthorized".to_string(), String::new()),
            Err(Stop::TooManyContainers) => (
                "400 Bad Request".to_string(),
                format!("More than {MAX_CONTAINERS_PER_EXTRACTION} containers to create from tar."),
            ),
            Ok(()) if !failed.is_empty() => {
                let s = if server_error {
                    "502 Bad Gateway"
                } else {
                    "400 Bad Request"
                };
                (s.to_string(), String::new())
            }
            Ok(()) if created == 0 => (
                "400 Bad Request".to_string(),
                "Invalid Tar File: No Valid Files".to_string(),
            ),
            Ok(()) => ("201 Created".to_string(), String::new()),
        };
        (fields(&status, &body, created), failed)
    }

    fn entries(
        &self,
        reader: Box<dyn Read>,
        created: &mut u64,
        failed: &mut Vec<(String, String)>,
        server_error: &mut bool,
    ) -> Result<(), Stop> {
        let mut archive = tar::Archive::new(reader);
        let entries = archive.entries().map_err(|e| Stop::Tar(e.to_string()))?;
        let mut containers: HashSet<String> = HashSet::new();
        let mut containers_created = 0usize;
        for entry in entries {
            if failed.len() >= MAX_FAILED_EXTRACTIONS {
                break;
            }
            let mut entry = entry.map_err(|e| Stop::Tar(e.to_string()))?;
            let kind = entry.header().entry_type();
            if !(kind.is_file() || kind == tar::EntryType::Continuous) {
                continue;
            }
            let raw = entry.path_bytes().into_owned();
            let name = String::from_utf8_lossy(&raw).to_string();
            let mut path = name
                .strip_prefix("./")
                .unwrap_or(&name)
                .trim_start_matches('/')
                .to_string();
            if !self.base.is_empty() {
                path = format!("{}/{path}", self.base);
            }
            let Some((container, object)) = path.split_once('/') else {
                continue; // a file at the top level: no container to put it in
            };
            let quoted = crate::quote_path(&path);
            if std::str::from_utf8(&raw).is_err() || path.contains('\0') {
                failed.push((quoted, "412 Precondition Failed".into()));
                continue;
            }
            let size = entry.size();
            if size > crate::OBJECT_BYTES_MAX {
                failed.push((quoted, "413 Request Entity Too Large".into()));
                continue;
            }
            let mut container_failure = None;
            if !containers.contains(container) {
                match self.rt.block_on(self.ensure_container(container)) {
                    Ok(true) => {
                        containers_created += 1;
                        if containers_created > MAX_CONTAINERS_PER_EXTRACTION {
                            return Err(Stop::TooManyContainers);
                        }
                    }
                    Ok(false) => {}
                    Err(StatusCode::UNAUTHORIZED) => return Err(Stop::Unauthorized),
                    Err(s) => {
                        container_failure = Some((
                            crate::quote_path(&format!("/v1/{}/{container}", self.account)),
                            crate::slo::status_line(s),
                        ))
                    }
                }
            }
            let mut h = self.headers.clone();
            if let Ok(Some(pax)) = entry.pax_extensions() {
                for ext in pax.flatten() {
                    if let (Ok(k), Ok(v)) = (ext.key(), ext.value()) {
                        if let (Some(name), Ok(v)) = (pax_header(k), HeaderValue::from_str(v)) {
                            if let Ok(n) = axum::http::HeaderName::from_bytes(name.as_bytes()) {
                                h.insert(n, v);
                            }
                        }
                    }
                }
            }
            response::put_num(&mut h, "content-length", size);
            let status = self.put_entry(container, object, h, &mut entry)?;
            containers.insert(container.to_string());
            if status.is_success() {
                *created += 1;
                continue;
            }
            if let Some(f) = container_failure {
                failed.push(f);
            }
            if status == StatusCode::UNAUTHORIZED {
                failed.push((quoted, "401 Unauthorized".into()));
                return Err(Stop::Unauthorized);
            }
            *server_error |= status.is_server_error();
            failed.push((quoted, crate::slo::status_line(status)));
        }
        Ok(())
    }

    /// HEAD the container as the caller and create it when missing; true if created.
    async fn ensure_container(&self, container: &str) -> Result<bool, StatusCode> {
        let uri = format!(
            "/v1/{}/{}",
            crate::quote_path(&self.account),
            crate::quote_path(container)
        );
        let head =
            crate::subrequest(&self.gw, Method::HEAD, &uri, &self.headers, Body::empty()).await;
        if head.status().is_success() {
            return Ok(false);
        }
        if head.status() != StatusCode::NOT_FOUND {
            return Err(head.status());
        }
        let put =
            crate::subrequest(&self.gw, Method::PUT, &uri, &self.headers, Body::empty()).await;
        if put.status().is_success() {
            Ok(true)
        } else {
            Err(put.status())
        }
    }

    /// PUT one entry's bytes as they are read from the archive.
    fn put_entry(
        &self,
        container: &str,
        object: &str,
        headers: HeaderMap,
        entry: &mut impl Read,
    ) -> Result<StatusCode, Stop> {
        let uri = format!(
            "/v1/{}/{}/{}",
            crate::quote_path(&self.account),
            crate::quote_path(container),
            crate::quote_path(object)
        );
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
        let gw = self.gw.clone();
        let put = self.rt.spawn(async move {
            let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
            crate::subrequest_with(&gw, Method::PUT, &uri, headers, body)
                .await
                .status()
        });
        let mut tar_error = None;
        loop {
            let mut buf = vec![0u8; PIECE_BYTES];
            match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.blocking_send(Ok(bytes::Bytes::from(buf))).is_err() {
                        break; // the PUT has answered already
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                    tar_error = Some(e.to_string());
                    break;
                }
            }
        }
        drop(tx);
        let status = self
            .rt
            .block_on(put)
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        match tar_error {
            Some(e) => Err(Stop::Tar(e)),
            None => Ok(status),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_kinds_and_pax_names() {
        assert_eq!(compression("tar"), Some(""));
        assert_eq!(compression(".tar.gz"), Some("gz"));
        assert_eq!(compression("TAR.BZ2"), Some("bz2"));
        assert_eq!(compression("zip"), None);
        assert_eq!(
            pax_header("SCHILY.xattr.user.meta.color").as_deref(),
            Some("x-object-meta-color")
        );
        assert_eq!(
            pax_header("LIBARCHIVE.xattr.user.mime_type").as_deref(),
            Some("content-type")
        );
        assert_eq!(pax_header("SCHILY.xattr.security.selinux"), None);
        assert_eq!(pax_header("SCHILY.xattr.user.meta."), None);
    }
}
