//! A minimal Swift client over one kept-alive HTTP/1.1 connection (hyper).

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// `http://host:port/path` split into its parts (no TLS: every peer is on loopback).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// `host:port`, as connected to and sent in `Host`.
    pub authority: String,
    /// The path (and query), starting with `/`; no trailing `/`.
    pub path: String,
}

impl HttpUrl {
    pub fn parse(url: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("only http:// URLs are supported: {url}"))?;
        let (auth, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if auth.is_empty() {
            bail!("no host in {url}");
        }
        let authority = if auth.contains(':') {
            auth.to_string()
        } else {
            format!("{auth}:80")
        };
        Ok(Self {
            authority,
            path: path.trim_end_matches('/').to_string(),
        })
    }
}

/// Where the load goes: a storage URL and its token.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub storage: HttpUrl,
    pub token: String,
}

/// The outcome of one request: status and the number of body bytes read (and dropped).
#[derive(Debug, Clone, Copy)]
pub struct Reply {
    pub status: StatusCode,
    pub body_bytes: u64,
}

/// One HTTP/1.1 connection, re-opened after an error.
pub struct Conn {
    authority: String,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    pub fn new(authority: &str) -> Self {
        Self {
            authority: authority.to_string(),
            sender: None,
        }
    }

    pub async fn connect(&mut self) -> Result<()> {
        let stream = TcpStream::connect(&self.authority)
            .await
            .with_context(|| format!("connecting to {}", self.authority))?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        self.sender = Some(sender);
        Ok(())
    }

    /// Sends one request and drains the reply's body. On a transport error the
    /// connection is dropped (the next request reconnects).
    pub async fn request(
        &mut self,
        method: Method,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<(Reply, HeaderMap)> {
        let r = self
            .try_request(method, path_and_query, headers, body)
            .await;
        if r.is_err() {
            self.sender = None;
        }
        r
    }

    async fn try_request(
        &mut self,
        method: Method,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<(Reply, HeaderMap)> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            self.connect().await?;
        }
        let sender = self.sender.as_mut().expect("connected above");
        sender.ready().await?;
        let has_body = !body.is_empty() || method == Method::PUT;
        let mut req = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(http::header::HOST, &self.authority);
        if has_body {
            req = req.header(http::header::CONTENT_LENGTH, body.len());
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = sender.send_request(req.body(Full::new(body))?).await?;
        let (parts, mut body) = resp.into_parts();
        let mut n = 0u64;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                n += data.len() as u64;
            }
        }
        Ok((
            Reply {
                status: parts.status,
                body_bytes: n,
            },
            parts.headers,
        ))
    }
}

/// Swift TempAuth v1.0: `GET <auth_url>` with `X-Auth-User`/`X-Auth-Key`.
pub async fn tempauth(auth_url: &str, user: &str, key: &str) -> Result<Endpoint> {
    let url = HttpUrl::parse(auth_url)?;
    let mut c = Conn::new(&url.authority);
    let (reply, headers) = c
        .request(
            Method::GET,
            &url.path,
            &[("x-auth-user", user), ("x-auth-key", key)],
            Bytes::new(),
        )
        .await?;
    if !reply.status.is_success() {
        bail!("TempAuth at {auth_url} answered {}", reply.status);
    }
    let get = |h: &str| {
        headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let storage =
        get("x-storage-url").ok_or_else(|| anyhow!("no X-Storage-Url from {auth_url}"))?;
    let token = get("x-auth-token")
        .or_else(|| get("x-storage-token"))
        .ok_or_else(|| anyhow!("no X-Auth-Token from {auth_url}"))?;
    Ok(Endpoint {
        storage: HttpUrl::parse(&storage)?,
        token,
    })
}

/// Creates a container (idempotent). A server that has just started may answer 5xx
/// until its back ends are up: that is retried for up to 30 s.
pub async fn ensure_container(ep: &Endpoint, container: &str) -> Result<()> {
    let mut c = Conn::new(&ep.storage.authority);
    let path = format!("{}/{}", ep.storage.path, container);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let r = c
            .request(
                Method::PUT,
                &path,
                &[("x-auth-token", &ep.token)],
                Bytes::new(),
            )
            .await;
        let why = match r {
            Ok((reply, _)) if reply.status.is_success() => return Ok(()),
            Ok((reply, _)) if !reply.status.is_server_error() => {
                bail!("PUT {path} answered {}", reply.status)
            }
            Ok((reply, _)) => format!("answered {}", reply.status),
            Err(e) => format!("{e:#}"),
        };
        if std::time::Instant::now() > deadline {
            bail!("PUT {path}: {why}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let u = HttpUrl::parse("http://127.0.0.1:18081/v1/AUTH_bench/").unwrap();
        assert_eq!(u.authority, "127.0.0.1:18081");
        assert_eq!(u.path, "/v1/AUTH_bench");
        let u = HttpUrl::parse("http://localhost").unwrap();
        assert_eq!(u.authority, "localhost:80");
        assert_eq!(u.path, "");
        assert!(HttpUrl::parse("https://x/").is_err());
    }
}
