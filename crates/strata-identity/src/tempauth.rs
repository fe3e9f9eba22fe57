//! Swift TempAuth: `GET /auth/v1.0` (or `/v1.0`) with `X-Auth-User: <project>:<user>` and
//! `X-Auth-Key: <password>`. Issues the same signed tokens as Keystone.

use crate::store::DEFAULT_DOMAIN;
use crate::{now_us, Identity, IdentityError};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::sync::Arc;
use strata_api::{Fault, FaultStyle};

pub(crate) fn router(id: Arc<Identity>) -> Router {
    Router::new()
        .route("/auth/v1.0", get(get_token))
        .route("/auth/v1.0/", get(get_token))
        .route("/v1.0", get(get_token))
        .route("/v1.0/", get(get_token))
        .with_state(id)
}

fn header<'a>(h: &'a HeaderMap, names: &[&str]) -> Option<&'a str> {
    names
        .iter()
        .filter_map(|n| h.get(*n))
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .find(|v| !v.is_empty())
}

fn unauthorized() -> Fault {
    Fault::new(StatusCode::UNAUTHORIZED, "Unauthorized")
        .with_style(FaultStyle::Plain)
        .with_header(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Swift realm=\"unknown\""),
        )
}

async fn get_token(State(id): State<Arc<Identity>>, headers: HeaderMap) -> Response {
    match issue(&id, &headers).await {
        Ok(r) => r,
        Err(IdentityError::Unauthorized(why)) => {
            tracing::debug!(reason = %why, "tempauth refused");
            unauthorized().into_response()
        }
        Err(e) => e.to_fault().with_style(FaultStyle::Plain).into_response(),
    }
}

async fn issue(id: &Identity, headers: &HeaderMap) -> Result<Response, IdentityError> {
    let unauth = |m: &str| IdentityError::Unauthorized(m.to_string());
    let user = header(headers, &["x-auth-user", "x-storage-user"])
        .ok_or_else(|| unauth("no X-Auth-User"))?;
    let key = header(headers, &["x-auth-key", "x-storage-pass"])
        .ok_or_else(|| unauth("no X-Auth-Key"))?;
    let (project_name, user_name) = user
        .split_once(':')
        .ok_or_else(|| unauth("X-Auth-User is not project:user"))?;
    let user = id
        .store
        .user_by_name(DEFAULT_DOMAIN, user_name)
        .await?
        .ok_or_else(|| unauth("unknown user"))?;
    if !id.password_ok(&user, key) {
        return Err(unauth("wrong password"));
    }
    if !user.enabled {
        return Err(unauth("user disabled"));
    }
    let project = id
        .store
        .project_by_name(DEFAULT_DOMAIN, project_name)
        .await?
        .ok_or_else(|| unauth("unknown project"))?;
    let roles = id.roles_for_scope(&user, &project).await?;
    let (token, payload) = id
        .issue(
            &user,
            Some((&project, &roles)),
            vec!["password".into()],
            None,
        )
        .await?;
    let expires_in = ((payload.expires_us - now_us()) / 1_000_000).max(0);
    let url = id.catalog.storage_url(&project.id);
    let mut resp = StatusCode::OK.into_response();
    let h = resp.headers_mut();
    let v = |s: &str| {
        HeaderValue::from_str(s).map_err(|e| IdentityError::Internal(format!("bad header: {e}")))
    };
    h.insert("x-auth-token", v(&token)?);
    h.insert("x-storage-token", v(&token)?);
    h.insert("x-storage-url", v(&url)?);
    h.insert("x-auth-token-expires", v(&expires_in.to_string())?);
    h.insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    Ok(resp)
}
