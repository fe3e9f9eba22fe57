//! Swift's legacy object versioning (`versioned_writes`): a container with
//! `X-Versions-Location` (stack mode) or `X-History-Location` (history mode) keeps every
//! overwritten object in another container of the same account, named
//! `<3 hex digits of the name's byte length><name>/<the old object's timestamp>`.
//!
//! - PUT (plain, COPY or `X-Copy-From`) over an existing object first copies the old one
//!   into the versions container.
//! - DELETE in stack mode copies the newest version back over the object and deletes that
//!   version (delete markers left by history mode are taken off first).
//! - DELETE in history mode copies the current object and then writes a delete marker
//!   (`application/x-deleted;swift_versions_deleted=1`, empty) before deleting.
//!
//! The versions container is written with the gateway's own rights (as Swift's pre-authed
//! subrequests): whoever may write the versioned container may version into it. A missing
//! versions container (or any other client error on the way) answers 412; a server error 503.

use crate::response::{fault, Fault};
use crate::{hget, ObjectRef, SwiftGateway};
use axum::http::HeaderMap;
use axum::response::Response;
use futures::StreamExt;
use std::collections::BTreeMap;
use strata_object::{ObjectError, ObjectInfo, PutOptions};
use strata_types::Timestamp;

/// The stack-mode location header (also stored under this name).
pub const VERSIONS_LOCATION: &str = "x-versions-location";
/// The history-mode location header (also stored under this name).
pub const HISTORY_LOCATION: &str = "x-history-location";
/// The content type of a history-mode delete marker.
pub const DELETE_MARKER_CONTENT_TYPE: &str = "application/x-deleted;swift_versions_deleted=1";

/// Whether a stored container header is one of the two locations.
pub fn is_location(name: &str) -> bool {
    name == VERSIONS_LOCATION || name == HISTORY_LOCATION
}

/// What a container PUT/POST does to the locations, added to the stored headers it sets and
/// removes. One location at a time: setting one drops the other; an empty value or a
/// non-empty `X-Remove-Versions-Location`/`X-Remove-History-Location` drops both; both set
/// in one request is a 400; a value with a `/` is a 412.
pub(crate) fn location_changes(
    headers: &HeaderMap,
    set: &mut BTreeMap<String, String>,
    removed: &mut Vec<String>,
) -> Result<(), Response> {
    let value = |name: &str| -> Result<Option<String>, Response> {
        match headers.get(name) {
            None => Ok(None),
            Some(v) => std::str::from_utf8(v.as_bytes())
                .map(|s| Some(s.trim().to_string()))
                .map_err(|_| {
                    tracing::info!(header = name, "versions location is not UTF-8");
                    crate::bad_request("Versions location must be valid UTF-8")
                }),
        }
    };
    let mut stack = value(VERSIONS_LOCATION)?;
    let mut history = value(HISTORY_LOCATION)?;
    if let (Some(s), Some(h)) = (&stack, &history) {
        if h.is_empty() {
            // An empty history location defers to the versions location.
            history = None;
        } else if !s.is_empty() {
            tracing::info!("container request sets both versions locations");
            return Err(crate::bad_request(&format!(
                "Only one of {VERSIONS_LOCATION} or {HISTORY_LOCATION} may be specified"
            )));
        } else {
            stack = None;
        }
    }
    let nonempty = |name: &str| hget(headers, name).is_some_and(|v| !v.trim().is_empty());
    let mut remove =
        nonempty("x-remove-versions-location") || nonempty("x-remove-history-location");
    let given = match (stack, history) {
        (Some(v), _) => Some((v, VERSIONS_LOCATION, HISTORY_LOCATION)),
        (None, Some(v)) => Some((v, HISTORY_LOCATION, VERSIONS_LOCATION)),
        (None, None) => None,
    };
    if let Some((v, this, other)) = given {
        if v.is_empty() {
            remove = true;
        } else {
            if v.contains('/') {
                tracing::info!(location = %v, "versions location with a slash");
                return Err(crate::response::text(
                    axum::http::StatusCode::PRECONDITION_FAILED,
                    "Container name cannot contain slashes",
                ));
            }
            // Setting wins over removing in the same request.
            remove = false;
            set.insert(this.to_string(), v);
            removed.push(other.to_string());
        }
    }
    if remove {
        set.remove(VERSIONS_LOCATION);
        set.remove(HISTORY_LOCATION);
        removed.push(VERSIONS_LOCATION.to_string());
        removed.push(HISTORY_LOCATION.to_string());
    }
    Ok(())
}

/// A versioned container's settings.
struct Location {
    /// The versions container (same account).
    container: String,
    history: bool,
}

/// The versioning of a container, if it has any.
async fn location(gw: &SwiftGateway, account: &str, container: &str) -> Option<Location> {
    let info = gw.objects.container(account, container).await.ok()?;
    let (raw, history) = match (
        info.headers.get(VERSIONS_LOCATION),
        info.headers.get(HISTORY_LOCATION),
    ) {
        (Some(v), _) => (v, false),
        (None, Some(v)) => (v, true),
        (None, None) => return None,
    };
    // The stored value is as the client sent it: URL-quoted.
    let decoded = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
    let name = decoded.split('/').next().unwrap_or("").to_string();
    if name.is_empty() {
        tracing::warn!(%container, location = %raw, "versions location names no container");
        return None;
    }
    Some(Location {
        container: name,
        history,
    })
}

/// `<len as 3+ hex digits><name>/`: every version of `object` starts with it.
pub fn version_prefix(object: &str) -> String {
    format!("{:03x}{object}/", object.len())
}

/// The name of the version of `object` at `ts` (Swift's internal timestamp form).
pub fn version_name(object: &str, ts: Timestamp) -> String {
    format!("{}{:0>16}", version_prefix(object), ts.to_swift())
}

/// Swift's answer when versioning cannot go on: 412 for a client error (no such
/// container), 503 otherwise.
fn failed(what: &str, e: ObjectError) -> Response {
    match e {
        ObjectError::NoContainer { .. }
        | ObjectError::NoObject
        | ObjectError::EtagMismatch { .. } => {
            tracing::info!(error = %e, step = what, "versioning refused");
            fault(Fault::PreconditionFailed)
        }
        _ => {
            tracing::error!(error = %e, step = what, "versioning failed");
            fault(Fault::ServiceUnavailable)
        }
    }
}

/// Copy an object as stored (no DLO assembly): body, content type, metadata and headers.
async fn copy_raw(
    gw: &SwiftGateway,
    account: &str,
    from: (&str, &str),
    info: &ObjectInfo,
    to: (&str, &str),
) -> Result<ObjectInfo, ObjectError> {
    let body = gw
        .objects
        .read_range(account, from.0, from.1, info, 0, info.size)
        .map(|r| r.map_err(|e| e.to_string()));
    let opts = PutOptions {
        content_type: Some(info.content_type.clone()),
        meta: info.meta.clone(),
        headers: info.headers.clone(),
        expected_etag: None,
    };
    gw.objects
        .put_object(account, to.0, to.1, Box::pin(body), opts)
        .await
}

/// Copy the current object (if there is one) into the versions container.
async fn copy_current(gw: &SwiftGateway, o: ObjectRef<'_>, versions: &str) -> Result<(), Response> {
    let info = match gw
        .objects
        .head_object(o.account, o.container, o.object)
        .await
    {
        Ok(info) => info,
        Err(ObjectError::NoObject | ObjectError::NoContainer { .. }) => return Ok(()),
        Err(e) => return Err(failed("read current", e)),
    };
    let name = version_name(o.object, info.timestamp);
    copy_raw(
        gw,
        o.account,
        (o.container, o.object),
        &info,
        (versions, &name),
    )
    .await
    .map_err(|e| failed("archive current", e))?;
    tracing::debug!(object = o.object, version = %name, %versions, "object version archived");
    Ok(())
}

/// Before an object write (PUT, COPY, `X-Copy-From`): archive what it overwrites.
pub(crate) async fn before_write(gw: &SwiftGateway, o: ObjectRef<'_>) -> Result<(), Response> {
    match location(gw, o.account, o.container).await {
        Some(loc) => copy_current(gw, o, &loc.container).await,
        None => Ok(()),
    }
}

/// Before an object DELETE: what the DELETE should remove instead, as
/// `(container, object)` (None: the object itself). History mode archives the object and
/// writes a delete marker; stack mode restores the newest version and names it.
pub(crate) async fn before_delete(
    gw: &SwiftGateway,
    o: ObjectRef<'_>,
) -> Result<Option<(String, String)>, Response> {
    let Some(loc) = location(gw, o.account, o.container).await else {
        return Ok(None);
    };
    if loc.history {
        copy_current(gw, o, &loc.container).await?;
        let marker = version_name(o.object, gw.objects.now());
        let opts = PutOptions {
            content_type: Some(DELETE_MARKER_CONTENT_TYPE.to_string()),
            ..Default::default()
        };
        let empty = futures::stream::empty::<Result<bytes::Bytes, String>>();
        gw.objects
            .put_object(o.account, &loc.container, &marker, empty, opts)
            .await
            .map_err(|e| failed("write delete marker", e))?;
        return Ok(None);
    }
    let versions = match gw
        .objects
        .list_objects(
            o.account,
            &loc.container,
            &version_prefix(o.object),
            None,
            None,
            usize::MAX,
        )
        .await
    {
        Ok(rows) => rows,
        Err(ObjectError::NoContainer { .. }) => Vec::new(),
        Err(e) => return Err(failed("list versions", e)),
    };
    let vc = loc.container.as_str();
    let mut newest_first = versions.into_iter().rev();
    while let Some((name, entry)) = newest_first.next() {
        if entry.content_type != DELETE_MARKER_CONTENT_TYPE {
            if !restore(gw, o, vc, &name).await? {
                continue;
            }
            return Ok(Some((vc.to_string(), name)));
        }
        // A delete marker on top: if the object was written again since, delete just it.
        match gw
            .objects
            .head_object(o.account, o.container, o.object)
            .await
        {
            Ok(_) => return Ok(None),
            Err(ObjectError::NoObject) => {}
            Err(e) => return Err(failed("read current", e)),
        }
        // Otherwise bring back the newest version under the marker (if not another marker)
        // and take the marker off.
        for (older, older_entry) in newest_first.by_ref() {
            if older_entry.content_type == DELETE_MARKER_CONTENT_TYPE {
                break;
            }
            if !restore(gw, o, vc, &older).await? {
                continue;
            }
            match gw.objects.delete_object(o.account, vc, &older).await {
                Ok(()) | Err(ObjectError::NoObject) => {}
                Err(e) => return Err(failed("delete restored version", e)),
            }
            break;
        }
        return Ok(Some((vc.to_string(), name)));
    }
    Ok(None)
}

/// Copy version `name` back over the object; false when that version is gone.
async fn restore(
    gw: &SwiftGateway,
    o: ObjectRef<'_>,
    versions: &str,
    name: &str,
) -> Result<bool, Response> {
    let info = match gw.objects.head_object(o.account, versions, name).await {
        Ok(info) => info,
        Err(ObjectError::NoObject) => return Ok(false),
        Err(e) => return Err(failed("read version", e)),
    };
    copy_raw(
        gw,
        o.account,
        (versions, name),
        &info,
        (o.container, o.object),
    )
    .await
    .map_err(|e| failed("restore version", e))?;
    tracing::debug!(object = o.object, version = name, "object version restored");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderValue, StatusCode};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn changes(pairs: &[(&str, &str)]) -> Result<(BTreeMap<String, String>, Vec<String>), u16> {
        let (mut set, mut removed) = (BTreeMap::new(), Vec::new());
        location_changes(&headers(pairs), &mut set, &mut removed)
            .map_err(|r| r.status().as_u16())?;
        Ok((set, removed))
    }

    #[test]
    fn names_as_swift_legacy() {
        let ts = Timestamp(1_700_000_000_123_456);
        assert_eq!(version_prefix("obj"), "003obj/");
        assert_eq!(version_name("obj", ts), "003obj/1700000000.12345");
        assert_eq!(version_prefix("\u{e9}"), "002\u{e9}/");
        assert_eq!(
            version_name("o", Timestamp(5_000_000)),
            "001o/0000000005.00000"
        );
        assert_eq!(version_prefix(&"x".repeat(300)).len(), 3 + 300 + 1);
    }

    #[test]
    fn one_location_at_a_time() {
        let (set, removed) = changes(&[(VERSIONS_LOCATION, "v")]).unwrap();
        assert_eq!(set.get(VERSIONS_LOCATION).map(String::as_str), Some("v"));
        assert_eq!(removed, vec![HISTORY_LOCATION.to_string()]);
        let (set, removed) = changes(&[(HISTORY_LOCATION, "h")]).unwrap();
        assert_eq!(set.get(HISTORY_LOCATION).map(String::as_str), Some("h"));
        assert_eq!(removed, vec![VERSIONS_LOCATION.to_string()]);
        assert_eq!(
            changes(&[(VERSIONS_LOCATION, "v"), (HISTORY_LOCATION, "h")]),
            Err(StatusCode::BAD_REQUEST.as_u16())
        );
        let (set, _) = changes(&[(VERSIONS_LOCATION, ""), (HISTORY_LOCATION, "h")]).unwrap();
        assert!(set.contains_key(HISTORY_LOCATION));
        let (set, _) = changes(&[(VERSIONS_LOCATION, "v"), (HISTORY_LOCATION, "")]).unwrap();
        assert!(set.contains_key(VERSIONS_LOCATION));
        assert_eq!(
            changes(&[(VERSIONS_LOCATION, "a/b")]),
            Err(StatusCode::PRECONDITION_FAILED.as_u16())
        );
    }

    #[test]
    fn removing_locations() {
        for pairs in [
            &[(VERSIONS_LOCATION, "")][..],
            &[(HISTORY_LOCATION, "")][..],
            &[("x-remove-versions-location", "x")][..],
            &[("x-remove-history-location", "1")][..],
        ] {
            let (set, removed) = changes(pairs).unwrap();
            assert!(set.is_empty());
            assert!(removed.contains(&VERSIONS_LOCATION.to_string()));
            assert!(removed.contains(&HISTORY_LOCATION.to_string()));
        }
        // An empty remove header removes nothing; setting beats removing.
        assert_eq!(
            changes(&[("x-remove-versions-location", "")]).unwrap(),
            (BTreeMap::new(), vec![])
        );
        let (set, _) = changes(&[
            ("x-remove-versions-location", "v"),
            (VERSIONS_LOCATION, "v"),
        ])
        .unwrap();
        assert!(set.contains_key(VERSIONS_LOCATION));
    }
}
