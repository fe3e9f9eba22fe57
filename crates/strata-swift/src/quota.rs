//! Account and container quotas, as Swift's `account_quotas` and `container_quotas`.
//!
//! A container's owner sets `X-Container-Meta-Quota-Bytes`/`-Count` (plain metadata,
//! digits only). An account's quotas (`X-Account-Quota-Bytes`/`-Count`, or the legacy
//! `X-Account-Meta-Quota-Bytes`) are set by a reseller admin only and kept in account
//! system metadata that users can neither see as metadata nor change. An object PUT or
//! copy that would take usage past a quota gets 413 "Upload exceeds quota."; reseller
//! admins are not held to account quotas.

use crate::response;
use crate::{hget, object_error, SwiftGateway};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use std::collections::BTreeMap;
use strata_api::AuthContext;

/// Account metadata keys under this prefix are system metadata: header names cannot
/// hold ':', so no `X-Account-Meta-*` header can reach them.
pub const SYSMETA_PREFIX: &str = "sysmeta:";
const QUOTA_KINDS: [&str; 2] = ["quota-bytes", "quota-count"];

pub fn is_reseller(ctx: Option<&AuthContext>) -> bool {
    ctx.is_some_and(|c| c.has_role("ResellerAdmin"))
}

/// The account quota changes of an account POST or PUT, as system metadata to set and
/// to remove. Non-resellers trying to set any get 403; bad values 400.
pub fn account_changes(
    headers: &HeaderMap,
    ctx: Option<&AuthContext>,
) -> Result<(BTreeMap<String, String>, Vec<String>), Response> {
    let mut set = BTreeMap::new();
    let mut removed = Vec::new();
    let mut asked = false;
    for kind in QUOTA_KINDS {
        let title = kind.trim_start_matches("quota-");
        let mut value = hget(headers, &format!("x-account-quota-{title}")).map(str::to_string);
        if value.is_none() && kind == "quota-bytes" {
            value = hget(headers, "x-account-meta-quota-bytes").map(str::to_string);
        }
        let remove = headers.contains_key(format!("x-remove-account-quota-{title}").as_str())
            || (kind == "quota-bytes" && headers.contains_key("x-remove-account-meta-quota-bytes"));
        if remove {
            value = Some(String::new());
        }
        let Some(v) = value else { continue };
        asked = true;
        let v = v.trim().to_string();
        if v.is_empty() {
            removed.push(format!("{SYSMETA_PREFIX}{kind}"));
        } else if v.bytes().all(|b| b.is_ascii_digit()) {
            set.insert(format!("{SYSMETA_PREFIX}{kind}"), v);
        } else if is_reseller(ctx) {
            return Err(response::text(StatusCode::BAD_REQUEST, "Bad Request"));
        }
    }
    if asked && !is_reseller(ctx) {
        tracing::info!("account quota change refused: not a reseller admin");
        return Err(crate::fault(crate::Fault::Forbidden));
    }
    Ok((set, removed))
}

/// Account metadata split into user metadata and the quota headers to show.
pub fn split_account_meta(
    meta: &BTreeMap<String, String>,
) -> (BTreeMap<String, String>, Vec<(String, String)>) {
    let mut user = BTreeMap::new();
    let mut shown = Vec::new();
    for (k, v) in meta {
        match k.strip_prefix(SYSMETA_PREFIX) {
            Some(kind) => shown.push((format!("x-account-{kind}"), v.clone())),
            None => {
                user.insert(k.clone(), v.clone());
            }
        }
    }
    (user, shown)
}

/// Container quota values on a container PUT/POST must be digits.
pub fn check_container_headers(headers: &HeaderMap) -> Result<(), Response> {
    for (name, what) in [
        ("x-container-meta-quota-bytes", "bytes"),
        ("x-container-meta-quota-count", "count"),
    ] {
        if let Some(v) = hget(headers, name) {
            if !v.is_empty() && !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(response::text(
                    StatusCode::BAD_REQUEST,
                    &format!("Invalid {what} quota."),
                ));
            }
        }
    }
    Ok(())
}

fn exceeded() -> Response {
    response::text(StatusCode::PAYLOAD_TOO_LARGE, "Upload exceeds quota.")
}

fn limit(meta: &BTreeMap<String, String>, key: &str) -> Option<u64> {
    meta.get(key).and_then(|v| v.parse().ok())
}

/// Refuse an upload of `incoming` bytes that would take the container or the account
/// past a quota (each new object counts one, as in Swift).
pub async fn check_upload(
    gw: &SwiftGateway,
    headers: &HeaderMap,
    account: &str,
    container: &str,
    incoming: u64,
) -> Result<(), Response> {
    if let Ok(info) = gw.objects.container(account, container).await {
        let bytes_quota = limit(&info.meta, "quota-bytes");
        let count_quota = limit(&info.meta, "quota-count");
        if bytes_quota.is_some() || count_quota.is_some() {
            let (count, bytes) = gw
                .objects
                .container_usage(account, container)
                .await
                .map_err(object_error)?;
            if bytes_quota.is_some_and(|q| q < bytes.saturating_add(incoming))
                || count_quota.is_some_and(|q| q < count + 1)
            {
                tracing::info!(account, container, "upload refused: container quota");
                return Err(exceeded());
            }
        }
    }
    let meta = gw
        .objects
        .account_meta(account)
        .await
        .map_err(object_error)?;
    let bytes_quota = limit(&meta, &format!("{SYSMETA_PREFIX}quota-bytes"));
    let count_quota = limit(&meta, &format!("{SYSMETA_PREFIX}quota-count"));
    if bytes_quota.is_none() && count_quota.is_none() {
        return Ok(());
    }
    if let Some(token) = strata_api::auth_token(headers) {
        if let Ok(ctx) = gw.identity.validate(token).await {
            if is_reseller(Some(&ctx)) {
                return Ok(());
            }
        }
    }
    let (_, count, bytes) = gw
        .objects
        .account_usage(account)
        .await
        .map_err(object_error)?;
    if bytes_quota.is_some_and(|q| q < bytes.saturating_add(incoming))
        || count_quota.is_some_and(|q| q < count + 1)
    {
        tracing::info!(account, "upload refused: account quota");
        return Err(exceeded());
    }
    Ok(())
}
