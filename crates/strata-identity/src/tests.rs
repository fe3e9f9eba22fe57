use super::*;
use crate::token::TokenPayload;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use strata_meta::MemMeta;
use tower::ServiceExt;

const PW: &str = "s3cret-admin";

fn cfg() -> CatalogConfig {
    CatalogConfig {
        region: "RegionOne".into(),
        identity_url: "http://10.0.0.1:5000".into(),
        object_store_url: "http://10.0.0.1:8080".into(),
        volume_url: "http://10.0.0.1:8776".into(),
        compute_url: Some("http://10.0.0.1:8774".into()),
        image_url: Some("http://10.0.0.1:9292".into()),
    }
}

async fn setup() -> Arc<Identity> {
    let id = Identity::new(Arc::new(MemMeta::new()), cfg());
    id.bootstrap(PW).await.unwrap();
    id
}

struct Reply {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Value,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

async fn call(app: &Router, req: Request<Body>) -> Reply {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    Reply {
        status,
        headers,
        body,
    }
}

fn req(method: Method, uri: &str, token: Option<&str>, body: Option<Value>) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        b = b.header("x-auth-token", t);
    }
    match body {
        Some(v) => b
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&v).unwrap()))
            .unwrap(),
        None => b.body(Body::empty()).unwrap(),
    }
}

fn password_by_name(user: &str, pw: &str, project: Option<&str>) -> Value {
    let mut v = json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": user, "domain": {"name": "Default"}, "password": pw
    }}}}});
    if let Some(p) = project {
        v["auth"]["scope"] = json!({"project": {"name": p, "domain": {"id": "default"}}});
    }
    v
}

/// Authenticate and return (token, body).
async fn login(app: &Router, user: &str, pw: &str, project: Option<&str>) -> (String, Value) {
    let r = call(
        app,
        req(
            Method::POST,
            "/v3/auth/tokens",
            None,
            Some(password_by_name(user, pw, project)),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    (r.header("x-subject-token").to_string(), r.body)
}

fn endpoint(catalog: &Value, ty: &str, iface: &str) -> String {
    let svc = catalog
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["type"] == ty)
        .unwrap();
    let ep = svc["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["interface"] == iface);
    ep.unwrap()["url"].as_str().unwrap().to_string()
}

fn is_keystone_time(s: &str) -> bool {
    // 2026-01-02T03:04:05.123456Z
    s.len() == 27 && s.ends_with('Z') && &s[10..11] == "T" && &s[19..20] == "."
}

// ---- bootstrap ----

#[tokio::test]
async fn bootstrap_is_idempotent_and_keeps_the_stored_password() {
    let meta: Arc<dyn MetaStore> = Arc::new(MemMeta::new());
    let a = Identity::new(meta.clone(), cfg());
    let b = Identity::new(meta.clone(), cfg());
    // Two nodes at once.
    let (ra, rb) = tokio::join!(a.bootstrap(PW), b.bootstrap(PW));
    ra.unwrap();
    rb.unwrap();
    a.bootstrap("another-password").await.unwrap();
    let users = a.store.scan::<UserRec>(USERS, "").await.unwrap();
    assert_eq!(users.len(), 1);
    assert_eq!(
        a.store
            .scan::<ProjectRec>(PROJECTS, "")
            .await
            .unwrap()
            .len(),
        1
    );
    let roles = a.store.scan::<RoleRec>(ROLES, "").await.unwrap();
    let mut names: Vec<_> = roles.iter().map(|(_, r)| r.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["ResellerAdmin", "admin", "member", "reader"]);
    assert_eq!(a.store.assignments(None).await.unwrap().len(), 1);
    let d = a.store.domain("default").await.unwrap().unwrap();
    assert_eq!(d.name, "Default");
    let user = &users[0].1;
    assert_eq!(user.id.len(), 32);
    assert!(a.password_ok(user, PW));
    assert!(!a.password_ok(user, "another-password"));
    // Both nodes sign with the same secret.
    let app = a.router();
    let (token, _) = login(&app, "admin", PW, Some("admin")).await;
    assert_eq!(b.validate(&token).await.unwrap().user_name, "admin");
}

#[tokio::test]
async fn validate_before_bootstrap_fails_cleanly() {
    let id = Identity::new(Arc::new(MemMeta::new()), cfg());
    assert!(matches!(
        id.validate("x.y").await,
        Err(IdentityError::Unavailable(_))
    ));
}

// ---- version documents ----

#[tokio::test]
async fn version_documents() {
    let id = setup().await;
    let app = id.router();
    for path in ["/v3", "/v3/"] {
        let r = call(&app, req(Method::GET, path, None, None)).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body["version"]["id"], "v3.14");
        assert_eq!(r.body["version"]["status"], "stable");
        assert_eq!(
            r.body["version"]["links"][0]["href"],
            "http://10.0.0.1:5000/v3/"
        );
        assert_eq!(
            r.body["version"]["media-types"][0]["type"],
            "application/vnd.openstack.identity-v3+json"
        );
        assert!(r.header("x-openstack-request-id").starts_with("req-"));
    }
    let r = call(&app, req(Method::GET, "/", None, None)).await;
    assert_eq!(r.status, StatusCode::MULTIPLE_CHOICES);
    assert_eq!(r.body["versions"]["values"][0]["id"], "v3.14");
    let r = call(&app, req(Method::GET, "/v3/nothing-here", None, None)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.body["error"]["code"], 404);
}

// ---- tokens ----

#[tokio::test]
async fn password_auth_by_name() {
    let id = setup().await;
    let app = id.router();
    let (token, body) = login(&app, "admin", PW, Some("admin")).await;
    assert!(!token.is_empty());
    let t = &body["token"];
    assert_eq!(t["methods"], json!(["password"]));
    assert_eq!(t["user"]["name"], "admin");
    assert_eq!(
        t["user"]["domain"],
        json!({"id": "default", "name": "Default"})
    );
    assert_eq!(t["user"]["password_expires_at"], Value::Null);
    assert_eq!(t["project"]["name"], "admin");
    assert_eq!(t["project"]["domain"]["id"], "default");
    assert_eq!(t["is_domain"], false);
    assert!(
        is_keystone_time(t["expires_at"].as_str().unwrap()),
        "{}",
        t["expires_at"]
    );
    assert!(is_keystone_time(t["issued_at"].as_str().unwrap()));
    assert_eq!(t["audit_ids"].as_array().unwrap().len(), 1);
    let mut roles: Vec<_> = t["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    roles.sort();
    assert_eq!(roles, ["admin", "member", "reader"]);
    assert!(t["roles"][0]["id"].as_str().unwrap().len() == 32);

    let pid = t["project"]["id"].as_str().unwrap();
    let cat = &t["catalog"];
    for iface in ["public", "internal", "admin"] {
        assert_eq!(
            endpoint(cat, "object-store", iface),
            format!("http://10.0.0.1:8080/v1/AUTH_{pid}")
        );
    }
    assert_eq!(
        endpoint(cat, "volumev3", "public"),
        format!("http://10.0.0.1:8776/v3/{pid}")
    );
    assert_eq!(
        endpoint(cat, "volumev2", "public"),
        format!("http://10.0.0.1:8776/v2/{pid}")
    );
    assert_eq!(
        endpoint(cat, "block-storage", "public"),
        format!("http://10.0.0.1:8776/v3/{pid}")
    );
    assert_eq!(
        endpoint(cat, "identity", "public"),
        "http://10.0.0.1:5000/v3"
    );
    assert_eq!(
        endpoint(cat, "compute", "public"),
        "http://10.0.0.1:8774/v2.1"
    );
    assert_eq!(endpoint(cat, "image", "public"), "http://10.0.0.1:9292");

    let ctx = id.validate(&token).await.unwrap();
    assert_eq!(ctx.project_id, pid);
    assert_eq!(ctx.project_name, "admin");
    assert_eq!(ctx.domain_id, "default");
    assert!(ctx.is_admin() && ctx.has_role("member") && ctx.has_role("reader"));
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!((ctx.expires_at_unix - now - DEFAULT_TOKEN_TTL_SECS).abs() < 5);
    assert_eq!(ctx.audit_id, t["audit_ids"][0]);
}

#[tokio::test]
async fn password_auth_by_id_and_default_project() {
    let id = setup().await;
    let app = id.router();
    let (_, body) = login(&app, "admin", PW, Some("admin")).await;
    let uid = body["token"]["user"]["id"].as_str().unwrap();
    let pid = body["token"]["project"]["id"].as_str().unwrap();
    let by_id = json!({"auth": {
        "identity": {"methods": ["password"], "password": {"user": {"id": uid, "password": PW}}},
        "scope": {"project": {"id": pid}}
    }});
    let r = call(
        &app,
        req(Method::POST, "/v3/auth/tokens", None, Some(by_id)),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.body["token"]["project"]["id"], pid);
    assert!(!r.header("x-subject-token").is_empty());

    // No scope: the user's default project (admin's is the admin project).
    let (_, body) = login(&app, "admin", PW, None).await;
    assert_eq!(body["token"]["project"]["id"], pid);

    // Explicitly unscoped: no project, roles or catalog.
    let mut v = password_by_name("admin", PW, None);
    v["auth"]["scope"] = json!("unscoped");
    let r = call(&app, req(Method::POST, "/v3/auth/tokens", None, Some(v))).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert!(r.body["token"].get("project").is_none());
    assert!(r.body["token"].get("catalog").is_none());
    assert!(r.body["token"].get("roles").is_none());
    let unscoped = r.header("x-subject-token").to_string();
    let ctx = id.validate(&unscoped).await.unwrap();
    assert!(!ctx.is_scoped() && ctx.roles.is_empty());

    // Re-scope with the token method.
    let v = json!({"auth": {
        "identity": {"methods": ["token"], "token": {"id": unscoped}},
        "scope": {"project": {"name": "admin", "domain": {"name": "default"}}}
    }});
    let r = call(
        &app,
        req(Method::POST, "/v3/auth/tokens?nocatalog", None, Some(v)),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["token"]["project"]["id"], pid);
    assert!(r.body["token"].get("catalog").is_none());
    assert_eq!(r.body["token"]["audit_ids"].as_array().unwrap().len(), 2);
    assert_eq!(r.body["token"]["audit_ids"][1], ctx.audit_id);
    let rescoped = id.validate(r.header("x-subject-token")).await.unwrap();
    assert_eq!(rescoped.expires_at_unix, ctx.expires_at_unix);
}

#[tokio::test]
async fn bad_credentials_are_401_faults() {
    let id = setup().await;
    let app = id.router();
    let expected = json!({"error": {
        "code": 401,
        "title": "Unauthorized",
        "message": "The request you have made requires authentication."
    }});
    for body in [
        password_by_name("admin", "wrong", Some("admin")),
        password_by_name("nobody", PW, Some("admin")),
        password_by_name("admin", PW, Some("no-such-project")),
        json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "id": "0123456789abcdef0123456789abcdef", "password": PW}}}}}),
        json!({"auth": {"identity": {"methods": ["token"], "token": {"id": "bogus.token"}}}}),
        json!({"auth": {"identity": {"methods": ["totp"]}}}),
    ] {
        let r = call(
            &app,
            req(Method::POST, "/v3/auth/tokens", None, Some(body.clone())),
        )
        .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(r.body, expected);
        assert!(r.header("www-authenticate").starts_with("Keystone uri="));
        assert!(r.header("x-subject-token").is_empty());
    }
}

#[tokio::test]
async fn malformed_auth_bodies_are_400() {
    let id = setup().await;
    let app = id.router();
    let raw = Request::post("/v3/auth/tokens")
        .header("content-type", "application/json")
        .body(Body::from("{\"auth\": {"))
        .unwrap();
    let r = call(&app, raw).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["error"]["code"], 400);
    assert_eq!(r.body["error"]["title"], "Bad Request");
    for body in [
        json!({"nope": 1}),
        json!({"auth": {"identity": {"methods": "password"}}}),
        json!({"auth": {"identity": {"methods": ["password"]}}}),
        json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "password": PW}}}}}),
        json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": "admin", "password": PW}}}, "scope": {"project": {}}}}),
    ] {
        let r = call(
            &app,
            req(Method::POST, "/v3/auth/tokens", None, Some(body.clone())),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(r.body["error"]["code"], 400);
    }
}

#[tokio::test]
async fn validate_and_revoke_tokens() {
    let id = setup().await;
    let app = id.router();
    let (admin, _) = login(&app, "admin", PW, Some("admin")).await;
    let (other, _) = login(&app, "admin", PW, Some("admin")).await;
    assert_ne!(admin, other);

    let check = |m: Method, subject: &str| {
        Request::builder()
            .method(m)
            .uri("/v3/auth/tokens")
            .header("x-auth-token", &admin)
            .header("x-subject-token", subject)
            .body(Body::empty())
            .unwrap()
    };
    let r = call(&app, check(Method::GET, &other)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["token"]["user"]["name"], "admin");
    assert_eq!(r.header("x-subject-token"), other);
    assert!(r.body["token"]["catalog"].is_array());
    let r = call(&app, check(Method::HEAD, &other)).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = call(&app, check(Method::GET, "garbage")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = call(&app, check(Method::HEAD, "garbage")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // No caller token: 401.
    let r = call(
        &app,
        Request::get("/v3/auth/tokens")
            .header("x-subject-token", &other)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // Revoke.
    let r = call(&app, check(Method::DELETE, &other)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = call(&app, check(Method::GET, &other)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(matches!(
        id.validate(&other).await,
        Err(IdentityError::Unauthorized(_))
    ));
    let r = call(&app, check(Method::DELETE, &other)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // Only that token.
    assert!(id.validate(&admin).await.is_ok());
}

#[tokio::test]
async fn tampered_and_expired_tokens_are_rejected() {
    let id = setup().await;
    let app = id.router();
    let (token, _) = login(&app, "admin", PW, Some("admin")).await;
    let secret = id.secret().await.unwrap().to_vec();
    let mut p: TokenPayload = token::verify(&secret, &token).unwrap();

    // Re-signed with another key.
    p.roles.push("ResellerAdmin".into());
    let forged = token::sign(b"not the secret", &p);
    assert!(matches!(
        id.validate(&forged).await,
        Err(IdentityError::Unauthorized(_))
    ));
    // Properly signed, but expired.
    p.expires_us = now_us() - 1;
    let expired = token::sign(&secret, &p);
    assert!(matches!(
        id.validate(&expired).await,
        Err(IdentityError::Unauthorized(_))
    ));
    // Truncated.
    assert!(id.validate(&token[..token.len() - 3]).await.is_err());
    assert!(id.validate(&token).await.is_ok());

    // A short TTL shows in the token.
    id.set_token_ttl(60);
    let (short, _) = login(&app, "admin", PW, Some("admin")).await;
    let ctx = id.validate(&short).await.unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!((ctx.expires_at_unix - now - 60).abs() <= 2);
}

// ---- TempAuth ----

async fn tempauth(app: &Router, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut b = Request::get(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    call(app, b.body(Body::empty()).unwrap()).await
}

#[tokio::test]
async fn tempauth_success_and_failure() {
    let id = setup().await;
    let app = id.tempauth_router();
    let pid = id
        .store
        .project_by_name("default", "admin")
        .await
        .unwrap()
        .unwrap()
        .id;
    for path in ["/auth/v1.0", "/v1.0"] {
        let r = tempauth(
            &app,
            path,
            &[("x-auth-user", "admin:admin"), ("x-auth-key", PW)],
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert_eq!(r.body, Value::Null);
        let token = r.header("x-auth-token");
        assert!(!token.is_empty());
        assert_eq!(r.header("x-storage-token"), token);
        assert_eq!(
            r.header("x-storage-url"),
            format!("http://10.0.0.1:8080/v1/AUTH_{pid}")
        );
        let secs: i64 = r.header("x-auth-token-expires").parse().unwrap();
        assert!(secs > DEFAULT_TOKEN_TTL_SECS - 10 && secs <= DEFAULT_TOKEN_TTL_SECS);
        let ctx = id.validate(token).await.unwrap();
        assert_eq!(ctx.project_id, pid);
        assert!(ctx.is_admin());
    }
    let r = tempauth(
        &app,
        "/auth/v1.0",
        &[("x-storage-user", "admin:admin"), ("x-storage-pass", PW)],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);

    for headers in [
        vec![("x-auth-user", "admin:admin"), ("x-auth-key", "wrong")],
        vec![("x-auth-user", "admin"), ("x-auth-key", PW)],
        vec![("x-auth-user", "nope:admin"), ("x-auth-key", PW)],
        vec![("x-auth-user", "admin:nobody"), ("x-auth-key", PW)],
        vec![("x-auth-user", "admin:admin")],
        vec![],
    ] {
        let r = tempauth(&app, "/auth/v1.0", &headers).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{headers:?}");
        assert!(r.header("x-auth-token").is_empty());
    }
}

// ---- identity management ----

async fn admin_token(app: &Router) -> String {
    login(app, "admin", PW, Some("admin")).await.0
}

#[tokio::test]
async fn admin_crud_and_role_assignments() {
    let id = setup().await;
    let app = id.router();
    let tempauth = id.tempauth_router();
    let adm = admin_token(&app).await;
    let tok = Some(adm.as_str());

    // Domains.
    let r = call(
        &app,
        req(Method::GET, "/v3/domains?name=Default", tok, None),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["domains"].as_array().unwrap().len(), 1);
    assert_eq!(r.body["domains"][0]["id"], "default");
    let r = call(&app, req(Method::GET, "/v3/domains/default", tok, None)).await;
    assert_eq!(r.body["domain"]["name"], "Default");
    let r = call(&app, req(Method::GET, "/v3/domains/nope", tok, None)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Projects.
    let body = json!({"project": {"name": "demo", "domain_id": "default", "description": "d"}});
    let r = call(
        &app,
        req(Method::POST, "/v3/projects", tok, Some(body.clone())),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let pid = r.body["project"]["id"].as_str().unwrap().to_string();
    assert_eq!(pid.len(), 32);
    assert!(pid.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(r.body["project"]["enabled"], true);
    assert_eq!(r.body["project"]["domain_id"], "default");
    let r = call(&app, req(Method::POST, "/v3/projects", tok, Some(body))).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.body["error"]["code"], 409);
    let r = call(&app, req(Method::GET, "/v3/projects", tok, None)).await;
    assert_eq!(r.body["projects"].as_array().unwrap().len(), 2);
    assert!(r.body["links"]["self"]
        .as_str()
        .unwrap()
        .ends_with("/v3/projects"));
    let r = call(&app, req(Method::GET, "/v3/projects?name=demo", tok, None)).await;
    assert_eq!(r.body["projects"].as_array().unwrap().len(), 1);
    assert_eq!(r.body["projects"][0]["id"], pid);
    let patch = json!({"project": {"name": "demo2", "description": "changed"}});
    let r = call(
        &app,
        req(
            Method::PATCH,
            &format!("/v3/projects/{pid}"),
            tok,
            Some(patch),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["project"]["name"], "demo2");
    let r = call(
        &app,
        req(Method::GET, &format!("/v3/projects/{pid}"), tok, None),
    )
    .await;
    assert_eq!(r.body["project"]["description"], "changed");
    let rename = json!({"project": {"name": "admin"}});
    let r = call(
        &app,
        req(
            Method::PATCH,
            &format!("/v3/projects/{pid}"),
            tok,
            Some(rename),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = call(&app, req(Method::GET, "/v3/projects/0000", tok, None)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Users.
    let body = json!({"user": {"name": "alice", "password": "pw-alice", "email": "a@x",
                                "domain_id": "default", "default_project_id": pid}});
    let r = call(
        &app,
        req(Method::POST, "/v3/users", tok, Some(body.clone())),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let uid = r.body["user"]["id"].as_str().unwrap().to_string();
    assert_eq!(r.body["user"]["email"], "a@x");
    assert!(r.body["user"].get("password").is_none());
    let r = call(&app, req(Method::POST, "/v3/users", tok, Some(body))).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = call(&app, req(Method::GET, "/v3/users?name=alice", tok, None)).await;
    assert_eq!(r.body["users"].as_array().unwrap().len(), 1);

    // Without a role alice cannot scope to demo2.
    let r = call(
        &app,
        req(
            Method::POST,
            "/v3/auth/tokens",
            None,
            Some(password_by_name("alice", "pw-alice", Some("demo2"))),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = tempauth_call(&tempauth, "demo2:alice", "pw-alice").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // Roles.
    let r = call(
        &app,
        req(
            Method::POST,
            "/v3/roles",
            tok,
            Some(json!({"role": {"name": "swiftoperator"}})),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let custom = r.body["role"]["id"].as_str().unwrap().to_string();
    let r = call(
        &app,
        req(
            Method::POST,
            "/v3/roles",
            tok,
            Some(json!({"role": {"name": "SwiftOperator"}})),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = call(&app, req(Method::GET, "/v3/roles?name=member", tok, None)).await;
    let member = r.body["roles"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(r.body["roles"].as_array().unwrap().len(), 1);

    // Grant member on demo2 to alice.
    let grant = format!("/v3/projects/{pid}/users/{uid}/roles/{member}");
    let r = call(&app, req(Method::HEAD, &grant, tok, None)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = call(&app, req(Method::PUT, &grant, tok, None)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = call(&app, req(Method::HEAD, &grant, tok, None)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = call(
        &app,
        req(
            Method::PUT,
            &format!("/v3/projects/{pid}/users/{uid}/roles/x"),
            tok,
            None,
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = call(
        &app,
        req(
            Method::GET,
            &format!("/v3/projects/{pid}/users/{uid}/roles"),
            tok,
            None,
        ),
    )
    .await;
    assert_eq!(r.body["roles"].as_array().unwrap().len(), 1);
    assert_eq!(r.body["roles"][0]["name"], "member");
    let r = call(
        &app,
        req(
            Method::GET,
            &format!("/v3/role_assignments?user.id={uid}&include_names"),
            tok,
            None,
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let ras = r.body["role_assignments"].as_array().unwrap();
    assert_eq!(ras.len(), 1);
    assert_eq!(ras[0]["scope"]["project"]["id"], pid);
    assert_eq!(ras[0]["role"]["name"], "member");
    // Names come with their domain's name, as openstackclient's --names shows them.
    assert_eq!(ras[0]["user"]["name"], "alice");
    assert_eq!(ras[0]["user"]["domain"]["name"], "Default");
    assert_eq!(ras[0]["scope"]["project"]["domain"]["id"], "default");
    assert_eq!(ras[0]["scope"]["project"]["domain"]["name"], "Default");
    assert!(ras[0]["links"].get("prior_role").is_none());
    // Effective: member implies reader, linked to the grant that gave it.
    let r = call(
        &app,
        req(
            Method::GET,
            &format!("/v3/role_assignments?user.id={uid}&effective&include_names=True"),
            tok,
            None,
        ),
    )
    .await;
    let ras = r.body["role_assignments"].as_array().unwrap();
    let names: Vec<_> = ras.iter().map(|a| a["role"]["name"].clone()).collect();
    assert_eq!(names, [json!("member"), json!("reader")]);
    assert!(ras[1]["links"]["prior_role"]
        .as_str()
        .unwrap()
        .ends_with(&format!("/v3/roles/{member}")));
    assert!(ras[1]["links"]["assignment"]
        .as_str()
        .unwrap()
        .ends_with(&grant));
    // include_names=0 is no names; grants Strata cannot hold match nothing.
    for q in ["include_names=0", "scope.domain.id=default", "group.id=x"] {
        let r = call(
            &app,
            req(
                Method::GET,
                &format!("/v3/role_assignments?user.id={uid}&{q}"),
                tok,
                None,
            ),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{q}");
        let ras = r.body["role_assignments"].as_array().unwrap();
        if q == "include_names=0" {
            assert_eq!(ras.len(), 1);
            assert!(ras[0]["role"].get("name").is_none());
        } else {
            assert!(ras.is_empty(), "{q}");
        }
    }
    let r = call(
        &app,
        req(
            Method::GET,
            "/v3/role_assignments?include_subtree=true",
            tok,
            None,
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = call(
        &app,
        req(
            Method::GET,
            &format!("/v3/role_assignments?scope.project.id={pid}"),
            tok,
            None,
        ),
    )
    .await;
    assert_eq!(r.body["role_assignments"].as_array().unwrap().len(), 1);
    let r = call(&app, req(Method::GET, "/v3/role_assignments", tok, None)).await;
    assert_eq!(r.body["role_assignments"].as_array().unwrap().len(), 2);

    // Now alice can log in (by default project too) and through TempAuth.
    let (alice, body) = login(&app, "alice", "pw-alice", None).await;
    assert_eq!(body["token"]["project"]["id"], pid);
    let roles: Vec<_> = body["token"]["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].clone())
        .collect();
    assert!(roles.contains(&json!("member")) && roles.contains(&json!("reader")));
    assert!(!roles.contains(&json!("admin")));
    let r = tempauth_call(&tempauth, "demo2:alice", "pw-alice").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.header("x-storage-url"),
        format!("http://10.0.0.1:8080/v1/AUTH_{pid}")
    );

    // A non-admin is refused the admin API, but may read itself.
    let a = Some(alice.as_str());
    for (m, path, body) in [
        (Method::GET, "/v3/projects".to_string(), None),
        (Method::GET, "/v3/users".to_string(), None),
        (Method::GET, "/v3/roles".to_string(), None),
        (Method::GET, "/v3/domains".to_string(), None),
        (Method::GET, "/v3/role_assignments".to_string(), None),
        (
            Method::POST,
            "/v3/projects".to_string(),
            Some(json!({"project": {"name": "x"}})),
        ),
        (Method::DELETE, format!("/v3/projects/{pid}"), None),
        (
            Method::PUT,
            format!("/v3/projects/{pid}/users/{uid}/roles/{custom}"),
            None,
        ),
    ] {
        let r = call(&app, req(m.clone(), &path, a, body)).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{m} {path}");
        assert_eq!(r.body["error"]["code"], 403);
        assert_eq!(r.body["error"]["title"], "Forbidden");
    }
    let r = call(&app, req(Method::GET, &format!("/v3/users/{uid}"), a, None)).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = call(&app, req(Method::GET, "/v3/auth/projects", a, None)).await;
    assert_eq!(r.body["projects"][0]["id"], pid);
    // No token at all: 401.
    let r = call(&app, req(Method::GET, "/v3/projects", None, None)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // Revoking the grant invalidates alice's token.
    let r = call(&app, req(Method::DELETE, &grant, tok, None)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(id.validate(&alice).await.is_err());
    let r = call(&app, req(Method::DELETE, &grant, tok, None)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = call(&app, req(Method::PUT, &grant, tok, None)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);

    // Password change: the old one stops working, the new one works.
    let patch = json!({"user": {"password": "pw2", "email": "b@x"}});
    let r = call(
        &app,
        req(Method::PATCH, &format!("/v3/users/{uid}"), tok, Some(patch)),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["user"]["email"], "b@x");
    let r = tempauth_call(&tempauth, "demo2:alice", "pw-alice").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let (alice2, _) = login(&app, "alice", "pw2", Some("demo2")).await;

    // Deleting a role, a user and a project.
    let r = call(
        &app,
        req(Method::DELETE, &format!("/v3/roles/{custom}"), tok, None),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = call(
        &app,
        req(Method::DELETE, &format!("/v3/roles/{custom}"), tok, None),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = call(
        &app,
        req(Method::DELETE, &format!("/v3/users/{uid}"), tok, None),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(id.validate(&alice2).await.is_err());
    let r = call(
        &app,
        req(Method::GET, &format!("/v3/users/{uid}"), tok, None),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = call(
        &app,
        req(
            Method::GET,
            &format!("/v3/role_assignments?user.id={uid}"),
            tok,
            None,
        ),
    )
    .await;
    assert!(r.body["role_assignments"].as_array().unwrap().is_empty());
    let r = call(
        &app,
        req(Method::DELETE, &format!("/v3/projects/{pid}"), tok, None),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = call(
        &app,
        req(Method::GET, &format!("/v3/projects/{pid}"), tok, None),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // The name is free again.
    let body = json!({"project": {"name": "demo2"}});
    let r = call(&app, req(Method::POST, "/v3/projects", tok, Some(body))).await;
    assert_eq!(r.status, StatusCode::CREATED);
    // The admin's own token survived all of it.
    assert!(id.validate(&adm).await.is_ok());
}

async fn tempauth_call(app: &Router, user: &str, key: &str) -> Reply {
    tempauth(
        app,
        "/auth/v1.0",
        &[("x-auth-user", user), ("x-auth-key", key)],
    )
    .await
}

#[tokio::test]
async fn disabled_project_and_user_lose_access() {
    let id = setup().await;
    let app = id.router();
    let adm = admin_token(&app).await;
    let tok = Some(adm.as_str());
    let r = call(
        &app,
        req(
            Method::POST,
            "/v3/projects",
            tok,
            Some(json!({"project": {"name": "p"}})),
        ),
    )
    .await;
    let pid = r.body["project"]["id"].as_str().unwrap().to_string();
    let r = call(
        &app,
        req(
            Method::POST,
            "/v3/users",
            tok,
            Some(json!({"user": {"name": "bob", "password": "b"}})),
        ),
    )
    .await;
    let uid = r.body["user"]["id"].as_str().unwrap().to_string();
    let rid = id.store.role_by_name("reader").await.unwrap().unwrap().id;
    let r = call(
        &app,
        req(
            Method::PUT,
            &format!("/v3/projects/{pid}/users/{uid}/roles/{rid}"),
            tok,
            None,
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let (bob, _) = login(&app, "bob", "b", Some("p")).await;
    assert_eq!(id.validate(&bob).await.unwrap().roles, ["reader"]);

    let off = json!({"project": {"enabled": false}});
    let r = call(
        &app,
        req(
            Method::PATCH,
            &format!("/v3/projects/{pid}"),
            tok,
            Some(off),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(id.validate(&bob).await.is_err());
    let r = call(
        &app,
        req(
            Method::POST,
            "/v3/auth/tokens",
            None,
            Some(password_by_name("bob", "b", Some("p"))),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let on = json!({"project": {"enabled": true}});
    call(
        &app,
        req(Method::PATCH, &format!("/v3/projects/{pid}"), tok, Some(on)),
    )
    .await;
    // A token issued after the revocation is valid.
    let (bob, _) = login(&app, "bob", "b", Some("p")).await;
    assert!(id.validate(&bob).await.is_ok());

    let off = json!({"user": {"enabled": false}});
    let r = call(
        &app,
        req(Method::PATCH, &format!("/v3/users/{uid}"), tok, Some(off)),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["user"]["enabled"], false);
    assert!(id.validate(&bob).await.is_err());
    let r = call(
        &app,
        req(
            Method::POST,
            "/v3/auth/tokens",
            None,
            Some(password_by_name("bob", "b", Some("p"))),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}
