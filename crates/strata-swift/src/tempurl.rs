//! Swift's TempURL middleware: a request that carries `temp_url_sig` and `temp_url_expires`
//! is let in without a token when the signature is an HMAC of
//! `[ip=<range>\n]<METHOD>\n<expires>\n<path>` under one of the account's or the container's
//! `Temp-URL-Key` / `Temp-URL-Key-2` metadata values.
//!
//! A valid signature grants the request (and its subrequests, such as a DLO's segment
//! reads) the account (account key) or the container (container key) it names, through a
//! task-local [`Grant`] that `authorize` consults before anything else. Anything wrong with
//! the parameters answers Swift's 401 `Temp URL invalid`.

use crate::{endpoint, response, SwiftGateway};
use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use base64::Engine;
use hmac::{Hmac, Mac};
use std::net::IpAddr;

/// Methods a temporary URL may be used with (Swift's default `methods`).
pub const METHODS: [&str; 5] = ["GET", "HEAD", "PUT", "POST", "DELETE"];
/// Request headers dropped from a temp-URL request (a trailing `*` matches a prefix).
pub const INCOMING_REMOVE_HEADERS: [&str; 2] = ["x-timestamp", "x-open-expired"];
/// Exceptions to [`INCOMING_REMOVE_HEADERS`].
pub const INCOMING_ALLOW_HEADERS: [&str; 0] = [];
/// Response headers dropped from a temp-URL answer.
pub const OUTGOING_REMOVE_HEADERS: [&str; 1] = ["x-object-meta-*"];
/// Exceptions to [`OUTGOING_REMOVE_HEADERS`].
pub const OUTGOING_ALLOW_HEADERS: [&str; 1] = ["x-object-meta-public-*"];
/// Digests a signature may use, sorted as Swift advertises them.
pub const ALLOWED_DIGESTS: [&str; 3] = ["sha1", "sha256", "sha512"];
/// The allowed digests Swift marks deprecated.
pub const DEPRECATED_DIGESTS: [&str; 1] = ["sha1"];
/// Headers a writing temp URL may not carry: they would point the object at data the
/// signature does not cover.
const DISALLOWED_INCOMING_HEADERS: [&str; 3] =
    ["x-object-manifest", "x-symlink-target", "x-copy-from"];

/// The body of Swift's 401 for a refused temp URL.
const TEMPURL_BODY: &str = "401 Unauthorized: Temp URL invalid\n";

/// The HMAC digest of a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Digest {
    Sha1,
    Sha256,
    Sha512,
}

impl Digest {
    fn from_name(name: &str) -> Option<Digest> {
        match name {
            "sha1" => Some(Digest::Sha1),
            "sha256" => Some(Digest::Sha256),
            "sha512" => Some(Digest::Sha512),
            _ => None,
        }
    }

    /// Lower-case hex of the HMAC of `msg` under `key`.
    pub fn hmac_hex(self, key: &[u8], msg: &[u8]) -> String {
        fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], msg: &[u8]) -> String {
            // HMAC takes keys of any length; this cannot fail.
            match <M as hmac::digest::KeyInit>::new_from_slice(key) {
                Ok(mut m) => {
                    m.update(msg);
                    crate::hex_lower(&m.finalize().into_bytes())
                }
                Err(_) => String::new(),
            }
        }
        match self {
            Digest::Sha1 => run::<Hmac<sha1::Sha1>>(key, msg),
            Digest::Sha256 => run::<Hmac<sha2::Sha256>>(key, msg),
            Digest::Sha512 => run::<Hmac<sha2::Sha512>>(key, msg),
        }
    }
}

/// What is wrong with a `temp_url_sig`.
#[derive(Debug, PartialEq, Eq)]
pub enum SigError {
    /// Neither hex nor `<digest>:<base64>`.
    NotHex,
    /// Hex of a length no allowed digest has.
    BadLength(usize),
    /// `<digest>:` followed by something that is not base64.
    BadBase64,
    /// A digest this gateway does not allow.
    Digest(String),
}

/// The digest and the lower-case hex signature of a `temp_url_sig`: plain hex (the digest
/// told by its length) or `<digest>:<base64>` (standard or URL-safe, padding optional).
pub fn parse_sig(sig: &str) -> Result<(Digest, String), SigError> {
    if let Some((algo, value)) = sig.split_once(':') {
        let digest = Digest::from_name(algo).ok_or_else(|| SigError::Digest(algo.into()))?;
        let value = if (value.contains('-') || value.contains('_'))
            && !(value.contains('+') || value.contains('/'))
        {
            value.replace('-', "+").replace('_', "/")
        } else {
            value.to_string()
        };
        let data = value.trim_matches('=');
        if !data
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
        {
            return Err(SigError::BadBase64);
        }
        let engine = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_allow_trailing_bits(true)
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireNone),
        );
        let raw = engine.decode(data).map_err(|_| SigError::BadBase64)?;
        return Ok((digest, crate::hex_lower(&raw)));
    }
    if !sig.len().is_multiple_of(2) || !sig.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(SigError::NotHex);
    }
    let digest = match sig.len() {
        40 => Digest::Sha1,
        64 => Digest::Sha256,
        128 => Digest::Sha512,
        n => return Err(SigError::BadLength(n)),
    };
    Ok((digest, sig.to_string()))
}

/// A `temp_url_expires` that has not passed.
#[derive(Debug, PartialEq, Eq)]
pub struct Expires {
    /// Unix seconds (saturated).
    pub secs: u64,
    /// The decimal the signature covers (Python's `str(int(value))`).
    pub text: String,
}

/// What is wrong with a `temp_url_expires`.
#[derive(Debug, PartialEq, Eq)]
pub enum ExpiresError {
    /// Neither an integer nor `YYYY-MM-DDThh:mm:ssZ`.
    Unparseable,
    /// Before `now`.
    Expired,
}

/// Parse `temp_url_expires` (unix seconds or ISO 8601 `YYYY-MM-DDThh:mm:ssZ`) and check it
/// against `now`.
pub fn parse_expires(value: &str, now: u64) -> Result<Expires, ExpiresError> {
    let (negative, digits) = match int_digits(value) {
        Some(d) => d,
        None => {
            let secs = iso8601_secs(value).ok_or(ExpiresError::Unparseable)?;
            if secs < now as i64 {
                return Err(ExpiresError::Expired);
            }
            return Ok(Expires {
                secs: secs as u64,
                text: secs.to_string(),
            });
        }
    };
    let trimmed = digits.trim_start_matches('0');
    if negative || trimmed.is_empty() {
        return Err(ExpiresError::Expired);
    }
    let secs = trimmed.parse::<u64>().unwrap_or(u64::MAX);
    if secs < now {
        return Err(ExpiresError::Expired);
    }
    Ok(Expires {
        secs,
        text: trimmed.to_string(),
    })
}

/// The sign and digits of a Python `int()` literal (whitespace, a sign, `_` between digits).
fn int_digits(value: &str) -> Option<(bool, String)> {
    let v = value.trim();
    let (negative, rest) = match v.as_bytes().first() {
        Some(b'-') => (true, &v[1..]),
        Some(b'+') => (false, &v[1..]),
        _ => (false, v),
    };
    if rest.is_empty()
        || rest.starts_with('_')
        || rest.ends_with('_')
        || rest.contains("__")
        || !rest.bytes().all(|b| b.is_ascii_digit() || b == b'_')
    {
        return None;
    }
    Some((negative, rest.replace('_', "")))
}

/// Unix seconds of `YYYY-MM-DDThh:mm:ssZ` (as Python's `strptime` takes it: one or two
/// digits for all but the year, seconds up to 61).
fn iso8601_secs(v: &str) -> Option<i64> {
    let (date, rest) = v.split_once('T')?;
    let clock = rest.strip_suffix('Z')?;
    let mut d = date.splitn(3, '-');
    let (y, m, day) = (d.next()?, d.next()?, d.next()?);
    let mut c = clock.splitn(3, ':');
    let (hh, mm, ss) = (c.next()?, c.next()?, c.next()?);
    let num = |s: &str, min_len: usize, max_len: usize, max: u32| -> Option<u32> {
        if s.len() < min_len || s.len() > max_len || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse::<u32>().ok().filter(|n| *n <= max)
    };
    let year = num(y, 4, 4, 9999)? as i32;
    let month = time::Month::try_from(num(m, 1, 2, 12)? as u8).ok()?;
    let date = time::Date::from_calendar_date(year, month, num(day, 1, 2, 31)? as u8).ok()?;
    let (h, mi, s) = (num(hh, 1, 2, 23)?, num(mm, 1, 2, 59)?, num(ss, 1, 2, 61)?);
    let midnight = date.midnight().assume_utc().unix_timestamp();
    Some(midnight + i64::from(h * 3600 + mi * 60 + s))
}

/// Whether `client` is in `range` (an address or `address/prefix`; host bits set in the
/// network are an error, as Python's `ip_network` says).
pub fn ip_in_range(range: &str, client: IpAddr) -> Result<bool, ()> {
    let (addr, len) = match range.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (range, None),
    };
    let net: IpAddr = addr.trim().parse().map_err(|_| ())?;
    let bits = if net.is_ipv4() { 32u32 } else { 128 };
    let len = match len {
        None => bits,
        Some(l) if !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()) => {
            l.parse::<u32>().ok().filter(|n| *n <= bits).ok_or(())?
        }
        Some(_) => return Err(()),
    };
    let as_u128 = |ip: IpAddr| match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    };
    let mask = if len == 0 {
        0
    } else {
        (u128::MAX << (bits - len)) & (u128::MAX >> (128 - bits))
    };
    let n = as_u128(net);
    if n & !mask & (u128::MAX >> (128 - bits)) != 0 {
        return Err(());
    }
    if net.is_ipv4() != client.is_ipv4() {
        return Ok(false);
    }
    Ok(as_u128(client) & mask == n)
}

/// What a valid signature lets the request reach.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Scope {
    Account,
    Container,
}

/// A valid temp URL: who it lets in and how its answer is dressed.
#[derive(Debug, Clone)]
pub(crate) struct Grant {
    account: String,
    container: String,
    /// Empty for a container-root GET/HEAD with an empty prefix.
    object: String,
    scope: Scope,
    method: Method,
    expires: u64,
    filename: Option<String>,
    inline: bool,
}

tokio::task_local! {
    static GRANT: Grant;
}

/// Whether the temp URL of the request being served (if any) reaches `account` (and
/// `container`): None when the request is not a temp URL request.
pub(crate) fn granted(account: &str, container: Option<&str>) -> Option<bool> {
    GRANT
        .try_with(|g| {
            g.account == account
                && match g.scope {
                    Scope::Account => true,
                    Scope::Container => container == Some(g.container.as_str()),
                }
        })
        .ok()
}

/// Swift's 401 for a temp URL it refuses.
fn invalid(method: &Method, why: &str) -> Response {
    tracing::info!(reason = why, "temp url refused");
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=UTF-8"),
    );
    let body = if *method == Method::HEAD {
        Body::empty()
    } else {
        Body::from(TEMPURL_BODY)
    };
    response::with_body(StatusCode::UNAUTHORIZED, h, body)
}

/// The temp URL parameters of a query (the first of each, as Python's `parse_qs`).
#[derive(Default)]
struct Params {
    sig: Option<String>,
    expires: Option<String>,
    prefix: Option<String>,
    filename: Option<String>,
    inline: bool,
    ip_range: Option<String>,
}

fn params(query: Option<&str>) -> Params {
    let mut p = Params::default();
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let slot = match k.as_ref() {
            "temp_url_sig" => &mut p.sig,
            "temp_url_expires" => &mut p.expires,
            "temp_url_prefix" => &mut p.prefix,
            "filename" => &mut p.filename,
            "temp_url_ip_range" => &mut p.ip_range,
            "inline" => {
                p.inline = true;
                continue;
            }
            _ => continue,
        };
        if slot.is_none() {
            *slot = Some(v.into_owned());
        }
    }
    p
}

/// The temp-URL keys in account or container metadata.
fn keys_of(meta: &std::collections::BTreeMap<String, String>) -> Vec<Vec<u8>> {
    ["temp-url-key", "temp-url-key-2"]
        .iter()
        .filter_map(|k| meta.get(*k))
        .map(|v| response::meta_value_bytes(v))
        .collect()
}

/// Whether a header name matches one of Swift's header patterns (`*` ends a prefix).
fn matches_any(name: &str, patterns: &[&str]) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == *p,
    })
}

/// What [`intercept`] makes of a request.
pub(crate) enum Intercept {
    /// Not a temp URL request: on as usual.
    Pass(Request),
    /// A valid temp URL: serve it within [`Grant`], then [`finish`] the answer.
    Granted(Request, Grant),
    /// Refused: this is the answer.
    Answer(Response),
}

/// Check a request's temp URL parameters, if it has any.
pub(crate) async fn intercept(gw: &SwiftGateway, mut req: Request) -> Intercept {
    if req.method() == Method::OPTIONS {
        return Intercept::Pass(req);
    }
    let method = req.method().clone();
    let p = params(req.uri().query());
    if p.sig.is_none() && p.expires.is_none() {
        return Intercept::Pass(req);
    }
    let (Some(sig), Some(expires)) = (p.sig.as_deref(), p.expires.as_deref()) else {
        return Intercept::Answer(invalid(&method, "temp_url_sig or temp_url_expires missing"));
    };
    if sig.is_empty() {
        return Intercept::Answer(invalid(&method, "empty temp_url_sig"));
    }
    let expires = match parse_expires(expires, strata_object::unix_now()) {
        Ok(e) => e,
        Err(e) => return Intercept::Answer(invalid(&method, &format!("expires: {e:?}"))),
    };
    let (digest, sig) = match parse_sig(sig) {
        Ok(s) => s,
        Err(e) => return Intercept::Answer(invalid(&method, &format!("signature: {e:?}"))),
    };
    // Swift checks the path only for the methods it is configured with.
    let container_root =
        (method == Method::GET || method == Method::HEAD) && p.prefix.as_deref() == Some("");
    let target = if METHODS.contains(&method.as_str()) {
        match endpoint::parse_path(req.uri().path()) {
            Ok(endpoint::Endpoint::Object {
                account,
                container,
                object,
            }) if !object.trim_matches('/').is_empty() => Some((account, container, object)),
            Ok(endpoint::Endpoint::Container { account, container }) if container_root => {
                Some((account, container, String::new()))
            }
            _ => None,
        }
    } else {
        None
    };
    let Some((account, container, object)) = target else {
        return Intercept::Answer(invalid(
            &method,
            "not an object request of a temp url method",
        ));
    };
    if let Some(range) = p.ip_range.as_deref().filter(|r| !r.is_empty()) {
        let peer = req
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip());
        match peer.map(|ip| ip_in_range(range, ip)) {
            Some(Ok(true)) => {}
            Some(Ok(false)) => {
                return Intercept::Answer(invalid(&method, "client outside ip range"))
            }
            Some(Err(())) => return Intercept::Answer(invalid(&method, "bad temp_url_ip_range")),
            None => return Intercept::Answer(invalid(&method, "client address unknown")),
        }
    }
    let account_keys = match gw.objects.account_meta(&account).await {
        Ok(meta) => keys_of(&meta),
        Err(e) => {
            tracing::info!(error = %e, "temp url: account metadata unreadable");
            Vec::new()
        }
    };
    let container_keys = match gw.objects.container(&account, &container).await {
        Ok(info) => keys_of(&info.meta),
        Err(_) => Vec::new(),
    };
    if account_keys.is_empty() && container_keys.is_empty() {
        return Intercept::Answer(invalid(&method, "no temp url keys"));
    }
    let path = match p.prefix.as_deref() {
        None => format!("/v1/{account}/{container}/{object}"),
        Some(prefix) => {
            if !object.starts_with(prefix) {
                return Intercept::Answer(invalid(&method, "object outside temp_url_prefix"));
            }
            format!("prefix:/v1/{account}/{container}/{prefix}")
        }
    };
    // A HEAD may use a signature made for GET, POST or PUT too.
    let methods: &[&str] = if method == Method::HEAD {
        &["HEAD", "GET", "POST", "PUT"]
    } else {
        &[method.as_str()]
    };
    let ip_part = p
        .ip_range
        .as_deref()
        .filter(|r| !r.is_empty())
        .map(|r| format!("ip={r}\n"))
        .unwrap_or_default();
    let mut scope = None;
    'search: for m in methods {
        let msg = format!("{ip_part}{m}\n{}\n{path}", expires.text);
        for (keys, s) in [
            (&account_keys, Scope::Account),
            (&container_keys, Scope::Container),
        ] {
            for key in keys {
                if const_time_eq(
                    digest.hmac_hex(key, msg.as_bytes()).as_bytes(),
                    sig.as_bytes(),
                ) {
                    scope = Some(s);
                    break 'search;
                }
            }
        }
    }
    let Some(scope) = scope else {
        return Intercept::Answer(invalid(&method, "signature does not match"));
    };
    if !matches!(method, Method::GET | Method::HEAD) {
        for name in DISALLOWED_INCOMING_HEADERS {
            if req.headers().contains_key(name) {
                tracing::info!(header = name, "temp url request with a disallowed header");
                let mut h = HeaderMap::new();
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=UTF-8"),
                );
                let msg = format!(
                    "The header '{}' is not allowed in this tempurl",
                    title_case(name)
                );
                return Intercept::Answer(response::with_body(
                    StatusCode::BAD_REQUEST,
                    h,
                    Body::from(msg),
                ));
            }
        }
    }
    let drop: Vec<HeaderName> = req
        .headers()
        .keys()
        .filter(|n| {
            !matches_any(n.as_str(), &INCOMING_ALLOW_HEADERS)
                && matches_any(n.as_str(), &INCOMING_REMOVE_HEADERS)
        })
        .cloned()
        .collect();
    for name in drop {
        req.headers_mut().remove(name);
    }
    // Only the temp URL's own parameters reach the object (as Swift rewrites the query).
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("temp_url_sig", &sig);
    q.append_pair("temp_url_expires", p.expires.as_deref().unwrap_or(""));
    if let Some(prefix) = &p.prefix {
        q.append_pair("temp_url_prefix", prefix);
    }
    let uri = format!("{}?{}", req.uri().path(), q.finish());
    match uri.parse::<Uri>() {
        Ok(u) => *req.uri_mut() = u,
        Err(e) => {
            tracing::warn!(error = %e, "temp url: rewritten uri unparseable");
            return Intercept::Answer(invalid(&method, "rewritten uri unparseable"));
        }
    }
    tracing::debug!(%account, %container, ?scope, digest = ?digest, "temp url granted");
    let grant = Grant {
        account,
        container,
        object,
        scope,
        method,
        expires: expires.secs,
        filename: p.filename.filter(|f| !f.is_empty()),
        inline: p.inline,
    };
    Intercept::Granted(req, grant)
}

/// Serve `fut` with the grant in force for every `authorize` it makes.
pub(crate) async fn serve<F: std::future::Future<Output = Response>>(
    grant: Grant,
    fut: F,
) -> Response {
    let g = grant.clone();
    let resp = GRANT.scope(g, fut).await;
    finish(&grant, resp)
}

/// The answer of a temp URL request: private metadata dropped; a GET/HEAD success gets
/// `Content-Disposition` and `Expires`.
fn finish(g: &Grant, mut resp: Response) -> Response {
    let drop: Vec<HeaderName> = resp
        .headers()
        .keys()
        .filter(|n| {
            !matches_any(n.as_str(), &OUTGOING_ALLOW_HEADERS)
                && matches_any(n.as_str(), &OUTGOING_REMOVE_HEADERS)
        })
        .cloned()
        .collect();
    for name in drop {
        resp.headers_mut().remove(name);
    }
    let read = g.method == Method::GET || g.method == Method::HEAD;
    if !read || !resp.status().is_success() {
        return resp;
    }
    if g.object.is_empty() {
        // A container root answers only for static web listings, which are not served here.
        return invalid(&g.method, "temp url for a container root");
    }
    let existing = resp.headers_mut().remove(header::CONTENT_DISPOSITION);
    let disposition = if g.inline {
        match &g.filename {
            Some(f) => disposition_format("inline", f),
            None => "inline".to_string(),
        }
    } else if let Some(f) = &g.filename {
        disposition_format("attachment", f)
    } else if let Some(v) = existing.and_then(|v| v.to_str().ok().map(str::to_string)) {
        v
    } else {
        let name = g.object.trim_end_matches('/');
        let base = name.rsplit('/').next().unwrap_or(name);
        disposition_format("attachment", base)
    };
    response::put_str(
        resp.headers_mut(),
        "content-disposition",
        &disposition.replace('\n', "%0A"),
    );
    // The `Expires` header tells caches when the URL stops working (HTTP dates end at 9999).
    let date = i64::try_from(g.expires)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .filter(|d| d.year() <= 9999);
    if date.is_some() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(g.expires);
        response::put_str(resp.headers_mut(), "expires", &httpdate::fmt_http_date(t));
    }
    resp
}

/// `<type>; filename="<quoted>"; filename*=UTF-8''<quoted>` (RFC 6266).
fn disposition_format(kind: &str, filename: &str) -> String {
    format!(
        "{kind}; filename=\"{}\"; filename*=UTF-8''{}",
        quote(filename, b" /"),
        quote(filename, b"/")
    )
}

/// Python's `urllib.parse.quote` of the UTF-8 bytes, `safe` left as is.
fn quote(s: &str, safe: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"_.-~".contains(&b) || safe.contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `x-object-manifest` as Swift names it in messages: `X-Object-Manifest`.
fn title_case(name: &str) -> String {
    name.split('-')
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

fn const_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"mykey";
    const MSG: &[u8] = b"GET\n1700000000\n/v1/AUTH_a/c/o";

    #[test]
    fn hmac_matches_python() {
        // hmac.new(b'mykey', b'GET\n1700000000\n/v1/AUTH_a/c/o', hashlib.sha1).hexdigest()
        let sha1 = Digest::Sha1.hmac_hex(KEY, MSG);
        assert_eq!(sha1, "cf1cb4ca7ffbf542fd4bd4792d5feaafb1e6bda3");
        let sha256 = Digest::Sha256.hmac_hex(KEY, MSG);
        assert_eq!(sha256.len(), 64);
        assert_eq!(Digest::Sha512.hmac_hex(KEY, MSG).len(), 128);
        // RFC 4231 test case 2.
        assert_eq!(
            Digest::Sha256.hmac_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // RFC 2202 test case 2.
        assert_eq!(
            Digest::Sha1.hmac_hex(b"Jefe", b"what do ya want for nothing?"),
            "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
        );
    }

    #[test]
    fn signatures_in_every_encoding() {
        let hex = Digest::Sha256.hmac_hex(KEY, MSG);
        let raw: Vec<u8> = (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let std_b64 = base64::engine::general_purpose::STANDARD.encode(&raw);
        let url_b64 = base64::engine::general_purpose::URL_SAFE.encode(&raw);
        assert_eq!(parse_sig(&hex), Ok((Digest::Sha256, hex.clone())));
        for enc in [
            std_b64.clone(),
            std_b64.trim_end_matches('=').to_string(),
            url_b64,
        ] {
            assert_eq!(
                parse_sig(&format!("sha256:{enc}")),
                Ok((Digest::Sha256, hex.clone()))
            );
        }
        let sha1 = Digest::Sha1.hmac_hex(KEY, MSG);
        assert_eq!(parse_sig(&sha1).map(|s| s.0), Ok(Digest::Sha1));
        let sha512 = Digest::Sha512.hmac_hex(KEY, MSG);
        assert_eq!(parse_sig(&sha512).map(|s| s.0), Ok(Digest::Sha512));
    }

    #[test]
    fn bad_signatures_are_faults_not_panics() {
        assert_eq!(parse_sig("abc"), Err(SigError::NotHex));
        assert_eq!(parse_sig("zz"), Err(SigError::NotHex));
        assert_eq!(parse_sig("abcd"), Err(SigError::BadLength(4)));
        assert_eq!(parse_sig(""), Err(SigError::BadLength(0)));
        assert_eq!(parse_sig("é"), Err(SigError::NotHex));
        assert_eq!(parse_sig("md5:AAAA"), Err(SigError::Digest("md5".into())));
        assert_eq!(parse_sig("sha256:a*b"), Err(SigError::BadBase64));
        assert_eq!(parse_sig("sha256:A"), Err(SigError::BadBase64));
        assert_eq!(parse_sig("sha256:AA=A"), Err(SigError::BadBase64));
        assert_eq!(parse_sig("sha256:é"), Err(SigError::BadBase64));
        // Decodes, but to nothing a digest makes: it simply will not match.
        assert_eq!(parse_sig("sha256:"), Ok((Digest::Sha256, String::new())));
    }

    #[test]
    fn expiry_forms() {
        let now = 1_700_000_000;
        let ok = |s: &str| parse_expires(s, now);
        assert_eq!(
            ok("1800000000"),
            Ok(Expires {
                secs: 1_800_000_000,
                text: "1800000000".into()
            })
        );
        assert_eq!(
            ok(" +01800000000 ").map(|e| e.text),
            Ok("1800000000".into())
        );
        assert_eq!(ok("1_800_000_000").map(|e| e.secs), Ok(1_800_000_000));
        // 2027-01-15T08:00:00Z
        assert_eq!(
            ok("2027-01-15T08:00:00Z").map(|e| e.secs),
            Ok(1_800_000_000)
        );
        assert_eq!(ok("2027-1-5T8:0:0Z").map(|e| e.secs), Ok(1_799_136_000));
        let huge = "99999999999999999999999999";
        assert_eq!(
            ok(huge),
            Ok(Expires {
                secs: u64::MAX,
                text: huge.into()
            })
        );
    }

    #[test]
    fn bad_expiry_is_a_fault_not_a_panic() {
        let now = 1_700_000_000;
        let bad = |s: &str| parse_expires(s, now);
        assert_eq!(bad("1600000000"), Err(ExpiresError::Expired));
        assert_eq!(bad("-5"), Err(ExpiresError::Expired));
        assert_eq!(bad("0"), Err(ExpiresError::Expired));
        assert_eq!(bad("2001-01-01T00:00:00Z"), Err(ExpiresError::Expired));
        for s in [
            "",
            " ",
            "abc",
            "1e10",
            "1.5",
            "_1",
            "1__0",
            "+",
            "2027-02-30T00:00:00Z",
            "2027-13-01T00:00:00Z",
            "2027-01-01T24:00:00Z",
            "2027-01-01T00:00:00",
            "2027-01-01 00:00:00Z",
            "27-01-01T00:00:00Z",
            "2027-01-01T00:00:00+01:00",
            "2027-001-01T00:00:00Z",
            "é",
        ] {
            assert_eq!(bad(s), Err(ExpiresError::Unparseable), "{s:?}");
        }
    }

    #[test]
    fn ip_ranges() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(ip_in_range("127.0.0.1", ip("127.0.0.1")), Ok(true));
        assert_eq!(ip_in_range("127.0.0.0/8", ip("127.1.2.3")), Ok(true));
        assert_eq!(ip_in_range("10.0.0.0/8", ip("127.1.2.3")), Ok(false));
        assert_eq!(ip_in_range("0.0.0.0/0", ip("8.8.8.8")), Ok(true));
        assert_eq!(ip_in_range("::1", ip("::1")), Ok(true));
        assert_eq!(ip_in_range("fe80::/10", ip("fe80::1")), Ok(true));
        assert_eq!(ip_in_range("::1", ip("127.0.0.1")), Ok(false));
        assert_eq!(ip_in_range("127.0.0.1/8", ip("127.0.0.1")), Err(()));
        assert_eq!(ip_in_range("127.0.0.0/33", ip("127.0.0.1")), Err(()));
        assert_eq!(ip_in_range("nonsense", ip("127.0.0.1")), Err(()));
        assert_eq!(ip_in_range("127.0.0.0/", ip("127.0.0.1")), Err(()));
    }

    #[test]
    fn content_disposition_as_swift_quotes_it() {
        assert_eq!(
            disposition_format("attachment", "a b\u{e9}.txt"),
            "attachment; filename=\"a b%C3%A9.txt\"; filename*=UTF-8''a%20b%C3%A9.txt"
        );
        assert_eq!(title_case("x-copy-from"), "X-Copy-From");
    }
}
