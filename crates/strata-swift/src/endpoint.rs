//! Parsing a Swift request path into an [`Endpoint`].

/// Swift's name limits, also advertised in `/info`.
pub const ACCOUNT_NAME_BYTES_MAX: usize = 256;
pub const CONTAINER_NAME_BYTES_MAX: usize = 256;
pub const OBJECT_NAME_BYTES_MAX: usize = 1024;

/// What a Swift request addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Info,
    Account {
        account: String,
    },
    Container {
        account: String,
        container: String,
    },
    Object {
        account: String,
        container: String,
        object: String,
    },
}

/// Why a path is not a Swift resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    /// Not under `/v1/` (404).
    NotFound,
    /// Percent-decoding gave invalid UTF-8, or a name holds NUL (412).
    InvalidUtf8OrNul,
    /// A name over its length limit (400).
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
}

fn decode(part: &str) -> Result<String, PathError> {
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(part).collect();
    let s = String::from_utf8(bytes).map_err(|_| PathError::InvalidUtf8OrNul)?;
    if s.contains('\0') {
        return Err(PathError::InvalidUtf8OrNul);
    }
    Ok(s)
}

fn limit(what: &'static str, s: &str, max: usize) -> Result<(), PathError> {
    if s.len() > max {
        return Err(PathError::TooLong {
            what,
            len: s.len(),
            max,
        });
    }
    Ok(())
}

/// Parse a raw (still percent-encoded) request path.
pub fn parse_path(raw: &str) -> Result<Endpoint, PathError> {
    if raw == "/info" {
        return Ok(Endpoint::Info);
    }
    let rest = raw.strip_prefix("/v1/").ok_or(PathError::NotFound)?;
    let mut parts = rest.splitn(3, '/');
    let account = decode(parts.next().unwrap_or(""))?;
    if account.is_empty() {
        return Err(PathError::NotFound);
    }
    limit("Account name", &account, ACCOUNT_NAME_BYTES_MAX)?;
    let container = match (parts.next(), parts.clone().next()) {
        (None, _) | (Some(""), None) => return Ok(Endpoint::Account { account }),
        (Some(""), Some(_)) => return Err(PathError::NotFound),
        (Some(c), _) => decode(c)?,
    };
    limit("Container name", &container, CONTAINER_NAME_BYTES_MAX)?;
    match parts.next() {
        None | Some("") => Ok(Endpoint::Container { account, container }),
        Some(o) => {
            let object = decode(o)?;
            limit("Object name", &object, OBJECT_NAME_BYTES_MAX)?;
            Ok(Endpoint::Object {
                account,
                container,
                object,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(a: &str, c: &str, o: &str) -> Endpoint {
        Endpoint::Object {
            account: a.into(),
            container: c.into(),
            object: o.into(),
        }
    }

    #[test]
    fn routes_account_container_and_object() {
        assert_eq!(parse_path("/info"), Ok(Endpoint::Info));
        assert_eq!(
            parse_path("/v1/AUTH_a"),
            Ok(Endpoint::Account {
                account: "AUTH_a".into()
            })
        );
        assert_eq!(
            parse_path("/v1/AUTH_a/"),
            Ok(Endpoint::Account {
                account: "AUTH_a".into()
            })
        );
        assert_eq!(
            parse_path("/v1/AUTH_a/c/"),
            Ok(Endpoint::Container {
                account: "AUTH_a".into(),
                container: "c".into()
            })
        );
        assert_eq!(
            parse_path("/v1/AUTH_a/c/d/e/f"),
            Ok(obj("AUTH_a", "c", "d/e/f"))
        );
        assert_eq!(
            parse_path("/v1/AUTH_a/c/dir/"),
            Ok(obj("AUTH_a", "c", "dir/"))
        );
    }

    #[test]
    fn decodes_percent_escapes_and_utf8() {
        assert_eq!(
            parse_path("/v1/A/c%20d/%E2%98%83"),
            Ok(obj("A", "c d", "\u{2603}"))
        );
    }

    #[test]
    fn refuses_bad_names() {
        assert_eq!(parse_path("/v2/A"), Err(PathError::NotFound));
        assert_eq!(parse_path("/v1/"), Err(PathError::NotFound));
        assert_eq!(parse_path("/v1/A/c/%FF"), Err(PathError::InvalidUtf8OrNul));
        assert_eq!(
            parse_path("/v1/A/c/a%00b"),
            Err(PathError::InvalidUtf8OrNul)
        );
        let long = "x".repeat(257);
        assert!(matches!(
            parse_path(&format!("/v1/A/{long}")),
            Err(PathError::TooLong { .. })
        ));
        let long = "x".repeat(1025);
        assert!(matches!(
            parse_path(&format!("/v1/A/c/{long}")),
            Err(PathError::TooLong { .. })
        ));
    }
}
