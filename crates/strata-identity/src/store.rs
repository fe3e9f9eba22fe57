//! Identity records and their tables in the meta store. Values are JSON.

use crate::IdentityError;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use strata_meta::{Check, MetaStore, Op, Txn};

pub const CONFIG: &str = "identity.config";
pub const DOMAINS: &str = "identity.domains";
pub const DOMAIN_NAMES: &str = "identity.domain_names";
pub const PROJECTS: &str = "identity.projects";
pub const PROJECT_NAMES: &str = "identity.project_names";
pub const USERS: &str = "identity.users";
pub const USER_NAMES: &str = "identity.user_names";
pub const ROLES: &str = "identity.roles";
pub const ROLE_NAMES: &str = "identity.role_names";
/// Key `<project id>/<user id>/<role id>`.
pub const ASSIGNMENTS: &str = "identity.assignments";
/// Keys `audit/<audit id>`, `user/<user id>`, `project/<project id>`,
/// `grant/<user id>/<project id>`; values [`Revocation`].
pub const REVOCATIONS: &str = "identity.revocations";

pub const SECRET_KEY: &str = "token_secret";
pub const DEFAULT_DOMAIN: &str = "default";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainRec {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectRec {
    pub id: String,
    pub name: String,
    pub domain_id: String,
    #[serde(default)]
    pub description: String,
    pub enabled: bool,
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRec {
    pub id: String,
    pub name: String,
    pub domain_id: String,
    pub enabled: bool,
    #[serde(default)]
    pub password_hash: Option<String>,
    #[serde(default)]
    pub default_project_id: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// Other attributes a client set (e.g. `email`), returned as given.
    #[serde(default)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleRec {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
}

/// Tokens issued at or before `at_us` (unix microseconds) are revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub at_us: i64,
}

/// A role assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub project_id: String,
    pub user_id: String,
    pub role_id: String,
}

impl Assignment {
    pub fn key(&self) -> String {
        assignment_key(&self.project_id, &self.user_id, &self.role_id)
    }
    pub fn parse(key: &str) -> Option<Assignment> {
        let mut it = key.split('/');
        let (Some(p), Some(u), Some(r), None) = (it.next(), it.next(), it.next(), it.next()) else {
            return None;
        };
        Some(Assignment {
            project_id: p.into(),
            user_id: u.into(),
            role_id: r.into(),
        })
    }
}

pub fn assignment_key(project_id: &str, user_id: &str, role_id: &str) -> String {
    format!("{project_id}/{user_id}/{role_id}")
}

/// Name index key of a domain or role: names compare case-insensitively.
pub fn folded_name_key(name: &str) -> String {
    name.to_lowercase()
}

/// Name index key of a project or user: unique per domain.
pub fn scoped_name_key(domain_id: &str, name: &str) -> String {
    format!("{domain_id}/{name}")
}

pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("identity records serialize")
}

pub fn put<T: Serialize>(table: &str, key: &str, v: &T) -> Op {
    Op::Put {
        table: table.into(),
        key: key.into(),
        value: encode(v),
    }
}

pub fn del(table: &str, key: &str) -> Op {
    Op::Delete {
        table: table.into(),
        key: key.into(),
    }
}

pub fn absent(table: &str, key: &str) -> Check {
    Check::Absent {
        table: table.into(),
        key: key.into(),
    }
}

pub fn present(table: &str, key: &str) -> Check {
    Check::Present {
        table: table.into(),
        key: key.into(),
    }
}

pub fn equals(table: &str, key: &str, value: Vec<u8>) -> Check {
    Check::Equals {
        table: table.into(),
        key: key.into(),
        value,
    }
}

/// Typed access to the identity tables.
#[derive(Clone)]
pub struct Store {
    pub meta: Arc<dyn MetaStore>,
}

fn decode<T: DeserializeOwned>(table: &str, key: &str, v: &[u8]) -> Result<T, IdentityError> {
    serde_json::from_slice(v)
        .map_err(|e| IdentityError::Internal(format!("corrupt record {table}/{key}: {e}")))
}

const PAGE: usize = 1000;

impl Store {
    /// Linearizable read of one record.
    pub async fn get<T: DeserializeOwned>(
        &self,
        table: &str,
        key: &str,
    ) -> Result<Option<T>, IdentityError> {
        match self.meta.get(table, key).await? {
            Some(v) => decode(table, key, &v).map(Some),
            None => Ok(None),
        }
    }

    /// Linearizable read of one record with its raw bytes (for compare-and-set).
    pub async fn get_raw<T: DeserializeOwned>(
        &self,
        table: &str,
        key: &str,
    ) -> Result<Option<(T, Vec<u8>)>, IdentityError> {
        match self.meta.get(table, key).await? {
            Some(v) => Ok(Some((decode(table, key, &v)?, v))),
            None => Ok(None),
        }
    }

    /// This node's view of one record.
    pub fn get_local<T: DeserializeOwned>(&self, table: &str, key: &str) -> Option<T> {
        self.meta
            .get_local(table, key)
            .and_then(|v| serde_json::from_slice(&v).ok())
    }

    /// Linearizable read of a name index entry (an id).
    pub async fn get_id(&self, table: &str, key: &str) -> Result<Option<String>, IdentityError> {
        self.get::<String>(table, key).await
    }

    /// All keys and records of `table` under `prefix`.
    pub async fn scan<T: DeserializeOwned>(
        &self,
        table: &str,
        prefix: &str,
    ) -> Result<Vec<(String, T)>, IdentityError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .meta
                .scan(table, prefix, after.as_deref(), PAGE)
                .await?;
            let n = page.len();
            for (k, v) in page {
                let rec = decode(table, &k, &v)?;
                after = Some(k.clone());
                out.push((k, rec));
            }
            if n < PAGE {
                return Ok(out);
            }
        }
    }

    /// All keys of `table` under `prefix`.
    pub async fn scan_keys(&self, table: &str, prefix: &str) -> Result<Vec<String>, IdentityError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .meta
                .scan(table, prefix, after.as_deref(), PAGE)
                .await?;
            let n = page.len();
            for (k, _) in page {
                after = Some(k.clone());
                out.push(k);
            }
            if n < PAGE {
                return Ok(out);
            }
        }
    }

    /// Commit; whether the checks held.
    pub async fn write(&self, checks: Vec<Check>, ops: Vec<Op>) -> Result<bool, IdentityError> {
        Ok(self.meta.write(Txn { checks, ops }).await?.succeeded)
    }

    /// All assignments (optionally under one project).
    pub async fn assignments(
        &self,
        project_id: Option<&str>,
    ) -> Result<Vec<Assignment>, IdentityError> {
        let prefix = project_id.map(|p| format!("{p}/")).unwrap_or_default();
        Ok(self
            .scan_keys(ASSIGNMENTS, &prefix)
            .await?
            .iter()
            .filter_map(|k| Assignment::parse(k))
            .collect())
    }

    /// Role ids `user_id` holds directly on `project_id`.
    pub async fn role_ids_on(
        &self,
        project_id: &str,
        user_id: &str,
    ) -> Result<Vec<String>, IdentityError> {
        let prefix = format!("{project_id}/{user_id}/");
        Ok(self
            .scan_keys(ASSIGNMENTS, &prefix)
            .await?
            .iter()
            .filter_map(|k| Assignment::parse(k))
            .map(|a| a.role_id)
            .collect())
    }

    pub async fn domain(&self, id: &str) -> Result<Option<DomainRec>, IdentityError> {
        self.get(DOMAINS, id).await
    }

    pub async fn project(&self, id: &str) -> Result<Option<ProjectRec>, IdentityError> {
        self.get(PROJECTS, id).await
    }

    pub async fn user(&self, id: &str) -> Result<Option<UserRec>, IdentityError> {
        self.get(USERS, id).await
    }

    pub async fn role(&self, id: &str) -> Result<Option<RoleRec>, IdentityError> {
        self.get(ROLES, id).await
    }

    /// A domain by id, else by name (case-insensitive).
    pub async fn domain_by_ref(
        &self,
        id: Option<&str>,
        name: Option<&str>,
    ) -> Result<Option<DomainRec>, IdentityError> {
        if let Some(id) = id {
            return self.domain(id).await;
        }
        if let Some(name) = name {
            if let Some(id) = self.get_id(DOMAIN_NAMES, &folded_name_key(name)).await? {
                return self.domain(&id).await;
            }
        }
        Ok(None)
    }

    pub async fn project_by_name(
        &self,
        domain_id: &str,
        name: &str,
    ) -> Result<Option<ProjectRec>, IdentityError> {
        match self
            .get_id(PROJECT_NAMES, &scoped_name_key(domain_id, name))
            .await?
        {
            Some(id) => self.project(&id).await,
            None => Ok(None),
        }
    }

    pub async fn user_by_name(
        &self,
        domain_id: &str,
        name: &str,
    ) -> Result<Option<UserRec>, IdentityError> {
        match self
            .get_id(USER_NAMES, &scoped_name_key(domain_id, name))
            .await?
        {
            Some(id) => self.user(&id).await,
            None => Ok(None),
        }
    }

    pub async fn role_by_name(&self, name: &str) -> Result<Option<RoleRec>, IdentityError> {
        match self.get_id(ROLE_NAMES, &folded_name_key(name)).await? {
            Some(id) => self.role(&id).await,
            None => Ok(None),
        }
    }

    /// Whether a revocation record of `key` covers a token issued at `issued_us`.
    pub fn revoked_local(&self, key: &str, issued_us: i64) -> bool {
        self.get_local::<Revocation>(REVOCATIONS, key)
            .is_some_and(|r| issued_us <= r.at_us)
    }
}
