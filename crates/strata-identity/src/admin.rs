//! Keystone identity management: domains, projects, users, roles and role assignments.
//! Everything here needs the admin role, except reading oneself and one's own project.

use crate::keystone::{caller, Q};
use crate::store::*;
use crate::token::TokenPayload;
use crate::{Identity, IdentityError};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{self, get};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;
use strata_api::Json;

type Res = Result<Response, IdentityError>;
type St = State<Arc<Identity>>;

pub(crate) fn routes() -> Router<Arc<Identity>> {
    Router::new()
        .route("/v3/domains", get(list_domains))
        .route("/v3/domains/:id", get(get_domain))
        .route("/v3/projects", get(list_projects).post(create_project))
        .route(
            "/v3/projects/:id",
            get(get_project)
                .patch(update_project)
                .delete(delete_project),
        )
        .route("/v3/projects/:id/users/:uid/roles", get(list_grants))
        .route(
            "/v3/projects/:id/users/:uid/roles/:rid",
            routing::put(grant).head(check_grant).delete(revoke_grant),
        )
        .route("/v3/users", get(list_users).post(create_user))
        .route(
            "/v3/users/:id",
            get(get_user).patch(update_user).delete(delete_user),
        )
        .route("/v3/users/:id/projects", get(user_projects))
        .route("/v3/roles", get(list_roles).post(create_role))
        .route("/v3/roles/:id", get(get_role).delete(delete_role))
        .route("/v3/role_assignments", get(list_assignments))
}

fn forbidden(action: &str) -> IdentityError {
    IdentityError::Forbidden(format!(
        "You are not authorized to perform the requested action: identity:{action}."
    ))
}

async fn require_admin(
    id: &Identity,
    headers: &HeaderMap,
    action: &str,
) -> Result<TokenPayload, IdentityError> {
    let me = caller(id, headers).await?;
    if !me.roles.iter().any(|r| r.eq_ignore_ascii_case("admin")) {
        return Err(forbidden(action));
    }
    Ok(me)
}

fn is_admin(p: &TokenPayload) -> bool {
    p.roles.iter().any(|r| r.eq_ignore_ascii_case("admin"))
}

fn not_found(kind: &str, id: &str) -> IdentityError {
    IdentityError::NotFound(format!("Could not find {kind}: {id}."))
}

fn duplicate(kind: &str, name: &str) -> IdentityError {
    IdentityError::Conflict(format!(
        "Conflict occurred attempting to store {kind} - Duplicate entry found with name {name}."
    ))
}

fn check_name(kind: &str, name: Option<&str>) -> Result<String, IdentityError> {
    let name = name.map(str::trim).unwrap_or("");
    if name.is_empty() || name.len() > 255 || name.contains('/') {
        return Err(IdentityError::BadRequest(format!("Invalid {kind} name.")));
    }
    Ok(name.to_string())
}

fn v3(id: &Identity) -> String {
    id.catalog.identity_v3()
}

pub(crate) fn list_json(id: &Identity, key: &str, items: Vec<Value>, url: &str) -> Response {
    let _ = id;
    axum::Json(json!({
        key: items,
        "links": {"self": url, "previous": null, "next": null}
    }))
    .into_response()
}

fn one(key: &str, v: Value, status: StatusCode) -> Response {
    (status, axum::Json(json!({ key: v }))).into_response()
}

fn domain_json(id: &Identity, d: &DomainRec) -> Value {
    json!({
        "id": d.id,
        "name": d.name,
        "description": d.description,
        "enabled": d.enabled,
        "tags": [],
        "options": {},
        "links": {"self": format!("{}/domains/{}", v3(id), d.id)},
    })
}

pub(crate) fn project_json(id: &Identity, p: &ProjectRec) -> Value {
    json!({
        "id": p.id,
        "name": p.name,
        "domain_id": p.domain_id,
        "description": p.description,
        "enabled": p.enabled,
        "parent_id": p.domain_id,
        "is_domain": false,
        "tags": p.tags,
        "options": {},
        "links": {"self": format!("{}/projects/{}", v3(id), p.id)},
    })
}

fn user_json(id: &Identity, u: &UserRec) -> Value {
    let mut m = u.extra.clone();
    m.insert("id".into(), json!(u.id));
    m.insert("name".into(), json!(u.name));
    m.insert("domain_id".into(), json!(u.domain_id));
    m.insert("enabled".into(), json!(u.enabled));
    m.insert("password_expires_at".into(), Value::Null);
    m.insert("options".into(), json!({}));
    if let Some(p) = &u.default_project_id {
        m.insert("default_project_id".into(), json!(p));
    }
    if let Some(d) = &u.description {
        m.insert("description".into(), json!(d));
    }
    m.insert(
        "links".into(),
        json!({"self": format!("{}/users/{}", v3(id), u.id)}),
    );
    Value::Object(m)
}

fn role_json(id: &Identity, r: &RoleRec) -> Value {
    json!({
        "id": r.id,
        "name": r.name,
        "domain_id": null,
        "description": r.description,
        "options": {},
        "links": {"self": format!("{}/roles/{}", v3(id), r.id)},
    })
}

fn bool_filter(q: &HashMap<String, String>, key: &str) -> Option<bool> {
    q.get(key).map(|v| {
        !matches!(
            v.to_ascii_lowercase().as_str(),
            "false" | "0" | "no" | "off"
        )
    })
}

// ---- domains ----

async fn list_domains(State(id): St, Query(q): Q, headers: HeaderMap) -> Res {
    require_admin(&id, &headers, "list_domains").await?;
    let enabled = bool_filter(&q, "enabled");
    let items = id
        .store
        .scan::<DomainRec>(DOMAINS, "")
        .await?
        .into_iter()
        .map(|(_, d)| d)
        .filter(|d| q.get("name").is_none_or(|n| d.name.eq_ignore_ascii_case(n)))
        .filter(|d| enabled.is_none_or(|e| d.enabled == e))
        .map(|d| domain_json(&id, &d))
        .collect();
    Ok(list_json(
        &id,
        "domains",
        items,
        &format!("{}/domains", v3(&id)),
    ))
}

async fn get_domain(State(id): St, Path(did): Path<String>, headers: HeaderMap) -> Res {
    let me = caller(&id, &headers).await?;
    let own = me.user_domain_id == did || me.project.as_ref().is_some_and(|p| p.domain_id == did);
    if !own && !is_admin(&me) {
        return Err(forbidden("get_domain"));
    }
    let d = id
        .store
        .domain(&did)
        .await?
        .ok_or_else(|| not_found("domain", &did))?;
    Ok(one("domain", domain_json(&id, &d), StatusCode::OK))
}

// ---- projects ----

#[derive(Debug, Deserialize)]
struct ProjectBody {
    project: ProjectIn,
}

#[derive(Debug, Default, Deserialize)]
struct ProjectIn {
    name: Option<String>,
    domain_id: Option<String>,
    description: Option<String>,
    enabled: Option<bool>,
    parent_id: Option<String>,
    is_domain: Option<bool>,
    tags: Option<Vec<String>>,
}

async fn create_project(State(id): St, headers: HeaderMap, Json(b): Json<ProjectBody>) -> Res {
    require_admin(&id, &headers, "create_project").await?;
    let p = b.project;
    let name = check_name("project", p.name.as_deref())?;
    if p.is_domain == Some(true) {
        return Err(IdentityError::BadRequest(
            "Projects acting as domains are not supported.".into(),
        ));
    }
    let domain_id = p
        .domain_id
        .clone()
        .unwrap_or_else(|| DEFAULT_DOMAIN.to_string());
    if id.store.domain(&domain_id).await?.is_none() {
        return Err(IdentityError::BadRequest(format!(
            "Could not find domain: {domain_id}."
        )));
    }
    if let Some(parent) = p.parent_id.as_deref().filter(|x| *x != domain_id) {
        return Err(IdentityError::BadRequest(format!(
            "Project hierarchies are not supported (parent_id {parent})."
        )));
    }
    let rec = ProjectRec {
        id: new_id(),
        name: name.clone(),
        domain_id: domain_id.clone(),
        description: p.description.unwrap_or_default(),
        enabled: p.enabled.unwrap_or(true),
        tags: p.tags.unwrap_or_default(),
    };
    let nkey = scoped_name_key(&domain_id, &name);
    let ok = id
        .store
        .write(
            vec![absent(PROJECT_NAMES, &nkey), present(DOMAINS, &domain_id)],
            vec![
                put(PROJECTS, &rec.id, &rec),
                put(PROJECT_NAMES, &nkey, &rec.id),
            ],
        )
        .await?;
    if !ok {
        return Err(duplicate("project", &name));
    }
    Ok(one("project", project_json(&id, &rec), StatusCode::CREATED))
}

async fn list_projects(State(id): St, Query(q): Q, headers: HeaderMap) -> Res {
    require_admin(&id, &headers, "list_projects").await?;
    let enabled = bool_filter(&q, "enabled");
    let items = id
        .store
        .scan::<ProjectRec>(PROJECTS, "")
        .await?
        .into_iter()
        .map(|(_, p)| p)
        .filter(|p| q.get("name").is_none_or(|n| &p.name == n))
        .filter(|p| q.get("domain_id").is_none_or(|d| &p.domain_id == d))
        .filter(|p| q.get("parent_id").is_none_or(|d| &p.domain_id == d))
        .filter(|p| enabled.is_none_or(|e| p.enabled == e))
        .map(|p| project_json(&id, &p))
        .collect();
    Ok(list_json(
        &id,
        "projects",
        items,
        &format!("{}/projects", v3(&id)),
    ))
}

async fn get_project(State(id): St, Path(pid): Path<String>, headers: HeaderMap) -> Res {
    let me = caller(&id, &headers).await?;
    if !is_admin(&me) && me.project.as_ref().map(|p| p.id.as_str()) != Some(pid.as_str()) {
        return Err(forbidden("get_project"));
    }
    let p = id
        .store
        .project(&pid)
        .await?
        .ok_or_else(|| not_found("project", &pid))?;
    Ok(one("project", project_json(&id, &p), StatusCode::OK))
}

async fn update_project(
    State(id): St,
    Path(pid): Path<String>,
    headers: HeaderMap,
    Json(b): Json<ProjectBody>,
) -> Res {
    require_admin(&id, &headers, "update_project").await?;
    let p = b.project;
    for _ in 0..5 {
        let (mut rec, raw) = id
            .store
            .get_raw::<ProjectRec>(PROJECTS, &pid)
            .await?
            .ok_or_else(|| not_found("project", &pid))?;
        if p.domain_id.as_ref().is_some_and(|d| *d != rec.domain_id) {
            return Err(IdentityError::BadRequest(
                "Cannot change a project's domain.".into(),
            ));
        }
        let mut checks = vec![equals(PROJECTS, &pid, raw)];
        let mut ops = Vec::new();
        if let Some(name) = &p.name {
            let name = check_name("project", Some(name))?;
            if name != rec.name {
                let old = scoped_name_key(&rec.domain_id, &rec.name);
                let new = scoped_name_key(&rec.domain_id, &name);
                checks.push(absent(PROJECT_NAMES, &new));
                ops.push(del(PROJECT_NAMES, &old));
                ops.push(put(PROJECT_NAMES, &new, &pid));
                rec.name = name;
            }
        }
        if let Some(d) = &p.description {
            rec.description = d.clone();
        }
        if let Some(t) = &p.tags {
            rec.tags = t.clone();
        }
        if let Some(e) = p.enabled {
            if !e && rec.enabled {
                ops.push(Identity::revoke_op(&format!("project/{pid}")));
            }
            rec.enabled = e;
        }
        ops.push(put(PROJECTS, &pid, &rec));
        if id.store.write(checks, ops).await? {
            return Ok(one("project", project_json(&id, &rec), StatusCode::OK));
        }
        let name_key = scoped_name_key(&rec.domain_id, &rec.name);
        if id
            .store
            .get_id(PROJECT_NAMES, &name_key)
            .await?
            .is_some_and(|other| other != pid)
        {
            return Err(duplicate("project", &rec.name));
        }
    }
    Err(IdentityError::Conflict(format!(
        "Concurrent updates of project {pid}; try again."
    )))
}

async fn delete_project(State(id): St, Path(pid): Path<String>, headers: HeaderMap) -> Res {
    require_admin(&id, &headers, "delete_project").await?;
    let p = id
        .store
        .project(&pid)
        .await?
        .ok_or_else(|| not_found("project", &pid))?;
    let mut ops = vec![
        del(PROJECTS, &pid),
        del(PROJECT_NAMES, &scoped_name_key(&p.domain_id, &p.name)),
        Identity::revoke_op(&format!("project/{pid}")),
    ];
    for a in id.store.assignments(Some(&pid)).await? {
        ops.push(del(ASSIGNMENTS, &a.key()));
    }
    if !id.store.write(vec![present(PROJECTS, &pid)], ops).await? {
        return Err(not_found("project", &pid));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Projects on which `user_id` holds a role.
pub(crate) async fn projects_of_user(
    id: &Identity,
    user_id: &str,
) -> Result<Vec<Value>, IdentityError> {
    let mut pids: Vec<String> = id
        .store
        .assignments(None)
        .await?
        .into_iter()
        .filter(|a| a.user_id == user_id)
        .map(|a| a.project_id)
        .collect();
    pids.dedup();
    let mut out = Vec::new();
    for pid in pids {
        if let Some(p) = id.store.project(&pid).await? {
            out.push(project_json(id, &p));
        }
    }
    Ok(out)
}

async fn user_projects(State(id): St, Path(uid): Path<String>, headers: HeaderMap) -> Res {
    let me = caller(&id, &headers).await?;
    if me.user_id != uid && !is_admin(&me) {
        return Err(forbidden("list_user_projects"));
    }
    id.store
        .user(&uid)
        .await?
        .ok_or_else(|| not_found("user", &uid))?;
    let items = projects_of_user(&id, &uid).await?;
    Ok(list_json(
        &id,
        "projects",
        items,
        &format!("{}/users/{uid}/projects", v3(&id)),
    ))
}

// ---- users ----

#[derive(Debug, Deserialize)]
struct UserBody {
    user: UserIn,
}

#[derive(Debug, Default, Deserialize)]
struct UserIn {
    name: Option<String>,
    domain_id: Option<String>,
    password: Option<String>,
    enabled: Option<bool>,
    default_project_id: Option<String>,
    description: Option<String>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

const RESERVED_USER_KEYS: [&str; 4] = ["id", "links", "password_expires_at", "options"];

fn clean_extra(mut extra: Map<String, Value>) -> Map<String, Value> {
    for k in RESERVED_USER_KEYS {
        extra.remove(k);
    }
    extra
}

async fn create_user(State(id): St, headers: HeaderMap, Json(b): Json<UserBody>) -> Res {
    require_admin(&id, &headers, "create_user").await?;
    let u = b.user;
    let name = check_name("user", u.name.as_deref())?;
    let domain_id = u
        .domain_id
        .clone()
        .unwrap_or_else(|| DEFAULT_DOMAIN.to_string());
    if id.store.domain(&domain_id).await?.is_none() {
        return Err(IdentityError::BadRequest(format!(
            "Could not find domain: {domain_id}."
        )));
    }
    let rec = UserRec {
        id: new_id(),
        name: name.clone(),
        domain_id: domain_id.clone(),
        enabled: u.enabled.unwrap_or(true),
        password_hash: u.password.as_deref().map(crate::password::hash_password),
        default_project_id: u.default_project_id.filter(|p| !p.is_empty()),
        description: u.description,
        extra: clean_extra(u.extra),
    };
    let nkey = scoped_name_key(&domain_id, &name);
    let ok = id
        .store
        .write(
            vec![absent(USER_NAMES, &nkey), present(DOMAINS, &domain_id)],
            vec![put(USERS, &rec.id, &rec), put(USER_NAMES, &nkey, &rec.id)],
        )
        .await?;
    if !ok {
        return Err(duplicate("user", &name));
    }
    Ok(one("user", user_json(&id, &rec), StatusCode::CREATED))
}

async fn list_users(State(id): St, Query(q): Q, headers: HeaderMap) -> Res {
    require_admin(&id, &headers, "list_users").await?;
    let enabled = bool_filter(&q, "enabled");
    let items = id
        .store
        .scan::<UserRec>(USERS, "")
        .await?
        .into_iter()
        .map(|(_, u)| u)
        .filter(|u| q.get("name").is_none_or(|n| &u.name == n))
        .filter(|u| q.get("domain_id").is_none_or(|d| &u.domain_id == d))
        .filter(|u| enabled.is_none_or(|e| u.enabled == e))
        .map(|u| user_json(&id, &u))
        .collect();
    Ok(list_json(
        &id,
        "users",
        items,
        &format!("{}/users", v3(&id)),
    ))
}

async fn get_user(State(id): St, Path(uid): Path<String>, headers: HeaderMap) -> Res {
    let me = caller(&id, &headers).await?;
    if me.user_id != uid && !is_admin(&me) {
        return Err(forbidden("get_user"));
    }
    let u = id
        .store
        .user(&uid)
        .await?
        .ok_or_else(|| not_found("user", &uid))?;
    Ok(one("user", user_json(&id, &u), StatusCode::OK))
}

async fn update_user(
    State(id): St,
    Path(uid): Path<String>,
    headers: HeaderMap,
    Json(b): Json<UserBody>,
) -> Res {
    require_admin(&id, &headers, "update_user").await?;
    let u = b.user;
    let new_hash = u.password.as_deref().map(crate::password::hash_password);
    for _ in 0..5 {
        let (mut rec, raw) = id
            .store
            .get_raw::<UserRec>(USERS, &uid)
            .await?
            .ok_or_else(|| not_found("user", &uid))?;
        if u.domain_id.as_ref().is_some_and(|d| *d != rec.domain_id) {
            return Err(IdentityError::BadRequest(
                "Cannot change a user's domain.".into(),
            ));
        }
        let mut checks = vec![equals(USERS, &uid, raw)];
        let mut ops = Vec::new();
        if let Some(name) = &u.name {
            let name = check_name("user", Some(name))?;
            if name != rec.name {
                let old = scoped_name_key(&rec.domain_id, &rec.name);
                let new = scoped_name_key(&rec.domain_id, &name);
                checks.push(absent(USER_NAMES, &new));
                ops.push(del(USER_NAMES, &old));
                ops.push(put(USER_NAMES, &new, &uid));
                rec.name = name;
            }
        }
        let mut revoke = false;
        if let Some(h) = &new_hash {
            rec.password_hash = Some(h.clone());
            revoke = true;
        }
        if let Some(e) = u.enabled {
            revoke |= !e && rec.enabled;
            rec.enabled = e;
        }
        if let Some(p) = &u.default_project_id {
            rec.default_project_id = Some(p.clone()).filter(|p| !p.is_empty());
        }
        if let Some(d) = &u.description {
            rec.description = Some(d.clone());
        }
        for (k, v) in clean_extra(u.extra.clone()) {
            rec.extra.insert(k, v);
        }
        if revoke {
            ops.push(Identity::revoke_op(&format!("user/{uid}")));
        }
        ops.push(put(USERS, &uid, &rec));
        if id.store.write(checks, ops).await? {
            return Ok(one("user", user_json(&id, &rec), StatusCode::OK));
        }
        let name_key = scoped_name_key(&rec.domain_id, &rec.name);
        if id
            .store
            .get_id(USER_NAMES, &name_key)
            .await?
            .is_some_and(|other| other != uid)
        {
            return Err(duplicate("user", &rec.name));
        }
    }
    Err(IdentityError::Conflict(format!(
        "Concurrent updates of user {uid}; try again."
    )))
}

async fn delete_user(State(id): St, Path(uid): Path<String>, headers: HeaderMap) -> Res {
    require_admin(&id, &headers, "delete_user").await?;
    let u = id
        .store
        .user(&uid)
        .await?
        .ok_or_else(|| not_found("user", &uid))?;
    let mut ops = vec![
        del(USERS, &uid),
        del(USER_NAMES, &scoped_name_key(&u.domain_id, &u.name)),
        Identity::revoke_op(&format!("user/{uid}")),
    ];
    for a in id.store.assignments(None).await? {
        if a.user_id == uid {
            ops.push(del(ASSIGNMENTS, &a.key()));
        }
    }
    if !id.store.write(vec![present(USERS, &uid)], ops).await? {
        return Err(not_found("user", &uid));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---- roles ----

#[derive(Debug, Deserialize)]
struct RoleBody {
    role: RoleIn,
}

#[derive(Debug, Default, Deserialize)]
struct RoleIn {
    name: Option<String>,
    description: Option<String>,
    domain_id: Option<String>,
}

async fn create_role(State(id): St, headers: HeaderMap, Json(b): Json<RoleBody>) -> Res {
    require_admin(&id, &headers, "create_role").await?;
    let name = check_name("role", b.role.name.as_deref())?;
    if b.role.domain_id.is_some() {
        return Err(IdentityError::BadRequest(
            "Domain specific roles are not supported.".into(),
        ));
    }
    let rec = RoleRec {
        id: new_id(),
        name: name.clone(),
        description: b.role.description,
    };
    let nkey = folded_name_key(&name);
    let ok = id
        .store
        .write(
            vec![absent(ROLE_NAMES, &nkey)],
            vec![put(ROLES, &rec.id, &rec), put(ROLE_NAMES, &nkey, &rec.id)],
        )
        .await?;
    if !ok {
        return Err(duplicate("role", &name));
    }
    Ok(one("role", role_json(&id, &rec), StatusCode::CREATED))
}

async fn list_roles(State(id): St, Query(q): Q, headers: HeaderMap) -> Res {
    require_admin(&id, &headers, "list_roles").await?;
    let items = id
        .store
        .scan::<RoleRec>(ROLES, "")
        .await?
        .into_iter()
        .map(|(_, r)| r)
        .filter(|r| q.get("name").is_none_or(|n| r.name.eq_ignore_ascii_case(n)))
        .map(|r| role_json(&id, &r))
        .collect();
    Ok(list_json(
        &id,
        "roles",
        items,
        &format!("{}/roles", v3(&id)),
    ))
}

async fn get_role(State(id): St, Path(rid): Path<String>, headers: HeaderMap) -> Res {
    require_admin(&id, &headers, "get_role").await?;
    let r = id
        .store
        .role(&rid)
        .await?
        .ok_or_else(|| not_found("role", &rid))?;
    Ok(one("role", role_json(&id, &r), StatusCode::OK))
}

async fn delete_role(State(id): St, Path(rid): Path<String>, headers: HeaderMap) -> Res {
    require_admin(&id, &headers, "delete_role").await?;
    let r = id
        .store
        .role(&rid)
        .await?
        .ok_or_else(|| not_found("role", &rid))?;
    let mut ops = vec![del(ROLES, &rid), del(ROLE_NAMES, &folded_name_key(&r.name))];
    for a in id.store.assignments(None).await? {
        if a.role_id == rid {
            ops.push(del(ASSIGNMENTS, &a.key()));
            ops.push(Identity::revoke_op(&format!(
                "grant/{}/{}",
                a.user_id, a.project_id
            )));
        }
    }
    if !id.store.write(vec![present(ROLES, &rid)], ops).await? {
        return Err(not_found("role", &rid));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---- role assignments ----

async fn grant(
    State(id): St,
    Path((p, u, r)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Res {
    require_admin(&id, &headers, "create_grant").await?;
    let key = assignment_key(&p, &u, &r);
    let checks = vec![
        present(PROJECTS, &p),
        present(USERS, &u),
        present(ROLES, &r),
    ];
    if !id
        .store
        .write(checks, vec![put(ASSIGNMENTS, &key, &())])
        .await?
    {
        return Err(missing_of(&id, &p, &u, &r).await);
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn missing_of(id: &Identity, p: &str, u: &str, r: &str) -> IdentityError {
    match (
        id.store.project(p).await,
        id.store.user(u).await,
        id.store.role(r).await,
    ) {
        (Ok(None), _, _) => not_found("project", p),
        (_, Ok(None), _) => not_found("user", u),
        (_, _, Ok(None)) => not_found("role", r),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => e,
        _ => IdentityError::Conflict("Concurrent change; try again.".into()),
    }
}

async fn check_grant(
    State(id): St,
    Path((p, u, r)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Res {
    require_admin(&id, &headers, "check_grant").await?;
    match id
        .store
        .meta
        .get(ASSIGNMENTS, &assignment_key(&p, &u, &r))
        .await?
    {
        Some(_) => Ok(StatusCode::NO_CONTENT.into_response()),
        None => Err(missing_grant(&p, &u, &r)),
    }
}

fn missing_grant(p: &str, u: &str, r: &str) -> IdentityError {
    IdentityError::NotFound(format!(
        "Could not find role assignment with role: {r}, user or group: {u}, project, domain, \
         or system: {p}."
    ))
}

async fn revoke_grant(
    State(id): St,
    Path((p, u, r)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Res {
    require_admin(&id, &headers, "revoke_grant").await?;
    let key = assignment_key(&p, &u, &r);
    let ops = vec![
        del(ASSIGNMENTS, &key),
        Identity::revoke_op(&format!("grant/{u}/{p}")),
    ];
    if !id
        .store
        .write(vec![present(ASSIGNMENTS, &key)], ops)
        .await?
    {
        return Err(missing_grant(&p, &u, &r));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_grants(
    State(id): St,
    Path((p, u)): Path<(String, String)>,
    headers: HeaderMap,
) -> Res {
    require_admin(&id, &headers, "list_grants").await?;
    id.store
        .project(&p)
        .await?
        .ok_or_else(|| not_found("project", &p))?;
    id.store
        .user(&u)
        .await?
        .ok_or_else(|| not_found("user", &u))?;
    let mut items = Vec::new();
    for rid in id.store.role_ids_on(&p, &u).await? {
        if let Some(r) = id.store.role(&rid).await? {
            items.push(role_json(&id, &r));
        }
    }
    let url = format!("{}/projects/{p}/users/{u}/roles", v3(&id));
    Ok(list_json(&id, "roles", items, &url))
}

/// Keystone's reading of a flag-like query parameter: present and not `0` (nor `false`).
fn query_true(q: &HashMap<String, String>, key: &str) -> bool {
    q.get(key)
        .is_some_and(|v| v != "0" && !v.eq_ignore_ascii_case("false"))
}

/// `{"id", "name", "domain": {"id", "name"}}` of a user or project, for `include_names`.
async fn named_in_domain(
    id: &Identity,
    entity_id: &str,
    name: Option<(String, String)>,
) -> Result<Value, IdentityError> {
    let mut v = json!({ "id": entity_id });
    if let Some((name, domain_id)) = name {
        v["name"] = json!(name);
        let domain_name = id.store.domain(&domain_id).await?.map(|d| d.name);
        v["domain"] = json!({"id": domain_id, "name": domain_name.unwrap_or_default()});
    }
    Ok(v)
}

/// `GET /v3/role_assignments`. Strata keeps only direct user grants on projects, so
/// filters on groups, domains, the system or inheritance match nothing; `effective`
/// adds the roles implied by each grant, with a `prior_role` link as Keystone does.
async fn list_assignments(State(id): St, Query(q): Q, headers: HeaderMap) -> Res {
    require_admin(&id, &headers, "list_role_assignments").await?;
    let names = query_true(&q, "include_names");
    let effective = query_true(&q, "effective");
    let project = q.get("scope.project.id").map(String::as_str);
    if q.contains_key("include_subtree") && project.is_none() {
        return Err(IdentityError::BadRequest(
            "scope.project.id needs to be specified if include_subtree is also specified.".into(),
        ));
    }
    if effective && q.contains_key("group.id") {
        return Err(IdentityError::BadRequest(
            "Combining effective and group filter will always result in an empty list.".into(),
        ));
    }
    let none_match = ["group.id", "scope.domain.id", "scope.system"]
        .iter()
        .any(|k| q.contains_key(*k))
        || q.contains_key("scope.OS-INHERIT:inherited_to");
    let url = format!("{}/role_assignments", v3(&id));
    if none_match {
        return Ok(list_json(&id, "role_assignments", Vec::new(), &url));
    }
    let mut grants = Vec::new();
    for a in id.store.assignments(project).await? {
        if q.get("user.id").is_some_and(|u| *u != a.user_id) {
            continue;
        }
        let Some(role) = id.store.role(&a.role_id).await? else {
            continue;
        };
        // (assignment, role it gives, role it was implied by)
        let mut chain = vec![(role.clone(), None::<RoleRec>)];
        if effective {
            let mut prior = role;
            'imply: loop {
                for (holder, implied) in crate::IMPLIED_ROLES {
                    if prior.name.eq_ignore_ascii_case(holder) {
                        if let Some(r) = id.store.role_by_name(implied).await? {
                            chain.push((r.clone(), Some(prior)));
                            prior = r;
                            continue 'imply;
                        }
                    }
                }
                break;
            }
        }
        for (role, prior) in chain {
            if q.get("role.id").is_some_and(|r| *r != role.id) {
                continue;
            }
            grants.push((a.project_id.clone(), a.user_id.clone(), role, prior));
        }
    }
    let mut items = Vec::new();
    for (pid, uid, role, prior) in grants {
        let mut role_v = json!({"id": role.id});
        let (mut user_v, mut proj_v) = (json!({"id": uid}), json!({"id": pid}));
        if names {
            role_v["name"] = json!(role.name);
            let u = id.store.user(&uid).await?.map(|u| (u.name, u.domain_id));
            user_v = named_in_domain(&id, &uid, u).await?;
            let p = id.store.project(&pid).await?.map(|p| (p.name, p.domain_id));
            proj_v = named_in_domain(&id, &pid, p).await?;
        }
        let granted = prior.as_ref().map_or(&role.id, |p| &p.id);
        let mut links = json!({
            "assignment": format!("{}/projects/{pid}/users/{uid}/roles/{granted}", v3(&id)),
        });
        if let Some(p) = &prior {
            links["prior_role"] = json!(format!("{}/roles/{}", v3(&id), p.id));
        }
        items.push(json!({
            "role": role_v,
            "user": user_v,
            "scope": {"project": proj_v},
            "links": links,
        }));
    }
    Ok(list_json(&id, "role_assignments", items, &url))
}
