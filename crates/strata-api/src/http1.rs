//! Serving a gateway router over HTTP/1.1 with hyper's connection builder.
//!
//! Strata's gateways speak to clients written against OpenStack's Python services, which
//! differ from hyper's defaults in a few places visible on the wire. Serving through
//! [`hyper::server::conn::http1::Builder`] directly (instead of `axum::serve`) lets the
//! gateways match them:
//!
//! - response header names are written title-cased (`X-Object-Meta-Color`), as Swift and
//!   Keystone (Python's `http.server`/eventlet) write them;
//! - up to [`MAX_REQUEST_HEADERS`] request headers are accepted, so that Swift's own
//!   metadata count limit answers (400) rather than hyper's 431 at 100 headers;
//! - a 204 response that carries `Content-Length: 0` keeps it (see [`GatewayBody`]);
//! - raw bytes >= 0x80 in a request-target are percent-encoded before hyper parses the
//!   request line (see [`TargetEncoder`]), so that a path with raw UTF-8 is served as
//!   its percent-encoded form and one with invalid UTF-8 reaches the gateway's own
//!   check, as with Swift, instead of being refused by hyper with a bare 400.
//!
//! Every request carries [`ConnectInfo<SocketAddr>`] with the peer's address.

use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::Router;
use http::{header, Request, Response, StatusCode};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tower::ServiceExt;

/// Request headers accepted per request (hyper's default is 100). Swift allows 90 metadata
/// items and checks the count itself; clients that exceed it must get Swift's 400.
pub const MAX_REQUEST_HEADERS: usize = 512;

/// Serves `router` on `listener` until the listener fails for good (it does not: accept
/// errors are logged and retried). One task per connection; HTTP/1.1 with keep-alive and
/// pipelining; TCP_NODELAY on every connection (small responses must not wait for delayed
/// ACKs).
pub async fn serve(listener: TcpListener, router: Router) -> io::Result<()> {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // E.g. EMFILE: wait for connections to close rather than spin.
                tracing::error!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "setting TCP_NODELAY failed");
        }
        let router = router.clone();
        tokio::spawn(serve_connection(stream, peer, router));
    }
}

/// Serves one connection (any byte stream) to its end.
pub async fn serve_connection<T>(io: T, peer: SocketAddr, router: Router)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let router = router.clone();
        async move {
            let res = router.oneshot(req).await?;
            Ok::<_, Infallible>(GatewayBody::wrap(res))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .keep_alive(true)
        .title_case_headers(true)
        .max_headers(MAX_REQUEST_HEADERS);
    let conn = builder.serve_connection(TokioIo::new(TargetEncoding::new(io)), service);
    if let Err(e) = conn.await {
        tracing::debug!(%peer, error = %e, "http connection ended with an error");
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// A gateway response body as handed to hyper.
///
/// hyper writes no `Content-Length` on a 204 whose body reports that it has ended, even
/// when the response carries the header; Swift sends `Content-Length: 0` on its 204s and
/// clients (and Swift's functional tests) look for it. hyper keeps the header when the
/// body has not (yet) ended and knows its exact length: it writes the header as given and
/// sends no body bytes for a 204 whatever the body holds. So a 204 whose only
/// `Content-Length` value is `0` reports "not ended, exactly 0 bytes" and hyper never
/// polls it.
pub struct GatewayBody {
    inner: Body,
    keep_length: bool,
}

impl GatewayBody {
    pub fn wrap(res: Response<Body>) -> Response<GatewayBody> {
        let mut lengths = res
            .headers()
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .peekable();
        let keep_length = res.status() == StatusCode::NO_CONTENT
            && lengths.peek().is_some()
            && lengths.all(|v| v.as_bytes() == b"0");
        res.map(|inner| GatewayBody { inner, keep_length })
    }
}

impl http_body::Body for GatewayBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        !self.keep_length && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.keep_length {
            SizeHint::with_exact(0)
        } else {
            self.inner.size_hint()
        }
    }
}

/// An I/O stream whose reads pass through a [`TargetEncoder`].
pub struct TargetEncoding<T> {
    inner: T,
    encoder: TargetEncoder,
    /// Rewritten bytes not yet handed to the reader, from `pending_at` on.
    pending: Vec<u8>,
    pending_at: usize,
}

impl<T> TargetEncoding<T> {
    pub fn new(inner: T) -> Self {
        TargetEncoding {
            inner,
            encoder: TargetEncoder::new(),
            pending: Vec::new(),
            pending_at: 0,
        }
    }

    fn drain_pending(&mut self, buf: &mut ReadBuf<'_>) {
        let n = buf.remaining().min(self.pending.len() - self.pending_at);
        buf.put_slice(&self.pending[self.pending_at..self.pending_at + n]);
        self.pending_at += n;
        if self.pending_at == self.pending.len() {
            self.pending.clear();
            self.pending_at = 0;
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TargetEncoding<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pending_at < this.pending.len() {
            this.drain_pending(buf);
            return Poll::Ready(Ok(()));
        }
        let start = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let fresh = &buf.filled()[start..];
        let clean = this.encoder.advance(fresh);
        if clean == fresh.len() {
            return Poll::Ready(Ok(()));
        }
        // Something to encode: everything from it on goes through `pending`. At least
        // `fresh.len() - clean` bytes of room are freed, so the reader gets at least one.
        let tail = fresh[clean..].to_vec();
        buf.set_filled(start + clean);
        this.encoder.encode_into(&tail, &mut this.pending);
        this.drain_pending(buf);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TargetEncoding<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Percent-encodes raw bytes >= 0x80 in the request-target of every request on an
/// HTTP/1.1 connection, leaving every other byte as it is.
///
/// To know where each request line starts, the encoder follows the request framing
/// exactly as hyper 1.x does (httparse for the head, hyper's rules for the body length and
/// its chunked decoder), but only for a strict subset of what hyper accepts: a request line
/// `METHOD SP target SP HTTP/1.x`, header lines `name: value`, at most one
/// `Content-Length` of plain digits, or at most one `Transfer-Encoding: chunked` on
/// HTTP/1.1 without `Content-Length`, no `Upgrade`, no `CONNECT`. On anything else it stops
/// rewriting for the rest of the connection ([`State::Passthrough`]): then hyper sees the
/// client's bytes unchanged, and either hyper refuses the input itself (and closes the
/// connection) or it parses framing the encoder chose not to follow. So the encoder only
/// rewrites where hyper, reading the same bytes, also finds a request-target; and it never
/// changes a byte of a body.
///
/// Within the subset the two agree byte for byte: the head ends at the first empty line
/// (CRLF or LF, as httparse), empty lines before a request line are skipped (as httparse),
/// a `Content-Length` body is that many bytes, and a chunked body follows the same state
/// machine as hyper's decoder (size, optional whitespace and `;extensions`, CRLF, data,
/// CRLF, ..., `0` line, trailer lines each ended by CRLF, empty line). Where hyper would
/// still refuse something the encoder accepts (limits, header syntax the encoder does not
/// check), hyper closes the connection and what the encoder does with later bytes no
/// longer matters.
#[derive(Debug)]
pub struct TargetEncoder {
    state: State,
    /// The current version or header line (capped at [`MAX_LINE`] bytes).
    line: Vec<u8>,
    line_overflow: bool,
    method_is_connect: bool,
    method_len: usize,
    http11: bool,
    content_length: Option<u64>,
    chunked: bool,
    transfer_encoding: bool,
    upgrade: bool,
    chunk_size: u64,
}

/// Bytes of a header line kept to read `Content-Length`, `Transfer-Encoding`, `Upgrade`.
const MAX_LINE: usize = 8 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At a request boundary (before the request line or the empty lines preceding it).
    Start,
    /// At a request boundary, after a CR: expects LF.
    StartLf,
    Method,
    /// Just after the SP ending the method.
    TargetFirst,
    Target,
    Version,
    Header,
    /// A body of known length: the bytes left.
    Body(u64),
    ChunkStart,
    ChunkSize,
    ChunkLws,
    ChunkExt,
    ChunkSizeLf,
    ChunkData(u64),
    ChunkDataCr,
    ChunkDataLf,
    EndCr,
    EndLf,
    Trailer,
    TrailerLf,
    /// Not following this connection any more: nothing is rewritten.
    Passthrough,
}

impl Default for TargetEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl TargetEncoder {
    pub fn new() -> Self {
        TargetEncoder {
            state: State::Start,
            line: Vec::new(),
            line_overflow: false,
            method_is_connect: false,
            method_len: 0,
            http11: false,
            content_length: None,
            chunked: false,
            transfer_encoding: false,
            upgrade: false,
            chunk_size: 0,
        }
    }

    /// Whether the encoder still follows the connection's requests.
    pub fn is_following(&self) -> bool {
        self.state != State::Passthrough
    }

    /// Rewrites a whole chunk of input (convenience for callers without a read buffer).
    pub fn encode(&mut self, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(input.len());
        self.encode_into(input, &mut out);
        out
    }

    /// Appends `input`, rewritten, to `out`.
    pub fn encode_into(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            let clean = self.advance(input);
            out.extend_from_slice(&input[..clean]);
            input = &input[clean..];
            if let Some((&b, rest)) = input.split_first() {
                // `advance` stopped before a byte to encode; it stays in the target.
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
                input = rest;
            }
        }
    }

    /// Follows `input` and returns how many of its leading bytes stay as they are: all of
    /// them, or up to (not including) a byte >= 0x80 in a request-target, which the caller
    /// encodes and skips.
    pub fn advance(&mut self, input: &[u8]) -> usize {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Passthrough => return input.len(),
                State::Body(left) | State::ChunkData(left) => {
                    let avail = (input.len() - i) as u64;
                    let take = left.min(avail);
                    // `take <= avail`, which is a usize.
                    i += usize::try_from(take).unwrap_or(input.len() - i);
                    let left = left - take;
                    self.state = match (self.state, left) {
                        (State::Body(_), 0) => State::Start,
                        (State::Body(_), n) => State::Body(n),
                        (_, 0) => State::ChunkDataCr,
                        (_, n) => State::ChunkData(n),
                    };
                }
                State::Target if input[i] >= 0x80 => return i,
                State::TargetFirst if input[i] >= 0x80 => {
                    self.state = State::Target;
                    return i;
                }
                _ => {
                    self.step(input[i]);
                    i += 1;
                }
            }
        }
        i
    }

    fn reset_head(&mut self) {
        self.line.clear();
        self.line_overflow = false;
        self.method_is_connect = false;
        self.method_len = 0;
        self.http11 = false;
        self.content_length = None;
        self.chunked = false;
        self.transfer_encoding = false;
        self.upgrade = false;
        self.chunk_size = 0;
    }

    fn push_line(&mut self, b: u8) {
        if self.line.len() < MAX_LINE {
            self.line.push(b);
        } else {
            self.line_overflow = true;
        }
    }

    /// Follows one byte that is not encoded.
    fn step(&mut self, b: u8) {
        use State::*;
        self.state = match self.state {
            Start => match b {
                b'\r' => StartLf,
                b'\n' => Start,
                _ => {
                    self.reset_head();
                    self.method_byte(b)
                }
            },
            StartLf => match b {
                b'\n' => Start,
                _ => Passthrough,
            },
            Method => self.method_byte(b),
            TargetFirst | Target => match b {
                b' ' if self.state == TargetFirst => Passthrough,
                b' ' => Version,
                b'\r' | b'\n' => Passthrough,
                _ => Target,
            },
            Version => match b {
                b'\n' => {
                    let line = strip_cr(&self.line);
                    let next = match line {
                        b"HTTP/1.1" => {
                            self.http11 = true;
                            Header
                        }
                        b"HTTP/1.0" => Header,
                        _ => Passthrough,
                    };
                    self.line.clear();
                    next
                }
                _ if self.line.len() >= 9 => Passthrough,
                _ => {
                    self.line.push(b);
                    Version
                }
            },
            Header => match b {
                b'\n' => self.end_header_line(),
                _ => {
                    self.push_line(b);
                    Header
                }
            },
            ChunkStart => match hex(b) {
                Some(d) => {
                    self.chunk_size = u64::from(d);
                    ChunkSize
                }
                None => Passthrough,
            },
            ChunkSize => match (b, hex(b)) {
                (_, Some(d)) => match self
                    .chunk_size
                    .checked_mul(16)
                    .and_then(|s| s.checked_add(u64::from(d)))
                {
                    Some(s) => {
                        self.chunk_size = s;
                        ChunkSize
                    }
                    None => Passthrough,
                },
                (b'\t' | b' ', _) => ChunkLws,
                (b';', _) => ChunkExt,
                (b'\r', _) => ChunkSizeLf,
                _ => Passthrough,
            },
            ChunkLws => match b {
                b'\t' | b' ' => ChunkLws,
                b';' => ChunkExt,
                b'\r' => ChunkSizeLf,
                _ => Passthrough,
            },
            ChunkExt => match b {
                b'\r' => ChunkSizeLf,
                b'\n' => Passthrough,
                _ => ChunkExt,
            },
            ChunkSizeLf => match b {
                b'\n' if self.chunk_size == 0 => EndCr,
                b'\n' => ChunkData(self.chunk_size),
                _ => Passthrough,
            },
            ChunkDataCr => match b {
                b'\r' => ChunkDataLf,
                _ => Passthrough,
            },
            ChunkDataLf => match b {
                b'\n' => ChunkStart,
                _ => Passthrough,
            },
            EndCr => match b {
                b'\r' => EndLf,
                _ => Trailer,
            },
            Trailer => match b {
                b'\r' => TrailerLf,
                _ => Trailer,
            },
            TrailerLf => match b {
                b'\n' => EndCr,
                _ => Passthrough,
            },
            EndLf => match b {
                b'\n' => Start,
                _ => Passthrough,
            },
            // Handled in `advance`.
            Body(_) | ChunkData(_) | Passthrough => Passthrough,
        };
    }

    fn method_byte(&mut self, b: u8) -> State {
        if b == b' ' {
            if self.method_len == 0 {
                return State::Passthrough;
            }
            self.method_is_connect = self.method_len == 7 && self.line == b"CONNECT";
            self.line.clear();
            return State::TargetFirst;
        }
        if !is_tchar(b) {
            return State::Passthrough;
        }
        self.method_len += 1;
        if self.line.len() < 8 {
            self.line.push(b);
        }
        State::Method
    }

    fn end_header_line(&mut self) -> State {
        let overflow = std::mem::take(&mut self.line_overflow);
        let line = std::mem::take(&mut self.line);
        let state = self.header_line(strip_cr(&line), overflow);
        self.line = line;
        self.line.clear();
        state
    }

    fn header_line(&mut self, line: &[u8], overflow: bool) -> State {
        if line.is_empty() && !overflow {
            return self.end_of_head();
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return State::Passthrough;
        };
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return State::Passthrough;
        }
        let value = trim_ows(&line[colon + 1..]);
        if name.eq_ignore_ascii_case(b"content-length") {
            if overflow || self.content_length.is_some() {
                return State::Passthrough;
            }
            match parse_digits(value) {
                Some(n) => self.content_length = Some(n),
                None => return State::Passthrough,
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if overflow || self.transfer_encoding || !value.eq_ignore_ascii_case(b"chunked") {
                return State::Passthrough;
            }
            self.transfer_encoding = true;
            self.chunked = true;
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            self.upgrade = true;
        }
        State::Header
    }

    fn end_of_head(&mut self) -> State {
        if self.method_is_connect || self.upgrade {
            return State::Passthrough;
        }
        if self.transfer_encoding {
            if !self.http11 || !self.chunked || self.content_length.is_some() {
                return State::Passthrough;
            }
            self.chunk_size = 0;
            return State::ChunkStart;
        }
        match self.content_length {
            Some(0) | None => State::Start,
            Some(n) => State::Body(n),
        }
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// Plain decimal digits (what hyper's `Content-Length` parser accepts, minus nothing it
/// could read differently), without overflow.
fn parse_digits(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 {
        return None;
    }
    v.iter().try_fold(0u64, |acc, &b| {
        if b.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// RFC 9110 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests;
