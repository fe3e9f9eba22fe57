//! Keystone v3: version documents and tokens. Identity management is in `admin`.

use crate::store::*;
use crate::token::TokenPayload;
use crate::{admin, Identity, IdentityError};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use strata_api::{auth_token, Fault, Json};

pub(crate) type Q = Query<HashMap<String, String>>;

pub(crate) fn router(id: Arc<Identity>) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/v3", get(version))
        .route("/v3/", get(version))
        .route(
            "/v3/auth/tokens",
            get(check_token).post(issue_token).delete(revoke_token),
        )
        .route("/v3/auth/projects", get(auth_projects))
        .route("/v3/auth/catalog", get(auth_catalog))
        .merge(admin::routes())
        .fallback(|| async { Fault::not_found("The resource could not be found.") })
        .with_state(id)
}

/// `%Y-%m-%dT%H:%M:%S.%6fZ` of unix microseconds.
pub(crate) fn iso_us(us: i64) -> String {
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(us as i128 * 1000)
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_default()
}

fn version_json(id: &Identity) -> Value {
    json!({
        "id": "v3.14",
        "status": "stable",
        "updated": "2020-04-07T00:00:00Z",
        "links": [{"rel": "self", "href": format!("{}/", id.catalog.identity_v3())}],
        "media-types": [{
            "base": "application/json",
            "type": "application/vnd.openstack.identity-v3+json"
        }]
    })
}

async fn root(State(id): State<Arc<Identity>>) -> Response {
    let body = json!({"versions": {"values": [version_json(&id)]}});
    (StatusCode::MULTIPLE_CHOICES, axum::Json(body)).into_response()
}

async fn version(State(id): State<Arc<Identity>>) -> Response {
    axum::Json(json!({"version": version_json(&id)})).into_response()
}

/// The caller's token payload, from `X-Auth-Token`.
pub(crate) async fn caller(
    id: &Identity,
    headers: &HeaderMap,
) -> Result<TokenPayload, IdentityError> {
    let token =
        auth_token(headers).ok_or_else(|| IdentityError::Unauthorized("no X-Auth-Token".into()))?;
    id.validate_payload(token).await
}

/// Turn an error into its Keystone response, with `WWW-Authenticate` on 401.
pub(crate) fn fault(id: &Identity, e: IdentityError) -> Fault {
    let f = e.to_fault();
    if f.status == StatusCode::UNAUTHORIZED {
        let (n, v) = id.www_authenticate();
        f.with_header(n, v)
    } else {
        f
    }
}

#[derive(Debug, Deserialize)]
struct AuthRequest {
    auth: AuthBody,
}

#[derive(Debug, Deserialize)]
struct AuthBody {
    identity: IdentityBody,
    #[serde(default)]
    scope: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct IdentityBody {
    methods: Vec<String>,
    #[serde(default)]
    password: Option<PasswordBody>,
    #[serde(default)]
    token: Option<TokenBody>,
}

#[derive(Debug, Deserialize)]
struct PasswordBody {
    user: UserRef,
}

#[derive(Debug, Deserialize)]
struct UserRef {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    domain: Option<DomainRef>,
    #[serde(default)]
    password: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct DomainRef {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Deserialize)]
struct TokenBody {
    id: String,
}

#[derive(Debug, Deserialize)]
struct ProjectRef {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    domain: Option<DomainRef>,
}

enum Scope {
    /// No scope given: the user's default project if usable, else unscoped.
    Default,
    Unscoped,
    Project(ProjectRef),
}

fn parse_scope(v: Option<Value>) -> Result<Scope, IdentityError> {
    let bad = |m: &str| IdentityError::BadRequest(m.to_string());
    match v {
        None | Some(Value::Null) => Ok(Scope::Default),
        Some(Value::String(s)) if s == "unscoped" => Ok(Scope::Unscoped),
        Some(Value::Object(mut m)) => {
            if let Some(p) = m.remove("project") {
                let p: ProjectRef = serde_json::from_value(p)
                    .map_err(|e| bad(&format!("Invalid project scope: {e}")))?;
                if p.id.is_none() && p.name.is_none() {
                    return Err(bad("Project scope requires an id or a name."));
                }
                Ok(Scope::Project(p))
            } else if m.contains_key("domain") || m.contains_key("system") {
                Err(IdentityError::Unauthorized(
                    "only project scope is supported".into(),
                ))
            } else {
                Err(bad("Invalid scope."))
            }
        }
        Some(_) => Err(bad("Invalid scope.")),
    }
}

/// Resolve a domain reference; a missing one means the default domain.
pub(crate) async fn resolve_domain(
    id: &Identity,
    d: Option<&DomainRef>,
) -> Result<Option<DomainRec>, IdentityError> {
    match d {
        None => id.store.domain(DEFAULT_DOMAIN).await,
        Some(d) => {
            id.store
                .domain_by_ref(d.id.as_deref(), d.name.as_deref())
                .await
        }
    }
}

async fn password_user(id: &Identity, u: &UserRef) -> Result<UserRec, IdentityError> {
    let unauth = |m: String| IdentityError::Unauthorized(m);
    let user = if let Some(uid) = &u.id {
        id.store.user(uid).await?
    } else if let Some(name) = &u.name {
        let domain = resolve_domain(id, u.domain.as_ref())
            .await?
            .ok_or_else(|| unauth("unknown user domain".into()))?;
        if !domain.enabled {
            return Err(unauth(format!("domain {} disabled", domain.id)));
        }
        id.store.user_by_name(&domain.id, name).await?
    } else {
        return Err(IdentityError::BadRequest(
            "User requires an id or a name.".into(),
        ));
    };
    let user = user.ok_or_else(|| unauth("unknown user".into()))?;
    let password = u.password.as_deref().unwrap_or("");
    if !id.password_ok(&user, password) {
        return Err(unauth(format!("wrong password for user {}", user.id)));
    }
    if !user.enabled {
        return Err(unauth(format!("user {} disabled", user.id)));
    }
    Ok(user)
}

async fn issue_token(
    State(id): State<Arc<Identity>>,
    Query(q): Q,
    Json(req): Json<AuthRequest>,
) -> Result<Response, Fault> {
    let r = authenticate(&id, req.auth)
        .await
        .map_err(|e| fault(&id, e))?;
    let (token, payload) = r;
    let body = token_json(&id, &payload, !q.contains_key("nocatalog")).await;
    let mut resp = (StatusCode::CREATED, axum::Json(body)).into_response();
    let v = HeaderValue::from_str(&token).map_err(|e| Fault::internal(e.to_string()))?;
    resp.headers_mut().insert("x-subject-token", v);
    Ok(resp)
}

async fn authenticate(
    id: &Identity,
    auth: AuthBody,
) -> Result<(String, TokenPayload), IdentityError> {
    let methods = auth.identity.methods;
    let scope = parse_scope(auth.scope)?;
    let (user, parent, method) = if methods.iter().any(|m| m == "password") {
        let p = auth.identity.password.ok_or_else(|| {
            IdentityError::BadRequest("The password method requires a password object.".into())
        })?;
        (password_user(id, &p.user).await?, None, "password")
    } else if methods.iter().any(|m| m == "token") {
        let t = auth.identity.token.ok_or_else(|| {
            IdentityError::BadRequest("The token method requires a token object.".into())
        })?;
        let parent = id.validate_payload(&t.id).await?;
        let user = id
            .store
            .user(&parent.user_id)
            .await?
            .filter(|u| u.enabled)
            .ok_or_else(|| IdentityError::Unauthorized("token user gone or disabled".into()))?;
        (user, Some(parent), "token")
    } else {
        return Err(IdentityError::Unauthorized(format!(
            "unsupported methods {methods:?}"
        )));
    };
    let methods = match &parent {
        Some(p) => {
            let mut m = p.methods.clone();
            if !m.iter().any(|x| x == method) {
                m.push(method.to_string());
            }
            m
        }
        None => vec![method.to_string()],
    };

    let project = match scope {
        Scope::Unscoped => None,
        Scope::Project(p) => {
            let project = if let Some(pid) = &p.id {
                id.store.project(pid).await?
            } else {
                let domain = resolve_domain(id, p.domain.as_ref())
                    .await?
                    .ok_or_else(|| IdentityError::Unauthorized("unknown project domain".into()))?;
                id.store
                    .project_by_name(&domain.id, p.name.as_deref().unwrap_or(""))
                    .await?
            };
            let project = project
                .ok_or_else(|| IdentityError::Unauthorized("unknown scope project".into()))?;
            let roles = id.roles_for_scope(&user, &project).await?;
            Some((project, roles))
        }
        Scope::Default => match &user.default_project_id {
            Some(pid) => match id.store.project(pid).await? {
                Some(project) => match id.roles_for_scope(&user, &project).await {
                    Ok(roles) => Some((project, roles)),
                    Err(IdentityError::Unauthorized(_)) => None,
                    Err(e) => return Err(e),
                },
                None => None,
            },
            None => None,
        },
    };
    let scope = project.as_ref().map(|(p, r)| (p, r.as_slice()));
    id.issue(&user, scope, methods, parent.as_ref()).await
}

async fn domain_name(id: &Identity, domain_id: &str) -> String {
    match id.store.domain(domain_id).await {
        Ok(Some(d)) => d.name,
        _ => domain_id.to_string(),
    }
}

/// The Keystone token body of `p`.
pub(crate) async fn token_json(id: &Identity, p: &TokenPayload, with_catalog: bool) -> Value {
    let mut token = json!({
        "methods": p.methods,
        "user": {
            "id": p.user_id,
            "name": p.user_name,
            "domain": {"id": p.user_domain_id, "name": domain_name(id, &p.user_domain_id).await},
            "password_expires_at": null,
        },
        "expires_at": iso_us(p.expires_us),
        "issued_at": iso_us(p.issued_us),
        "audit_ids": p.audit_ids,
    });
    if let Some(proj) = &p.project {
        let mut roles = Vec::new();
        for name in &p.roles {
            let rid = match id.store.role_by_name(name).await {
                Ok(Some(r)) => r.id,
                _ => name.clone(),
            };
            roles.push(json!({"id": rid, "name": name}));
        }
        token["project"] = json!({
            "id": proj.id,
            "name": proj.name,
            "domain": {"id": proj.domain_id, "name": domain_name(id, &proj.domain_id).await},
        });
        token["roles"] = Value::Array(roles);
        token["is_domain"] = json!(false);
        if with_catalog {
            token["catalog"] = id.catalog.catalog_json(&proj.id);
        }
    }
    json!({"token": token})
}

fn subject(headers: &HeaderMap) -> Result<&str, IdentityError> {
    headers
        .get("x-subject-token")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| IdentityError::NotFound("X-Subject-Token is missing.".into()))
}

/// The caller and the valid subject token; the caller must own it or be an admin.
async fn caller_and_subject(
    id: &Identity,
    headers: &HeaderMap,
) -> Result<(TokenPayload, TokenPayload, String), IdentityError> {
    let me = caller(id, headers).await?;
    let token = subject(headers)?.to_string();
    let sub = id.validate_payload(&token).await.map_err(|e| match e {
        IdentityError::Unauthorized(_) => {
            IdentityError::NotFound("Could not find token.".to_string())
        }
        e => e,
    })?;
    let privileged = me.roles.iter().any(|r| r == "admin" || r == "service");
    if !privileged && me.user_id != sub.user_id {
        return Err(IdentityError::Forbidden(
            "You are not authorized to perform the requested action: identity:validate_token."
                .into(),
        ));
    }
    Ok((me, sub, token))
}

async fn check_token(
    State(id): State<Arc<Identity>>,
    method: axum::http::Method,
    Query(q): Q,
    headers: HeaderMap,
) -> Result<Response, Fault> {
    let (_, sub, token) = caller_and_subject(&id, &headers)
        .await
        .map_err(|e| fault(&id, e))?;
    if method == axum::http::Method::HEAD {
        return Ok(StatusCode::OK.into_response());
    }
    let body = token_json(&id, &sub, !q.contains_key("nocatalog")).await;
    let mut resp = axum::Json(body).into_response();
    if let Ok(v) = HeaderValue::from_str(&token) {
        resp.headers_mut().insert("x-subject-token", v);
    }
    Ok(resp)
}

async fn revoke_token(
    State(id): State<Arc<Identity>>,
    headers: HeaderMap,
) -> Result<StatusCode, Fault> {
    let (_, _, token) = caller_and_subject(&id, &headers)
        .await
        .map_err(|e| fault(&id, e))?;
    id.revoke(&token).await.map_err(|e| fault(&id, e))?;
    Ok(StatusCode::NO_CONTENT)
}

async fn auth_projects(
    State(id): State<Arc<Identity>>,
    headers: HeaderMap,
) -> Result<Response, Fault> {
    let me = caller(&id, &headers).await.map_err(|e| fault(&id, e))?;
    let projects = admin::projects_of_user(&id, &me.user_id)
        .await
        .map_err(|e| fault(&id, e))?;
    let url = format!("{}/auth/projects", id.catalog.identity_v3());
    Ok(admin::list_json(&id, "projects", projects, &url))
}

async fn auth_catalog(
    State(id): State<Arc<Identity>>,
    headers: HeaderMap,
) -> Result<Response, Fault> {
    let me = caller(&id, &headers).await.map_err(|e| fault(&id, e))?;
    let catalog = match &me.project {
        Some(p) => id.catalog.catalog_json(&p.id),
        None => json!([]),
    };
    let url = format!("{}/auth/catalog", id.catalog.identity_v3());
    Ok(axum::Json(json!({"catalog": catalog, "links": {"self": url}})).into_response())
}
