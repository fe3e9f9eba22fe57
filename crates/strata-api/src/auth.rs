//! The authenticated caller, as every gateway sees it.

use crate::fault::Fault;
use futures::future::BoxFuture;
use http::HeaderMap;
use serde::{Deserialize, Serialize};

/// Who is calling, resolved from a validated token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthContext {
    pub user_id: String,
    pub user_name: String,
    /// Empty for an unscoped token.
    pub project_id: String,
    /// Empty for an unscoped token.
    pub project_name: String,
    /// The domain of the user.
    pub domain_id: String,
    /// Role names on the project.
    pub roles: Vec<String>,
    pub expires_at_unix: i64,
    pub audit_id: String,
}

impl AuthContext {
    /// Whether the caller holds `role` on its project (role names compare case-insensitively).
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r.eq_ignore_ascii_case(role))
    }

    /// Whether the caller holds the `admin` role.
    pub fn is_admin(&self) -> bool {
        self.has_role("admin")
    }

    /// Whether the caller may change things: an admin or member, or anyone who is not
    /// only a `reader`.
    pub fn may_write(&self) -> bool {
        self.is_admin() || self.has_role("member") || !self.has_role("reader")
    }

    /// Whether the token is scoped to a project.
    pub fn is_scoped(&self) -> bool {
        !self.project_id.is_empty()
    }
}

/// Something that turns a token into an [`AuthContext`], so a gateway need not know
/// where tokens come from.
pub trait TokenValidator: Send + Sync + 'static {
    /// Validate `token`; a 401 fault when it is not valid.
    fn validate_token<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<AuthContext, Fault>>;
}

/// The caller's token: `X-Auth-Token`, or Swift's `X-Storage-Token`.
pub fn auth_token(headers: &HeaderMap) -> Option<&str> {
    ["x-auth-token", "x-storage-token"]
        .iter()
        .filter_map(|h| headers.get(*h))
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .find(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_compare_case_insensitively() {
        let ctx = AuthContext {
            roles: vec!["Admin".into(), "member".into()],
            ..Default::default()
        };
        assert!(ctx.is_admin());
        assert!(ctx.has_role("MEMBER"));
        assert!(!ctx.has_role("reader"));
        assert!(!AuthContext::default().is_admin());
        assert!(!ctx.is_scoped());
        assert!(ctx.may_write());
        let reader = AuthContext {
            roles: vec!["reader".into()],
            ..Default::default()
        };
        assert!(!reader.may_write());
    }

    #[test]
    fn token_header_lookup() {
        let mut h = HeaderMap::new();
        assert_eq!(auth_token(&h), None);
        h.insert("x-storage-token", "abc".parse().unwrap());
        assert_eq!(auth_token(&h), Some("abc"));
        h.insert("x-auth-token", "def".parse().unwrap());
        assert_eq!(auth_token(&h), Some("def"));
    }
}
