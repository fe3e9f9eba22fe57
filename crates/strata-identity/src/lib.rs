//! Identity: a Keystone v3 subset, Swift TempAuth, and signed tokens that any node
//! validates without a lookup. Everything it owns lives in `identity.*` tables of the
//! meta store.

mod admin;
mod catalog;
mod keystone;
pub mod password;
mod store;
mod tempauth;
pub mod token;

pub use catalog::CatalogConfig;
pub use strata_api::AuthContext;

use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use http::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use store::*;
use strata_api::{Fault, TokenValidator};
use strata_meta::{MetaError, MetaStore};
use token::{ProjectScope, TokenPayload, TOKEN_VERSION};

/// Default token lifetime: 24 hours.
pub const DEFAULT_TOKEN_TTL_SECS: i64 = 24 * 3600;

/// The roles bootstrap creates.
pub const BOOTSTRAP_ROLES: [&str; 4] = ["admin", "member", "reader", "ResellerAdmin"];

/// Role inference as Keystone's bootstrap sets it up: admin implies member implies reader.
pub(crate) const IMPLIED_ROLES: [(&str, &str); 2] = [("admin", "member"), ("member", "reader")];

/// Errors of the identity service.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Bad or missing credentials or token; the detail is only logged.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("identity unavailable: {0}")]
    Unavailable(String),
    #[error("meta store: {0}")]
    Meta(#[from] MetaError),
    #[error("internal: {0}")]
    Internal(String),
}

impl IdentityError {
    fn unauthorized(why: impl Into<String>) -> Self {
        IdentityError::Unauthorized(why.into())
    }

    /// The Keystone style fault for this error.
    pub fn to_fault(&self) -> Fault {
        match self {
            IdentityError::Unauthorized(why) => {
                tracing::debug!(reason = %why, "authentication failed");
                Fault::unauthorized()
            }
            IdentityError::Forbidden(m) => Fault::forbidden(m.clone()),
            IdentityError::NotFound(m) => Fault::not_found(m.clone()),
            IdentityError::Conflict(m) => Fault::conflict(m.clone()),
            IdentityError::BadRequest(m) => {
                tracing::info!(message = %m, "bad identity request");
                Fault::bad_request(m.clone())
            }
            IdentityError::Unavailable(m) => Fault::service_unavailable(m.clone()),
            IdentityError::Meta(e @ (MetaError::NoLeader | MetaError::Timeout { .. })) => {
                Fault::service_unavailable(format!("Metadata service unavailable: {e}"))
            }
            IdentityError::Meta(e) => Fault::internal(format!("Metadata error: {e}")),
            IdentityError::Internal(m) => Fault::internal(m.clone()),
        }
    }
}

impl From<IdentityError> for Fault {
    fn from(e: IdentityError) -> Fault {
        e.to_fault()
    }
}

impl IntoResponse for IdentityError {
    fn into_response(self) -> Response {
        self.to_fault().into_response()
    }
}

#[derive(Serialize, Deserialize)]
struct SecretRec {
    secret: String,
}

/// Current time in unix microseconds.
pub(crate) fn now_us() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64
}

/// The identity service of one node.
pub struct Identity {
    store: Store,
    catalog: CatalogConfig,
    secret: OnceLock<Vec<u8>>,
    token_ttl_secs: AtomicI64,
    pw_cache: password::VerifyCache,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("catalog", &self.catalog)
            .finish_non_exhaustive()
    }
}

impl Identity {
    pub fn new(meta: Arc<dyn MetaStore>, catalog: CatalogConfig) -> Arc<Identity> {
        Arc::new(Identity {
            store: Store { meta },
            catalog,
            secret: OnceLock::new(),
            token_ttl_secs: AtomicI64::new(DEFAULT_TOKEN_TTL_SECS),
            pw_cache: password::VerifyCache::default(),
        })
    }

    pub fn catalog_config(&self) -> &CatalogConfig {
        &self.catalog
    }

    /// Lifetime of tokens issued from now on.
    pub fn set_token_ttl(&self, secs: i64) {
        self.token_ttl_secs.store(secs.max(1), Ordering::Relaxed);
    }

    pub fn token_ttl_secs(&self) -> i64 {
        self.token_ttl_secs.load(Ordering::Relaxed)
    }

    /// Create what is missing of: domain `default`, project `admin`, user `admin`, the
    /// roles admin, member, reader and ResellerAdmin, the assignment admin on admin as
    /// admin, and the token signing secret. Safe to run on several nodes at once.
    pub async fn bootstrap(&self, admin_password: &str) -> Result<(), IdentityError> {
        let s = &self.store;
        // Signing secret.
        let mut raw = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut raw);
        let rec = SecretRec {
            secret: hex::encode(raw),
        };
        s.write(
            vec![absent(CONFIG, SECRET_KEY)],
            vec![put(CONFIG, SECRET_KEY, &rec)],
        )
        .await?;
        self.secret().await?;

        // Default domain.
        let domain = DomainRec {
            id: DEFAULT_DOMAIN.into(),
            name: "Default".into(),
            description: "The default domain".into(),
            enabled: true,
        };
        let dkey = folded_name_key(&domain.name);
        s.write(
            vec![absent(DOMAINS, DEFAULT_DOMAIN), absent(DOMAIN_NAMES, &dkey)],
            vec![
                put(DOMAINS, DEFAULT_DOMAIN, &domain),
                put(DOMAIN_NAMES, &dkey, &domain.id),
            ],
        )
        .await?;

        // Roles.
        let mut admin_role = String::new();
        for name in BOOTSTRAP_ROLES {
            let id = new_id();
            let rec = RoleRec {
                id: id.clone(),
                name: name.into(),
                description: None,
            };
            let id = self
                .ensure_named(ROLES, ROLE_NAMES, &folded_name_key(name), &id, &rec)
                .await?;
            if name == "admin" {
                admin_role = id;
            }
        }

        // Project.
        let id = new_id();
        let project = ProjectRec {
            id: id.clone(),
            name: "admin".into(),
            domain_id: DEFAULT_DOMAIN.into(),
            description: "Bootstrap project for initializing the cloud.".into(),
            enabled: true,
            tags: vec![],
        };
        let pkey = scoped_name_key(DEFAULT_DOMAIN, "admin");
        let project_id = self
            .ensure_named(PROJECTS, PROJECT_NAMES, &pkey, &id, &project)
            .await?;

        // User.
        let ukey = scoped_name_key(DEFAULT_DOMAIN, "admin");
        let user_id = match s.user_by_name(DEFAULT_DOMAIN, "admin").await? {
            Some(u) => {
                self.warn_if_password_differs(&u, admin_password);
                u.id
            }
            None => {
                let id = new_id();
                let user = UserRec {
                    id: id.clone(),
                    name: "admin".into(),
                    domain_id: DEFAULT_DOMAIN.into(),
                    enabled: true,
                    password_hash: Some(password::hash_password(admin_password)),
                    default_project_id: Some(project_id.clone()),
                    description: None,
                    extra: Default::default(),
                };
                let uid = self
                    .ensure_named(USERS, USER_NAMES, &ukey, &id, &user)
                    .await?;
                if uid != id {
                    if let Some(u) = s.user(&uid).await? {
                        self.warn_if_password_differs(&u, admin_password);
                    }
                }
                uid
            }
        };

        // Assignment.
        let akey = assignment_key(&project_id, &user_id, &admin_role);
        s.write(
            vec![absent(ASSIGNMENTS, &akey)],
            vec![put(ASSIGNMENTS, &akey, &())],
        )
        .await?;
        tracing::info!(%project_id, %user_id, "identity bootstrap complete");
        Ok(())
    }

    fn warn_if_password_differs(&self, user: &UserRec, password: &str) {
        let matches = user
            .password_hash
            .as_deref()
            .is_some_and(|h| self.pw_cache.verify(password, h));
        if !matches {
            tracing::warn!(
                "user admin already exists with a different password; --admin-password was \
                 ignored and the stored password kept"
            );
        }
    }

    /// Insert `rec` under `id` with the unique name `name_key`, unless the name is taken;
    /// the id that holds the name either way.
    async fn ensure_named<T: Serialize>(
        &self,
        table: &str,
        names: &str,
        name_key: &str,
        id: &str,
        rec: &T,
    ) -> Result<String, IdentityError> {
        for _ in 0..5 {
            if let Some(existing) = self.store.get_id(names, name_key).await? {
                return Ok(existing);
            }
            let done = self
                .store
                .write(
                    vec![absent(names, name_key), absent(table, id)],
                    vec![put(table, id, rec), put(names, name_key, &id)],
                )
                .await?;
            if done {
                return Ok(id.to_string());
            }
        }
        Err(IdentityError::Conflict(format!(
            "could not create {name_key} in {table}"
        )))
    }

    /// The signing secret, loaded once from the meta store.
    async fn secret(&self) -> Result<&[u8], IdentityError> {
        if let Some(s) = self.secret.get() {
            return Ok(s);
        }
        let raw = match self.store.meta.get_local(CONFIG, SECRET_KEY) {
            Some(v) => Some(v),
            None => self.store.meta.get(CONFIG, SECRET_KEY).await?,
        };
        let raw = raw.ok_or_else(|| {
            IdentityError::Unavailable("identity is not bootstrapped (no signing secret)".into())
        })?;
        let rec: SecretRec = serde_json::from_slice(&raw)
            .map_err(|e| IdentityError::Internal(format!("corrupt signing secret: {e}")))?;
        let bytes = hex::decode(rec.secret)
            .map_err(|e| IdentityError::Internal(format!("corrupt signing secret: {e}")))?;
        let _ = self.secret.set(bytes);
        Ok(self.secret.get().map(Vec::as_slice).unwrap_or_default())
    }

    /// Check a token's signature, expiry and revocation; who it speaks for.
    pub async fn validate(&self, token: &str) -> Result<AuthContext, IdentityError> {
        let p = self.validate_payload(token).await?;
        Ok(context_of(&p))
    }

    /// [`Identity::validate`], returning the whole payload.
    pub(crate) async fn validate_payload(
        &self,
        token: &str,
    ) -> Result<TokenPayload, IdentityError> {
        let secret = self.secret().await?;
        let p = token::verify_at(secret, token, now_us())
            .map_err(|e| IdentityError::unauthorized(e.to_string()))?;
        if self.is_revoked(&p) {
            return Err(IdentityError::unauthorized(
                token::TokenError::Revoked.to_string(),
            ));
        }
        Ok(p)
    }

    fn is_revoked(&self, p: &TokenPayload) -> bool {
        let s = &self.store;
        let t = p.issued_us;
        if s.revoked_local(&format!("audit/{}", p.audit_id()), i64::MIN)
            || s.revoked_local(&format!("user/{}", p.user_id), t)
        {
            return true;
        }
        match &p.project {
            Some(proj) => {
                s.revoked_local(&format!("project/{}", proj.id), t)
                    || s.revoked_local(&format!("grant/{}/{}", p.user_id, proj.id), t)
            }
            None => false,
        }
    }

    /// Revoke one token (by its audit id). It must be valid now.
    pub async fn revoke(&self, token: &str) -> Result<(), IdentityError> {
        let p = self.validate_payload(token).await?;
        self.store
            .write(
                vec![],
                vec![put(
                    REVOCATIONS,
                    &format!("audit/{}", p.audit_id()),
                    &Revocation {
                        at_us: p.expires_us,
                    },
                )],
            )
            .await?;
        Ok(())
    }

    /// Revocation record: tokens matching `key` issued until now are no longer valid.
    pub(crate) fn revoke_op(key: &str) -> strata_meta::Op {
        put(REVOCATIONS, key, &Revocation { at_us: now_us() })
    }

    /// Whether `password` is `user`'s.
    pub(crate) fn password_ok(&self, user: &UserRec, password: &str) -> bool {
        user.password_hash
            .as_deref()
            .is_some_and(|h| self.pw_cache.verify(password, h))
    }

    /// The roles `user_id` has on `project_id`, implied ones included.
    pub(crate) async fn effective_roles(
        &self,
        user_id: &str,
        project_id: &str,
    ) -> Result<Vec<RoleRec>, IdentityError> {
        let mut roles = Vec::new();
        for id in self.store.role_ids_on(project_id, user_id).await? {
            if let Some(r) = self.store.role(&id).await? {
                roles.push(r);
            }
        }
        let mut names: BTreeSet<String> = roles.iter().map(|r| r.name.to_lowercase()).collect();
        for (holder, implied) in IMPLIED_ROLES {
            if names.contains(holder) && !names.contains(implied) {
                if let Some(r) = self.store.role_by_name(implied).await? {
                    names.insert(implied.to_string());
                    roles.push(r);
                }
            }
        }
        Ok(roles)
    }

    /// Sign a new token. `parent` is the token this one is re-scoped from.
    pub(crate) async fn issue(
        &self,
        user: &UserRec,
        scope: Option<(&ProjectRec, &[RoleRec])>,
        methods: Vec<String>,
        parent: Option<&TokenPayload>,
    ) -> Result<(String, TokenPayload), IdentityError> {
        let secret = self.secret().await?;
        let now = now_us();
        let expires_us = match parent {
            Some(p) => p.expires_us,
            None => now + self.token_ttl_secs() * 1_000_000,
        };
        let mut audit_ids = vec![token::new_audit_id()];
        if let Some(p) = parent {
            audit_ids.push(p.audit_ids.last().cloned().unwrap_or_default());
        }
        let payload = TokenPayload {
            v: TOKEN_VERSION,
            user_id: user.id.clone(),
            user_name: user.name.clone(),
            user_domain_id: user.domain_id.clone(),
            project: scope.map(|(p, _)| ProjectScope {
                id: p.id.clone(),
                name: p.name.clone(),
                domain_id: p.domain_id.clone(),
            }),
            roles: scope
                .map(|(_, r)| r.iter().map(|r| r.name.clone()).collect())
                .unwrap_or_default(),
            methods,
            issued_us: now,
            expires_us,
            audit_ids,
        };
        Ok((token::sign(secret, &payload), payload))
    }

    /// Check that `project` (and its domain) are enabled and that `user` has a role on it;
    /// the user's roles there.
    pub(crate) async fn roles_for_scope(
        &self,
        user: &UserRec,
        project: &ProjectRec,
    ) -> Result<Vec<RoleRec>, IdentityError> {
        if !project.enabled {
            return Err(IdentityError::unauthorized(format!(
                "project {} disabled",
                project.id
            )));
        }
        if let Some(d) = self.store.domain(&project.domain_id).await? {
            if !d.enabled {
                return Err(IdentityError::unauthorized(format!(
                    "domain {} disabled",
                    d.id
                )));
            }
        }
        let roles = self.effective_roles(&user.id, &project.id).await?;
        if roles.is_empty() {
            return Err(IdentityError::unauthorized(format!(
                "user {} has no role on project {}",
                user.id, project.id
            )));
        }
        Ok(roles)
    }

    /// Keystone's router (port 5000).
    pub fn router(self: &Arc<Self>) -> axum::Router {
        strata_api::with_request_id(keystone::router(self.clone()))
    }

    /// The TempAuth routes, to merge into the Swift router.
    pub fn tempauth_router(self: &Arc<Self>) -> axum::Router {
        tempauth::router(self.clone())
    }

    fn www_authenticate(&self) -> (HeaderName, HeaderValue) {
        let v = format!(
            "Keystone uri=\"{}\"",
            self.catalog.identity_url.trim_end_matches('/')
        );
        (
            HeaderName::from_static("www-authenticate"),
            HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static("Keystone")),
        )
    }
}

/// The [`AuthContext`] a token payload speaks for.
pub(crate) fn context_of(p: &TokenPayload) -> AuthContext {
    AuthContext {
        user_id: p.user_id.clone(),
        user_name: p.user_name.clone(),
        project_id: p.project.as_ref().map(|s| s.id.clone()).unwrap_or_default(),
        project_name: p
            .project
            .as_ref()
            .map(|s| s.name.clone())
            .unwrap_or_default(),
        domain_id: p.user_domain_id.clone(),
        roles: p.roles.clone(),
        expires_at_unix: p.expires_us.div_euclid(1_000_000),
        audit_id: p.audit_id().to_string(),
    }
}

impl TokenValidator for Identity {
    fn validate_token<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<AuthContext, Fault>> {
        Box::pin(async move { self.validate(token).await.map_err(Fault::from) })
    }
}

#[cfg(test)]
mod tests;
