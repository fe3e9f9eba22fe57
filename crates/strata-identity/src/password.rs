//! Password hashing: PBKDF2-HMAC-SHA256 with a random salt, stored as
//! `pbkdf2-sha256$<iterations>$<salt, base64>$<hash, base64>`.

use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;

/// Iterations for new hashes.
pub const ITERATIONS: u32 = 100_000;
const SCHEME: &str = "pbkdf2-sha256";

/// Hash `password` with a fresh random salt.
pub fn hash_password(password: &str) -> String {
    let mut salt = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut salt);
    hash_with(password, &salt, ITERATIONS)
}

fn hash_with(password: &str, salt: &[u8], iterations: u32) -> String {
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut out);
    format!(
        "{SCHEME}${iterations}${}${}",
        B64.encode(salt),
        B64.encode(out)
    )
}

/// Whether `password` matches `stored` (constant time in the hash comparison).
pub fn verify_password(password: &str, stored: &str) -> bool {
    let mut parts = stored.split('$');
    let (Some(SCHEME), Some(iter), Some(salt), Some(hash), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    let (Ok(iterations), Ok(salt), Ok(expected)) =
        (iter.parse::<u32>(), B64.decode(salt), B64.decode(hash))
    else {
        return false;
    };
    if iterations == 0 || expected.is_empty() {
        return false;
    }
    let mut out = vec![0u8; expected.len()];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &salt, iterations, &mut out);
    out.iter()
        .zip(expected.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// Remembers recent successful verifications so that repeated logins of the same user
/// with an unchanged stored hash skip the deliberately slow key derivation. It keeps
/// only a SHA-256 over the stored hash and the password, never the password.
#[derive(Debug, Default)]
pub struct VerifyCache {
    ok: Mutex<HashMap<String, [u8; 32]>>,
}

const CACHE_MAX: usize = 10_000;

impl VerifyCache {
    fn digest(password: &str, stored: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(stored.as_bytes());
        h.update([0u8]);
        h.update(password.as_bytes());
        h.finalize().into()
    }

    /// [`verify_password`], answered from the cache when this exact pair verified before.
    pub fn verify(&self, password: &str, stored: &str) -> bool {
        let d = Self::digest(password, stored);
        {
            let ok = self.ok.lock().unwrap_or_else(|e| e.into_inner());
            if ok.get(stored) == Some(&d) {
                return true;
            }
        }
        if !verify_password(password, stored) {
            return false;
        }
        let mut ok = self.ok.lock().unwrap_or_else(|e| e.into_inner());
        if ok.len() >= CACHE_MAX {
            ok.clear();
        }
        ok.insert(stored.to_string(), d);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash_with("s3cret", b"0123456789abcdef", 1000);
        assert!(h.starts_with("pbkdf2-sha256$1000$"));
        assert!(verify_password("s3cret", &h));
        assert!(!verify_password("s3cret!", &h));
        assert!(!verify_password("s3cret", "garbage"));
        assert!(!verify_password("s3cret", "pbkdf2-sha256$0$AAAA$AAAA"));
    }

    #[test]
    fn salts_differ() {
        let a = hash_password("pw");
        let b = hash_password("pw");
        assert_ne!(a, b);
        assert!(verify_password("pw", &a) && verify_password("pw", &b));
    }

    #[test]
    fn cache_only_accepts_verified_pairs() {
        let c = VerifyCache::default();
        let h = hash_with("pw", b"salt", 1000);
        assert!(!c.verify("nope", &h));
        assert!(c.verify("pw", &h));
        assert!(c.verify("pw", &h));
        assert!(!c.verify("nope", &h));
    }
}
