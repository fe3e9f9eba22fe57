use super::*;
use axum::http::Uri;
use axum::routing::{any, get};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn enc(input: &[u8]) -> Vec<u8> {
    TargetEncoder::new().encode(input)
}

/// Feeds `input` in pieces of `size` bytes through one encoder.
fn enc_split(input: &[u8], size: usize) -> Vec<u8> {
    let mut e = TargetEncoder::new();
    let mut out = Vec::new();
    for piece in input.chunks(size) {
        e.encode_into(piece, &mut out);
    }
    out
}

/// Every way of cutting `input` in two, and every piece size up to 17, agrees with the
/// whole-input result.
fn assert_split_invariant(input: &[u8]) -> Vec<u8> {
    let whole = enc(input);
    for cut in 0..=input.len() {
        let mut e = TargetEncoder::new();
        let mut out = Vec::new();
        e.encode_into(&input[..cut], &mut out);
        e.encode_into(&input[cut..], &mut out);
        assert_eq!(out, whole, "cut at {cut}");
    }
    for size in 1..=17 {
        assert_eq!(enc_split(input, size), whole, "pieces of {size}");
    }
    whole
}

#[test]
fn encodes_raw_utf8_in_the_target_only() {
    let input =
        "GET /v1/AUTH_t/caf\u{e9}?prefix=\u{e9} HTTP/1.1\r\nX-Object-Meta-A: \u{e9}\r\n\r\n";
    let out = assert_split_invariant(input.as_bytes());
    assert_eq!(
        out,
        "GET /v1/AUTH_t/caf%C3%A9?prefix=%C3%A9 HTTP/1.1\r\nX-Object-Meta-A: \u{e9}\r\n\r\n"
            .as_bytes()
    );
}

#[test]
fn encodes_invalid_utf8_and_leaves_ascii_alone() {
    let input = b"PUT /v1/a/\xff\xfe%41 HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(
        assert_split_invariant(input),
        b"PUT /v1/a/%FF%FE%41 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()
    );
    // Nothing to do: byte for byte the same.
    let plain = b"GET /a%20b?c=d HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.0\r\n\r\n";
    assert_eq!(assert_split_invariant(plain), plain.to_vec());
}

#[test]
fn content_length_body_is_never_touched() {
    // The body looks like a request line with raw bytes; the next request is real.
    let body = b"GET /\xc3\xa9 HTTP/1.1\r\n\r\n";
    let mut input = format!(
        "PUT /o HTTP/1.1\r\ncontent-length:  {} \r\n\r\n",
        body.len()
    )
    .into_bytes();
    input.extend_from_slice(body);
    let mut want = input.clone();
    input.extend_from_slice(b"GET /\xc3\xa9 HTTP/1.1\r\n\r\n");
    let out = assert_split_invariant(&input);
    want.extend_from_slice(b"GET /%C3%A9 HTTP/1.1\r\n\r\n");
    assert_eq!(out, want);
}

#[test]
fn chunked_body_with_extensions_and_trailers_is_never_touched() {
    let data = b"GET /\xc3\xa9 HTTP/1.1\r\n\r\n\r\n\r\n";
    let mut input = b"POST /x HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n".to_vec();
    input.extend_from_slice(format!("{:X} ;ext=\u{e9}\r\n", data.len()).as_bytes());
    input.extend_from_slice(data);
    input.extend_from_slice(b"\r\n3\r\n\xff\xff\xff\r\n");
    input.extend_from_slice(b"0\r\nX-Trailer: \xc3\xa9\r\nGET /\xc3\xa9 HTTP/1.1\r\n");
    let head_and_body = input.clone();
    input.extend_from_slice(b"\r\nDELETE /\xe2\x82\xac HTTP/1.1\r\n\r\n");
    let out = assert_split_invariant(&input);
    let mut want = head_and_body;
    want.extend_from_slice(b"\r\nDELETE /%E2%82%AC HTTP/1.1\r\n\r\n");
    assert_eq!(out, want);
}

#[test]
fn zero_length_and_empty_chunked_bodies() {
    let input = b"PUT /a HTTP/1.1\r\nContent-Length: 0\r\n\r\nPUT /\xc3\xa9 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nHEAD /\xc3\xa9 HTTP/1.1\r\n\n";
    let out = assert_split_invariant(input);
    assert_eq!(
        out,
        b"PUT /a HTTP/1.1\r\nContent-Length: 0\r\n\r\nPUT /%C3%A9 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nHEAD /%C3%A9 HTTP/1.1\r\n\n"
            .to_vec()
    );
}

#[test]
fn bare_lf_heads_and_empty_lines_between_requests() {
    let input = b"\r\n\nGET /\xc3\xa9 HTTP/1.1\nContent-Length: 2\n\n\xc3\xa9\r\n\r\nGET /\xc3\xa9 HTTP/1.0\n\n";
    assert_eq!(
        assert_split_invariant(input),
        b"\r\n\nGET /%C3%A9 HTTP/1.1\nContent-Length: 2\n\n\xc3\xa9\r\n\r\nGET /%C3%A9 HTTP/1.0\n\n"
            .to_vec()
    );
}

/// Framing the encoder does not follow: the rest of the connection passes unchanged.
#[test]
fn unfollowed_framing_stops_rewriting() {
    let next = b"GET /\xc3\xa9 HTTP/1.1\r\n\r\n";
    let heads: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
        b"CONNECT h:1 HTTP/1.1\r\n\r\n",
        b"PUT / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
        b"PUT / HTTP/1.1\r\nContent-Length: +1\r\n\r\nx",
        b"PUT / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"PUT / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"PUT / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\n",
        b"GET / HTTP/2.0\r\n\r\n",
        b"GET  / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nNo-Colon\r\n\r\n",
        b"\rGET / HTTP/1.1\r\n\r\n",
        b"G\xc3T / HTTP/1.1\r\n\r\n",
    ];
    for head in heads {
        let mut input = head.to_vec();
        input.extend_from_slice(next);
        let out = assert_split_invariant(&input);
        assert_eq!(out, input, "{}", String::from_utf8_lossy(head));
        let mut e = TargetEncoder::new();
        e.encode(&input);
        assert!(!e.is_following(), "{}", String::from_utf8_lossy(head));
    }
}

#[test]
fn a_long_content_length_line_stops_rewriting() {
    let mut input = b"PUT / HTTP/1.1\r\nContent-Length: ".to_vec();
    input.extend(std::iter::repeat_n(b'0', MAX_LINE));
    input.extend_from_slice(b"1\r\n\r\nxGET /\xc3\xa9 HTTP/1.1\r\n\r\n");
    assert_eq!(enc(&input), input);
    // A long line of another header is fine.
    let mut input = b"GET / HTTP/1.1\r\nX-Long: ".to_vec();
    input.extend(std::iter::repeat_n(b'a', 3 * MAX_LINE));
    input.extend_from_slice(b"\r\n\r\nGET /\xc3\xa9 HTTP/1.1\r\n\r\n");
    let out = enc(&input);
    assert!(out.ends_with(b"GET /%C3%A9 HTTP/1.1\r\n\r\n"));
}

#[test]
fn huge_lengths_do_not_overflow() {
    let input = b"PUT / HTTP/1.1\r\nContent-Length: 18446744073709551615\r\n\r\n\xc3\xa9";
    assert_eq!(enc(input), input.to_vec());
    let input = b"PUT / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\nGET /\xc3\xa9 HTTP/1.1\r\n\r\n";
    assert_eq!(enc(input), input.to_vec());
    let input = b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\nGET /\xc3\xa9 HTTP/1.1\r\n\r\n";
    assert_eq!(enc(input), input.to_vec());
}

/// Arbitrary bytes never panic, and the output only ever differs by encoded bytes.
#[test]
fn arbitrary_input_never_panics() {
    let alphabet: &[u8] = b"GET /\r\n: 0123456789abcdefContent-Length\xc3\xa9\xff;\tchunkedTransfer-Encoding HTTP/1.1";
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..2000 {
        let len = (next() % 300) as usize;
        let input: Vec<u8> = (0..len)
            .map(|_| {
                let r = next();
                let b = if r % 7 == 0 {
                    (r >> 8) as u8
                } else {
                    alphabet[(r >> 8) as usize % alphabet.len()]
                };
                if b == b'%' {
                    b'x'
                } else {
                    b
                }
            })
            .collect();
        let out = enc(&input);
        let split = (next() % 13 + 1) as usize;
        assert_eq!(enc_split(&input, split), out);
        assert_eq!(percent_decode(&out), input);
        let mut prefixed = b"GET / HTTP/1.1\r\n\r\n".to_vec();
        prefixed.extend_from_slice(&input);
        assert_eq!(percent_decode(&enc(&prefixed)), prefixed);
    }
}

fn percent_decode(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'%' && i + 2 < v.len() {
            let h = std::str::from_utf8(&v[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(h, 16).unwrap());
            i += 3;
        } else {
            out.push(v[i]);
            i += 1;
        }
    }
    out
}

/// A reader that hands out its data a few bytes at a time.
struct Trickle {
    data: Vec<u8>,
    at: usize,
    step: usize,
}

impl AsyncRead for Trickle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self
            .step
            .min(self.data.len() - self.at)
            .min(buf.remaining());
        let at = self.at;
        buf.put_slice(&self.data[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Trickle {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn io_wrapper_with_small_reads_and_small_buffers() {
    let input = b"PUT /\xc3\xa9\xc3\xa9 HTTP/1.1\r\nContent-Length: 4\r\n\r\n\xc3\xa9\xc3\xa9GET /\xff?q=\xfe HTTP/1.1\r\n\r\n";
    let want = enc(input);
    for step in 1..=9 {
        for bufsize in 1..=7 {
            let mut io = TargetEncoding::new(Trickle {
                data: input.to_vec(),
                at: 0,
                step,
            });
            let mut out = Vec::new();
            let mut buf = vec![0u8; bufsize];
            loop {
                let n = io.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
            }
            assert_eq!(out, want, "step {step} buffer {bufsize}");
        }
    }
}

// ---- through hyper -------------------------------------------------------------------

fn test_router() -> Router {
    Router::new()
        .route(
            "/empty",
            any(|| async {
                (
                    StatusCode::NO_CONTENT,
                    [
                        (header::CONTENT_LENGTH, "0"),
                        (header::CONTENT_TYPE, "text/plain"),
                    ],
                )
            }),
        )
        .route(
            "/peer",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
        )
        .fallback(
            |uri: Uri, headers: http::HeaderMap, body: Body| async move {
                let body = axum::body::to_bytes(body, 1 << 20)
                    .await
                    .unwrap_or_default();
                (
                    [("x-object-meta-color", "blUe")],
                    format!("{uri} headers={} body={}", headers.len(), body.len()),
                )
            },
        )
}

/// Sends `request` on one connection and returns everything the server wrote.
async fn exchange(request: &[u8]) -> String {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let peer: SocketAddr = "192.0.2.7:4242".parse().unwrap();
    let task = tokio::spawn(serve_connection(server, peer, test_router()));
    client.write_all(request).await.unwrap();
    let mut out = Vec::new();
    client.read_to_end(&mut out).await.unwrap();
    task.await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn hyper_serves_raw_bytes_as_percent_encoded_targets() {
    let mut req = b"PUT /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let data = b"GET /\xc3\xa9 HTTP/1.1\r\n\r\n\xff";
    req.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    req.extend_from_slice(data);
    req.extend_from_slice(b"\r\n0\r\n\r\n");
    req.extend_from_slice(b"GET /caf\xc3\xa9/\xff HTTP/1.1\r\n\r\n");
    req.extend_from_slice(b"GET /last HTTP/1.1\r\nConnection: close\r\n\r\n");
    let out = exchange(&req).await;
    assert!(out.contains("/up headers=1 body=21"), "{out}");
    assert!(out.contains("/caf%C3%A9/%FF headers=0 body=0"), "{out}");
    assert!(out.contains("/last headers=1 body=0"), "{out}");
    assert!(!out.contains("400 Bad Request"), "{out}");
}

#[tokio::test]
async fn hyper_keeps_content_length_on_204_and_title_cases_names() {
    let out = exchange(
        b"GET /empty HTTP/1.1\r\n\r\nHEAD /empty HTTP/1.1\r\n\r\nGET /x HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    let heads: Vec<&str> = out.split("HTTP/1.1 ").skip(1).collect();
    assert_eq!(heads.len(), 3, "{out}");
    for head in &heads[..2] {
        assert!(head.starts_with("204 No Content\r\n"), "{out}");
        assert!(head.contains("\r\nContent-Length: 0\r\n"), "{out}");
        assert!(head.contains("\r\nContent-Type: text/plain\r\n"), "{out}");
        assert!(head.ends_with("\r\n\r\n"), "a 204 has no body: {out}");
    }
    assert!(
        heads[2].contains("\r\nX-Object-Meta-Color: blUe\r\n"),
        "{out}"
    );
    assert!(heads[2].contains("\r\nContent-Length: "), "{out}");
}

#[tokio::test]
async fn hyper_accepts_many_request_headers_and_passes_the_peer() {
    let mut req = b"GET /many HTTP/1.1\r\n".to_vec();
    for i in 0..200 {
        req.extend_from_slice(format!("X-Object-Meta-K{i}: v\r\n").as_bytes());
    }
    req.extend_from_slice(b"\r\nGET /peer HTTP/1.1\r\nConnection: close\r\n\r\n");
    let out = exchange(&req).await;
    assert!(out.contains("/many headers=200 body=0"), "{out}");
    assert!(out.contains("192.0.2.7:4242"), "{out}");
}
