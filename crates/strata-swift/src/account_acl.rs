//! Account ACLs (`X-Account-Access-Control`), as TempAuth has them.
//!
//! A JSON object of `admin`, `read-write` and `read-only` to lists of grantees, kept
//! in account system metadata (`sysmeta:core-access-control`) and shown only to the
//! account's owners. A grantee names a project (`test`, or its id) or one user of a
//! project (`test:tester`, or `<project id>:<user id>`). `admin` makes the caller an
//! owner of the account; `read-write` allows everything on containers and objects and
//! reads of the account; `read-only` allows reads.

use crate::quota::SYSMETA_PREFIX;
use crate::{object_error, SwiftGateway};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use std::collections::BTreeMap;
use strata_api::AuthContext;

pub const KEY: &str = "core-access-control";
const LEVELS: [&str; 3] = ["admin", "read-write", "read-only"];

/// What an account ACL grants a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    None,
    ReadOnly,
    ReadWrite,
    Admin,
}

/// Check a header value; the stored form (compact, sorted JSON; empty when it grants
/// nothing) or the 400 Swift answers.
pub fn parse(value: &str) -> Result<String, Response> {
    let refuse = |why: String| {
        tracing::info!(%why, "invalid X-Account-Access-Control");
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=UTF-8"),
        );
        crate::response::with_body(
            StatusCode::BAD_REQUEST,
            h,
            axum::body::Body::from(format!(
                "X-Account-Access-Control invalid: {why}\n\nInput: {value}\n"
            )),
        )
    };
    if value.trim().is_empty() {
        return Ok(String::new());
    }
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(value)
    else {
        return Err(refuse(format!("Syntax error in input ('{value}')")));
    };
    let mut out = BTreeMap::new();
    for (k, v) in &map {
        if !LEVELS.contains(&k.as_str()) {
            return Err(refuse(format!(
                "Key {} not recognized",
                serde_json::Value::from(k.as_str())
            )));
        }
        let Some(list) = v.as_array() else {
            return Err(refuse(format!(
                "Value for key {} must be a list",
                serde_json::Value::from(k.as_str())
            )));
        };
        let mut names = Vec::new();
        for g in list {
            let Some(g) = g.as_str() else {
                return Err(refuse(format!(
                    "Elements of {} list must be strings",
                    serde_json::Value::from(k.as_str())
                )));
            };
            names.push(g.to_string());
        }
        if !names.is_empty() {
            out.insert(k.clone(), names);
        }
    }
    if out.is_empty() {
        return Ok(String::new());
    }
    Ok(serde_json::to_string(&out).unwrap_or_default())
}

/// The names a caller is known by, as TempAuth's user groups.
fn groups(ctx: &AuthContext) -> Vec<String> {
    let mut g = Vec::new();
    if !ctx.project_id.is_empty() {
        g.push(ctx.project_id.clone());
        g.push(format!("AUTH_{}", ctx.project_id));
        g.push(format!("{}:{}", ctx.project_id, ctx.user_id));
        g.push(format!("{}:{}", ctx.project_id, ctx.user_name));
    }
    if !ctx.project_name.is_empty() {
        g.push(ctx.project_name.clone());
        g.push(format!("{}:{}", ctx.project_name, ctx.user_name));
        g.push(format!("{}:{}", ctx.project_name, ctx.user_id));
    }
    g
}

/// What the stored ACL of `meta` grants `ctx`.
pub fn level_in(meta: &BTreeMap<String, String>, ctx: &AuthContext) -> Level {
    let Some(stored) = meta.get(&format!("{SYSMETA_PREFIX}{KEY}")) else {
        return Level::None;
    };
    let Ok(acl) = serde_json::from_str::<BTreeMap<String, Vec<String>>>(stored) else {
        tracing::warn!("unreadable account ACL in account metadata");
        return Level::None;
    };
    let mine = groups(ctx);
    let has = |level: &str| {
        acl.get(level)
            .is_some_and(|l| l.iter().any(|g| mine.contains(g)))
    };
    if has("admin") {
        Level::Admin
    } else if has("read-write") {
        Level::ReadWrite
    } else if has("read-only") {
        Level::ReadOnly
    } else {
        Level::None
    }
}

/// What the account's ACL grants `ctx`.
pub async fn level(gw: &SwiftGateway, ctx: Option<&AuthContext>, account: &str) -> Level {
    let Some(ctx) = ctx else {
        return Level::None;
    };
    match gw.objects.account_meta(account).await.map_err(object_error) {
        Ok(meta) => level_in(&meta, ctx),
        Err(_) => Level::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_checked_and_normalised() {
        assert_eq!(parse("").unwrap(), "");
        assert_eq!(parse("{}").unwrap(), "");
        assert_eq!(
            parse(r#"{"read-only": ["b", "a"], "admin": []}"#).unwrap(),
            r#"{"read-only":["b","a"]}"#
        );
        for bad in [
            "[",
            "[]",
            r#"{"owner":["a"]}"#,
            r#"{"admin":"a"}"#,
            r#"{"admin":[1]}"#,
        ] {
            assert_eq!(
                parse(bad).unwrap_err().status(),
                StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
    }

    #[test]
    fn grantees_match_names_and_ids() {
        let ctx = AuthContext {
            user_id: "u1".into(),
            user_name: "tester3".into(),
            project_id: "p1".into(),
            project_name: "test".into(),
            ..Default::default()
        };
        let meta =
            |acl: &str| BTreeMap::from([(format!("{SYSMETA_PREFIX}{KEY}"), acl.to_string())]);
        assert_eq!(
            level_in(&meta(r#"{"read-only":["test:tester3"]}"#), &ctx),
            Level::ReadOnly
        );
        assert_eq!(
            level_in(&meta(r#"{"read-write":["p1:u1"]}"#), &ctx),
            Level::ReadWrite
        );
        assert_eq!(
            level_in(&meta(r#"{"admin":["test"],"read-only":["test"]}"#), &ctx),
            Level::Admin
        );
        assert_eq!(
            level_in(&meta(r#"{"admin":["other:tester3"]}"#), &ctx),
            Level::None
        );
        assert_eq!(level_in(&BTreeMap::new(), &ctx), Level::None);
    }
}
