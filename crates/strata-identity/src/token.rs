//! Self-contained signed tokens: `<base64url(JSON payload)>.<base64url(HMAC-SHA256)>`.
//! Any node holding the signing secret validates one without a lookup.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The payload version this code writes and accepts.
pub const TOKEN_VERSION: u8 = 1;

/// The project a token is scoped to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectScope {
    #[serde(rename = "i")]
    pub id: String,
    #[serde(rename = "n")]
    pub name: String,
    #[serde(rename = "d")]
    pub domain_id: String,
}

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenPayload {
    pub v: u8,
    #[serde(rename = "u")]
    pub user_id: String,
    #[serde(rename = "un")]
    pub user_name: String,
    #[serde(rename = "ud")]
    pub user_domain_id: String,
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none")]
    pub project: Option<ProjectScope>,
    /// Role names on the project.
    #[serde(rename = "r", default)]
    pub roles: Vec<String>,
    #[serde(rename = "m", default)]
    pub methods: Vec<String>,
    /// Issue time, unix microseconds.
    #[serde(rename = "iat")]
    pub issued_us: i64,
    /// Expiry, unix microseconds.
    #[serde(rename = "exp")]
    pub expires_us: i64,
    /// This token's audit id first, then the audit id of the token it was re-scoped from.
    #[serde(rename = "a")]
    pub audit_ids: Vec<String>,
}

impl TokenPayload {
    pub fn audit_id(&self) -> &str {
        self.audit_ids.first().map(String::as_str).unwrap_or("")
    }

    pub fn is_expired(&self, now_us: i64) -> bool {
        now_us >= self.expires_us
    }
}

/// Why a token string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("bad token signature")]
    BadSignature,
    #[error("unsupported token version {0}")]
    Version(u8),
    #[error("token expired")]
    Expired,
    #[error("token revoked")]
    Revoked,
}

/// A random audit id: 16 bytes, base64url (22 characters), as Keystone's.
pub fn new_audit_id() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    B64.encode(b)
}

fn mac(secret: &[u8], data: &[u8]) -> Hmac<Sha256> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(data);
    m
}

/// Serialize and sign `payload`.
pub fn sign(secret: &[u8], payload: &TokenPayload) -> String {
    let json = serde_json::to_vec(payload).expect("token payload serializes");
    let body = B64.encode(json);
    let sig = mac(secret, body.as_bytes()).finalize().into_bytes();
    format!("{body}.{}", B64.encode(sig))
}

/// Check the signature and version of `token` and decode it. Expiry and revocation are
/// the caller's to check.
pub fn verify(secret: &[u8], token: &str) -> Result<TokenPayload, TokenError> {
    let (body, sig) = token.trim().split_once('.').ok_or(TokenError::Malformed)?;
    let sig = B64.decode(sig).map_err(|_| TokenError::Malformed)?;
    mac(secret, body.as_bytes())
        .verify_slice(&sig)
        .map_err(|_| TokenError::BadSignature)?;
    let json = B64.decode(body).map_err(|_| TokenError::Malformed)?;
    let payload: TokenPayload = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
    if payload.v != TOKEN_VERSION {
        return Err(TokenError::Version(payload.v));
    }
    Ok(payload)
}

/// [`verify`] plus expiry against `now_us`.
pub fn verify_at(secret: &[u8], token: &str, now_us: i64) -> Result<TokenPayload, TokenError> {
    let p = verify(secret, token)?;
    if p.is_expired(now_us) {
        return Err(TokenError::Expired);
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload() -> TokenPayload {
        TokenPayload {
            v: TOKEN_VERSION,
            user_id: "u1".into(),
            user_name: "alice".into(),
            user_domain_id: "default".into(),
            project: Some(ProjectScope {
                id: "p1".into(),
                name: "demo".into(),
                domain_id: "default".into(),
            }),
            roles: vec!["member".into()],
            methods: vec!["password".into()],
            issued_us: 1_000_000,
            expires_us: 2_000_000,
            audit_ids: vec![new_audit_id()],
        }
    }

    #[test]
    fn sign_then_verify() {
        let p = payload();
        let t = sign(b"secret", &p);
        assert!(!t.contains(['+', '/', '=']));
        assert_eq!(verify(b"secret", &t).unwrap(), p);
        assert_eq!(verify_at(b"secret", &t, 1_500_000).unwrap(), p);
        assert_eq!(p.audit_id().len(), 22);
    }

    #[test]
    fn expiry() {
        let t = sign(b"secret", &payload());
        assert_eq!(
            verify_at(b"secret", &t, 2_000_000),
            Err(TokenError::Expired)
        );
        assert_eq!(
            verify_at(b"secret", &t, 3_000_000),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn tampering_is_detected() {
        let t = sign(b"secret", &payload());
        assert_eq!(verify(b"other", &t), Err(TokenError::BadSignature));
        // Swap in a payload with more roles, keeping the old signature.
        let (_, sig) = t.split_once('.').unwrap();
        let mut p = payload();
        p.roles.push("admin".into());
        let forged_body = sign(b"attacker", &p);
        let (body, _) = forged_body.split_once('.').unwrap();
        assert_eq!(
            verify(b"secret", &format!("{body}.{sig}")),
            Err(TokenError::BadSignature)
        );
        // Flip one character of the signature.
        let mut bad = t.clone().into_bytes();
        let last = bad.len() - 2;
        bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
        assert!(verify(b"secret", std::str::from_utf8(&bad).unwrap()).is_err());
        assert_eq!(verify(b"secret", "no-dot"), Err(TokenError::Malformed));
        assert_eq!(verify(b"secret", ""), Err(TokenError::Malformed));
    }

    #[test]
    fn version_is_checked() {
        let mut p = payload();
        p.v = 9;
        assert_eq!(verify(b"k", &sign(b"k", &p)), Err(TokenError::Version(9)));
    }
}
