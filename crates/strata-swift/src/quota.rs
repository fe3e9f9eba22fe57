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

pub fn is_reseller(ctx: Option<&AuthContext>) -> bool {
    ctx.is_some_and(|c| c.has_role("ResellerAdmin"))
}

/// One account quota: its system metadata key and the header that sets and shows it.
struct AccountQuota {
    key: &'static str,
    header: &'static str,
    /// The older header that sets it too (`X-Account-Meta-Quota-Bytes`).
    legacy: Option<&'static str>,
    /// The message of a refused upload.
    refusal: &'static str,
}

/// The account quotas: global, and for the one storage policy (index 0, `Policy-0`).
const ACCOUNT_QUOTAS: [AccountQuota; 4] = [
    AccountQuota {
        key: "quota-bytes",
        header: "x-account-quota-bytes",
        legacy: Some("x-account-meta-quota-bytes"),
        refusal: "Upload exceeds quota.",
    },
    AccountQuota {
        key: "quota-count",
        header: "x-account-quota-count",
        legacy: None,
        refusal: "Upload exceeds quota.",
    },
    AccountQuota {
        key: "quota-bytes-policy-0",
        header: "x-account-quota-bytes-policy-policy-0",
        legacy: None,
        refusal: "Upload exceeds policy quota.",
    },
    AccountQuota {
        key: "quota-count-policy-0",
        header: "x-account-quota-count-policy-policy-0",
        legacy: None,
        refusal: "Upload exceeds policy quota.",
    },
];

/// The account quota changes of an account POST or PUT, as system metadata to set and
/// to remove. Non-resellers trying to set or remove any get 403; bad values 400.
pub fn account_changes(
    headers: &HeaderMap,
    ctx: Option<&AuthContext>,
) -> Result<(BTreeMap<String, String>, Vec<String>), Response> {
    let mut set = BTreeMap::new();
    let mut removed = Vec::new();
    let mut asked = false;
    let reseller = is_reseller(ctx);
    let remove_of = |h: &str| format!("x-remove-{}", &h[2..]);
    for q in &ACCOUNT_QUOTAS {
        let mut value = hget(headers, q.header).map(str::to_string);
        if value.is_none() {
            value = q.legacy.and_then(|l| hget(headers, l)).map(str::to_string);
        }
        let remove = headers.contains_key(remove_of(q.header).as_str())
            || q.legacy
                .is_some_and(|l| headers.contains_key(remove_of(l).as_str()));
        if remove {
            value = Some(String::new());
        }
        let Some(v) = value else { continue };
        asked = true;
        let v = v.trim().to_string();
        let key = format!("{SYSMETA_PREFIX}{}", q.key);
        if v.is_empty() {
            removed.push(key);
        } else if v.bytes().all(|b| b.is_ascii_digit()) {
            set.insert(key, v);
        } else if reseller {
            return Err(response::text(StatusCode::BAD_REQUEST, "Bad Request"));
        }
    }
    if asked && !reseller {
        tracing::info!("account quota change refused: not a reseller admin");
        return Err(crate::fault(crate::Fault::Forbidden));
    }
    Ok((set, removed))
}

/// Account metadata split into user metadata and the system headers to show (quotas,
/// and the account ACL, which answers drop for all but owners).
pub fn split_account_meta(
    meta: &BTreeMap<String, String>,
) -> (BTreeMap<String, String>, Vec<(String, String)>) {
    let mut user = BTreeMap::new();
    let mut shown = Vec::new();
    for (k, v) in meta {
        match k.strip_prefix(SYSMETA_PREFIX) {
            Some(crate::account_acl::KEY) => {
                shown.push(("x-account-access-control".to_string(), v.clone()));
            }
            Some(key) => {
                if let Some(q) = ACCOUNT_QUOTAS.iter().find(|q| q.key == key) {
                    let name = q.header.replace("-policy-policy-0", "-policy-Policy-0");
                    shown.push((name, v.clone()));
                }
            }
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
                .usage_of(account, container, &info)
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
    let limits: Vec<(&AccountQuota, u64)> = ACCOUNT_QUOTAS
        .iter()
        .filter_map(|q| limit(&meta, &format!("{SYSMETA_PREFIX}{}", q.key)).map(|l| (q, l)))
        .collect();
    if limits.is_empty() {
        return Ok(());
    }
    if let Some(token) = strata_api::auth_token(headers) {
        if let Ok(ctx) = gw.identity.validate(token).await {
            if is_reseller(Some(&ctx)) {
                return Ok(());
            }
        }
    }
    // One storage policy: the account's usage is the policy's usage.
    let (_, count, bytes) = gw
        .objects
        .account_usage(account)
        .await
        .map_err(object_error)?;
    for (q, l) in limits {
        let over = if q.key.starts_with("quota-bytes") {
            l < bytes.saturating_add(incoming)
        } else {
            l < count + 1
        };
        if over {
            tracing::info!(account, quota = q.key, "upload refused: account quota");
            return Err(response::text(StatusCode::PAYLOAD_TOO_LARGE, q.refusal));
        }
    }
    Ok(())
}
