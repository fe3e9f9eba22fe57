//! A trivial in-memory Swift-ish endpoint: the generator's ceiling. PUT drains the body
//! and answers 201 (only the length is kept), GET answers slices of one cached buffer.

use anyhow::Result;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

pub const USER: &str = "mem:mem";
pub const KEY: &str = "memkey";

#[derive(Default)]
struct State {
    /// Object path -> length.
    lengths: Mutex<HashMap<String, u64>>,
    /// A buffer at least as long as the longest object.
    cache: Mutex<Bytes>,
}

impl State {
    fn body_of(&self, len: u64) -> Bytes {
        let mut c = self.cache.lock().expect("cache lock");
        if (c.len() as u64) < len {
            *c = crate::load::random_body(len);
        }
        c.slice(..len as usize)
    }
}

/// A running endpoint; stopped on drop.
pub struct MemServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MemServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MemServer {
    /// Starts on 127.0.0.1 at a free port.
    pub async fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| handle(state.clone(), addr, req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Ok(Self { addr, task })
    }

    pub fn auth_url(&self) -> String {
        format!("http://{}/auth/v1.0", self.addr)
    }
}

fn reply(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r
}

async fn handle(
    state: Arc<State>,
    addr: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    if path == "/auth/v1.0" {
        let mut r = reply(StatusCode::OK, Bytes::new());
        let h = r.headers_mut();
        h.insert(
            "x-storage-url",
            format!("http://{addr}/v1/AUTH_mem").parse().expect("url"),
        );
        h.insert("x-auth-token", "AUTH_tkmem".parse().expect("token"));
        return Ok(r);
    }
    // /v1/<account>[/<container>[/<object>]]
    let is_object = path.splitn(5, '/').count() == 5;
    let method = req.method().clone();
    Ok(match method {
        Method::PUT => {
            let mut body = req.into_body();
            let mut n = 0u64;
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(d) = frame.into_data() {
                    n += d.len() as u64;
                }
            }
            if is_object {
                state.lengths.lock().expect("lengths lock").insert(path, n);
            }
            reply(StatusCode::CREATED, Bytes::new())
        }
        Method::GET | Method::HEAD if is_object => {
            let len = state
                .lengths
                .lock()
                .expect("lengths lock")
                .get(&path)
                .copied();
            match len {
                None => reply(StatusCode::NOT_FOUND, Bytes::new()),
                Some(len) if method == Method::HEAD => {
                    let mut r = reply(StatusCode::OK, Bytes::new());
                    r.headers_mut()
                        .insert(http::header::CONTENT_LENGTH, len.into());
                    r
                }
                Some(len) => reply(StatusCode::OK, state.body_of(len)),
            }
        }
        Method::GET => reply(StatusCode::OK, Bytes::from_static(b"[]")),
        Method::HEAD => reply(StatusCode::NO_CONTENT, Bytes::new()),
        Method::DELETE => {
            let gone = state
                .lengths
                .lock()
                .expect("lengths lock")
                .remove(&path)
                .is_some();
            reply(
                if gone || !is_object {
                    StatusCode::NO_CONTENT
                } else {
                    StatusCode::NOT_FOUND
                },
                Bytes::new(),
            )
        }
        _ => reply(StatusCode::METHOD_NOT_ALLOWED, Bytes::new()),
    })
}
