//! NBD server: fixed newstyle handshake and the transmission phase, over any
//! `AsyncRead + AsyncWrite` stream, plus TCP and Unix socket accept loops.

use std::io;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::exports::{Export, Exports};
use crate::payload::Payload;
use crate::proto::*;
use crate::target::{BlockSizes, BlockTarget, Extent, NbdError, ReadChunk};

/// Limits applied to every connection.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest READ/WRITE payload accepted (and advertised); a target may lower it.
    pub max_payload: u32,
    /// Largest option data accepted during the handshake.
    pub max_option_len: u32,
    /// Most options one client may send before entering transmission.
    pub max_options: u32,
    /// Most metadata context queries in one option.
    pub max_meta_queries: u32,
    /// Requests processed concurrently on one connection.
    pub max_in_flight: usize,
    /// Payload bytes (write data plus read replies) held per connection.
    pub max_in_flight_bytes: u32,
    /// Concurrent connections per listener; further clients wait in the backlog.
    pub max_connections: usize,
    /// Time allowed for the whole handshake.
    pub handshake_timeout: Option<Duration>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_payload: crate::target::DEFAULT_MAX_PAYLOAD,
            max_option_len: 64 * 1024,
            max_options: 1024,
            max_meta_queries: 256,
            max_in_flight: 64,
            max_in_flight_bytes: 256 * 1024 * 1024,
            max_connections: 1024,
            handshake_timeout: Some(Duration::from_secs(30)),
        }
    }
}

/// Why a connection ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("handshake timed out")]
    HandshakeTimeout,
}

fn violation(msg: impl Into<String>) -> ConnError {
    ConnError::Protocol(msg.into())
}

/// An NBD server over a set of [`Exports`].
#[derive(Clone)]
pub struct Server {
    exports: Exports,
    config: Arc<ServerConfig>,
}

/// Serves NBD on a TCP listener with default limits until the future is dropped.
pub async fn serve_tcp(listener: TcpListener, exports: Exports) -> io::Result<()> {
    Server::new(exports).serve_tcp(listener).await
}

/// Serves NBD on a Unix socket listener with default limits until the future is dropped.
pub async fn serve_unix(listener: UnixListener, exports: Exports) -> io::Result<()> {
    Server::new(exports).serve_unix(listener).await
}

impl Server {
    pub fn new(exports: Exports) -> Self {
        Self::with_config(exports, ServerConfig::default())
    }

    pub fn with_config(exports: Exports, config: ServerConfig) -> Self {
        Server {
            exports,
            config: Arc::new(config),
        }
    }

    pub fn exports(&self) -> &Exports {
        &self.exports
    }

    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Accepts TCP clients until the future is dropped, which also closes
    /// every connection it accepted.
    pub async fn serve_tcp(&self, listener: TcpListener) -> io::Result<()> {
        self.accept_loop(|| async {
            let (s, peer) = listener.accept().await?;
            if let Err(e) = s.set_nodelay(true) {
                debug!(%peer, "set_nodelay failed: {e}");
            }
            Ok((s, peer.to_string()))
        })
        .await
    }

    /// Accepts Unix socket clients until the future is dropped, which also
    /// closes every connection it accepted.
    pub async fn serve_unix(&self, listener: UnixListener) -> io::Result<()> {
        self.accept_loop(|| async {
            let (s, _) = listener.accept().await?;
            Ok((s, "unix".to_string()))
        })
        .await
    }

    /// Serves each accepted client on a thread of its own, running a single-threaded
    /// runtime: the connection's reads, writes and replies, and the disk I/O they start (on
    /// that thread's ring), never wait for another thread to be scheduled, as in qemu-nbd.
    /// Background work they start (a volume's writeback) belongs to the runtime the target
    /// was created on. Dropping this future closes every connection it accepted.
    async fn accept_loop<S, F, Fut>(&self, mut accept: F) -> io::Result<()>
    where
        S: Rehome,
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = io::Result<(S, String)>>,
    {
        let slots = Arc::new(Semaphore::new(self.config.max_connections.max(1)));
        let mut conns = JoinSet::new();
        loop {
            while conns.try_join_next().is_some() {}
            let permit = tokio::select! {
                p = Arc::clone(&slots).acquire_owned() => p.map_err(io::Error::other)?,
                Some(_) = conns.join_next() => continue,
            };
            let (stream, peer) = match accept().await {
                Ok(x) => x,
                Err(e) => {
                    // Typically EMFILE/ECONNABORTED: back off instead of spinning.
                    warn!("nbd accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let stream = match stream.into_std() {
                Ok(s) => s,
                Err(e) => {
                    warn!(%peer, "nbd connection dropped: cannot detach its socket: {e}");
                    continue;
                }
            };
            let server = self.clone();
            // Dropped when this loop is (the task holding it is aborted): the connection ends.
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            let (done_tx, done_rx) = oneshot::channel::<()>();
            let conn_peer = peer.clone();
            let thread = std::thread::Builder::new()
                .name("strata-nbd-conn".into())
                .spawn(move || {
                    let peer = conn_peer;
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            warn!(%peer, "nbd connection dropped: no runtime for it: {e}");
                            return;
                        }
                    };
                    rt.block_on(async move {
                        let stream = match S::from_std(stream) {
                            Ok(s) => s,
                            Err(e) => {
                                warn!(%peer, "nbd connection dropped: cannot attach its socket: {e}");
                                return;
                            }
                        };
                        debug!(%peer, "nbd client connected");
                        tokio::select! {
                            r = server.serve_connection(stream) => match r {
                                Ok(()) => debug!(%peer, "nbd client disconnected"),
                                Err(e) => info!(%peer, "nbd connection closed: {e}"),
                            },
                            _ = stop_rx => debug!(%peer, "nbd server stopped; connection closed"),
                        }
                    });
                    drop(done_tx);
                });
            if let Err(e) = thread {
                warn!(%peer, "nbd connection dropped: cannot start its thread: {e}");
                continue;
            }
            conns.spawn(async move {
                let _permit = permit;
                let _stop = stop_tx;
                let _ = done_rx.await;
            });
        }
    }

    /// Runs the whole protocol on one connected stream.
    pub async fn serve_connection<S>(&self, mut stream: S) -> Result<(), ConnError>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let negotiated = match self.config.handshake_timeout {
            Some(t) => tokio::time::timeout(t, self.handshake(&mut stream))
                .await
                .map_err(|_| ConnError::HandshakeTimeout)??,
            None => self.handshake(&mut stream).await?,
        };
        match negotiated {
            Some(session) => self.transmission(stream, session).await,
            None => {
                let _ = stream.shutdown().await;
                Ok(())
            }
        }
    }

    fn effective_sizes(&self, target: &dyn BlockTarget) -> BlockSizes {
        let s = target.block_sizes();
        let min = if s.min.is_power_of_two() && s.min <= 65536 {
            s.min
        } else {
            1
        };
        let preferred = if s.preferred.is_power_of_two() {
            s.preferred
        } else {
            4096
        }
        .max(min)
        .max(512);
        let max = s.max.min(self.config.max_payload).max(preferred);
        BlockSizes {
            min,
            preferred,
            max,
        }
    }

    fn transmission_flags(target: &dyn BlockTarget, structured: bool) -> u16 {
        let mut f = FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_SEND_FUA | FLAG_SEND_CACHE;
        if target.read_only() {
            f |= FLAG_READ_ONLY;
        } else {
            f |= FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES | FLAG_SEND_FAST_ZERO;
        }
        if target.can_multi_conn() {
            f |= FLAG_CAN_MULTI_CONN;
        }
        if structured {
            f |= FLAG_SEND_DF;
        }
        f
    }

    /// Option haggling. `Ok(None)`: the client aborted or went away cleanly.
    async fn handshake<S>(&self, io: &mut S) -> Result<Option<Session>, ConnError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut greet = BytesMut::with_capacity(18);
        greet.put_u64(NBD_MAGIC);
        greet.put_u64(IHAVEOPT);
        greet.put_u16(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        io.write_all(&greet).await?;
        io.flush().await?;

        let client_flags = io.read_u32().await?;
        if client_flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
            return Err(violation(format!("unknown client flags {client_flags:#x}")));
        }
        let mut st = HandshakeState {
            no_zeroes: client_flags & FLAG_C_NO_ZEROES != 0,
            structured: false,
            meta: None,
        };

        for _ in 0..self.config.max_options {
            let mut head = [0u8; 16];
            match io.read_exact(&mut head).await {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    debug!("client closed during option haggling");
                    return Ok(None);
                }
                Err(e) => return Err(e.into()),
            }
            let magic = u64::from_be_bytes(head[0..8].try_into().unwrap_or_default());
            let opt = u32::from_be_bytes(head[8..12].try_into().unwrap_or_default());
            let len = u32::from_be_bytes(head[12..16].try_into().unwrap_or_default());
            if magic != IHAVEOPT {
                return Err(violation(format!("bad option magic {magic:#x}")));
            }
            if len > self.config.max_option_len {
                // The data cannot be skipped cheaply; say why, then hang up.
                opt_reply_msg(io, opt, REP_ERR_TOO_BIG, "option data too long").await?;
                io.flush().await?;
                return Err(violation(format!(
                    "option {opt} carries {len} bytes (limit {})",
                    self.config.max_option_len
                )));
            }
            let mut data = vec![0u8; len as usize];
            io.read_exact(&mut data).await?;

            match opt {
                OPT_EXPORT_NAME => {
                    let name = match std::str::from_utf8(&data) {
                        Ok(n) if n.len() <= MAX_STRING_LEN => n.to_string(),
                        _ => return Err(violation("invalid export name")),
                    };
                    let Some(export) = self.exports.get(&name) else {
                        // No way to report an error for this option: hard disconnect.
                        return Err(violation(format!("unknown export {name:?}")));
                    };
                    let flags = Self::transmission_flags(&*export.target, st.structured);
                    let mut b = BytesMut::with_capacity(134);
                    b.put_u64(export.target.size_bytes());
                    b.put_u16(flags);
                    if !st.no_zeroes {
                        b.put_bytes(0, 124);
                    }
                    io.write_all(&b).await?;
                    io.flush().await?;
                    return Ok(Some(self.session(export, &name, &st)));
                }
                OPT_ABORT => {
                    // The client may already have closed; ignore write errors.
                    let _ = opt_reply(io, opt, REP_ACK, &[]).await;
                    let _ = io.flush().await;
                    return Ok(None);
                }
                OPT_LIST => {
                    if !data.is_empty() {
                        opt_reply_msg(io, opt, REP_ERR_INVALID, "NBD_OPT_LIST takes no data")
                            .await?;
                    } else {
                        for (name, desc) in self.exports.list() {
                            let mut b = BytesMut::new();
                            b.put_u32(name.len() as u32);
                            b.put_slice(name.as_bytes());
                            if let Some(d) = desc {
                                b.put_slice(truncate_str(&d, MAX_STRING_LEN).as_bytes());
                            }
                            opt_reply(io, opt, REP_SERVER, &b).await?;
                        }
                        opt_reply(io, opt, REP_ACK, &[]).await?;
                    }
                }
                OPT_INFO | OPT_GO => {
                    if let Some(go) = self.info_or_go(io, opt, &data, &st).await? {
                        return Ok(Some(go));
                    }
                }
                OPT_STRUCTURED_REPLY => {
                    if !data.is_empty() {
                        opt_reply_msg(io, opt, REP_ERR_INVALID, "option takes no data").await?;
                    } else if st.structured {
                        opt_reply_msg(io, opt, REP_ERR_INVALID, "already negotiated").await?;
                    } else {
                        st.structured = true;
                        opt_reply(io, opt, REP_ACK, &[]).await?;
                    }
                }
                OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                    self.meta_context(io, opt, &data, &mut st).await?;
                }
                OPT_STARTTLS => {
                    opt_reply_msg(io, opt, REP_ERR_UNSUP, "TLS is not supported").await?;
                }
                _ => {
                    debug!(opt, "unsupported option");
                    opt_reply_msg(io, opt, REP_ERR_UNSUP, "unsupported option").await?;
                }
            }
            io.flush().await?;
        }
        Err(violation(format!(
            "more than {} options",
            self.config.max_options
        )))
    }

    fn session(&self, export: Export, requested_name: &str, st: &HandshakeState) -> Session {
        let meta_ctx = match &st.meta {
            Some((name, id)) if name == requested_name => Some(*id),
            _ => None,
        };
        let flags = Self::transmission_flags(&*export.target, st.structured);
        Session {
            sizes: self.effective_sizes(&*export.target),
            export,
            structured: st.structured,
            meta_ctx,
            flags,
        }
    }

    /// NBD_OPT_INFO / NBD_OPT_GO; returns the session when GO succeeded.
    async fn info_or_go<S>(
        &self,
        io: &mut S,
        opt: u32,
        data: &[u8],
        st: &HandshakeState,
    ) -> Result<Option<Session>, ConnError>
    where
        S: AsyncWrite + Unpin,
    {
        let mut c = Cursor::new(data);
        let parsed = (|| {
            let name = c.string_u32()?;
            let n = c.u16()?;
            let mut reqs = Vec::with_capacity(n as usize);
            for _ in 0..n {
                reqs.push(c.u16()?);
            }
            c.finish()?;
            Some((name, reqs))
        })();
        let Some((name, reqs)) = parsed else {
            opt_reply_msg(io, opt, REP_ERR_INVALID, "malformed info request").await?;
            return Ok(None);
        };
        let Some(export) = self.exports.get(name) else {
            opt_reply_msg(
                io,
                opt,
                REP_ERR_UNKNOWN,
                &format!("no export named {name:?}"),
            )
            .await?;
            return Ok(None);
        };
        let target = &*export.target;
        let flags = Self::transmission_flags(target, st.structured);
        let mut b = BytesMut::with_capacity(12);
        b.put_u16(INFO_EXPORT);
        b.put_u64(target.size_bytes());
        b.put_u16(flags);
        opt_reply(io, opt, REP_INFO, &b).await?;

        if reqs.contains(&INFO_NAME) {
            let mut b = BytesMut::new();
            b.put_u16(INFO_NAME);
            b.put_slice(export.name.as_bytes());
            opt_reply(io, opt, REP_INFO, &b).await?;
        }
        if reqs.contains(&INFO_DESCRIPTION) {
            if let Some(d) = target.description() {
                let mut b = BytesMut::new();
                b.put_u16(INFO_DESCRIPTION);
                b.put_slice(truncate_str(&d, MAX_STRING_LEN).as_bytes());
                opt_reply(io, opt, REP_INFO, &b).await?;
            }
        }
        // Always advertised: the server enforces these whether asked or not.
        let sizes = self.effective_sizes(target);
        let mut b = BytesMut::with_capacity(14);
        b.put_u16(INFO_BLOCK_SIZE);
        b.put_u32(sizes.min);
        b.put_u32(sizes.preferred);
        b.put_u32(sizes.max);
        opt_reply(io, opt, REP_INFO, &b).await?;
        opt_reply(io, opt, REP_ACK, &[]).await?;
        if opt == OPT_GO {
            io.flush().await?;
            let name = name.to_string();
            return Ok(Some(self.session(export, &name, st)));
        }
        Ok(None)
    }

    async fn meta_context<S>(
        &self,
        io: &mut S,
        opt: u32,
        data: &[u8],
        st: &mut HandshakeState,
    ) -> Result<(), ConnError>
    where
        S: AsyncWrite + Unpin,
    {
        let set = opt == OPT_SET_META_CONTEXT;
        if set {
            // A SET replaces the previous selection even when it fails.
            st.meta = None;
        }
        if !st.structured {
            opt_reply_msg(
                io,
                opt,
                REP_ERR_INVALID,
                "structured replies not negotiated",
            )
            .await?;
            return Ok(());
        }
        let mut c = Cursor::new(data);
        let max_q = self.config.max_meta_queries;
        let parsed = (|| {
            let name = c.string_u32()?;
            let n = c.u32()?;
            if n > max_q {
                return Some(Err(()));
            }
            let mut queries = Vec::with_capacity(n as usize);
            for _ in 0..n {
                queries.push(c.string_u32()?);
            }
            c.finish()?;
            Some(Ok((name, queries)))
        })();
        let (name, queries) = match parsed {
            None => {
                opt_reply_msg(io, opt, REP_ERR_INVALID, "malformed meta context request").await?;
                return Ok(());
            }
            Some(Err(())) => {
                opt_reply_msg(io, opt, REP_ERR_TOO_BIG, "too many queries").await?;
                return Ok(());
            }
            Some(Ok(x)) => x,
        };
        if self.exports.get(name).is_none() {
            opt_reply_msg(
                io,
                opt,
                REP_ERR_UNKNOWN,
                &format!("no export named {name:?}"),
            )
            .await?;
            return Ok(());
        }
        let matched = if set {
            queries.contains(&BASE_ALLOCATION)
        } else {
            queries.is_empty()
                || queries
                    .iter()
                    .any(|q| *q == BASE_ALLOCATION || *q == "base:")
        };
        if matched {
            let id: u32 = if set { 1 } else { 0 };
            let mut b = BytesMut::new();
            b.put_u32(id);
            b.put_slice(BASE_ALLOCATION.as_bytes());
            opt_reply(io, opt, REP_META_CONTEXT, &b).await?;
            if set {
                st.meta = Some((name.to_string(), id));
            }
        }
        opt_reply(io, opt, REP_ACK, &[]).await?;
        Ok(())
    }

    async fn transmission<S>(&self, stream: S, session: Session) -> Result<(), ConnError>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        debug!(
            export = %session.export.name,
            structured = session.structured,
            flags = session.flags,
            "entering transmission"
        );
        let (rd, wr) = tokio::io::split(stream);
        let in_flight = self.config.max_in_flight.max(1);
        let (tx, rx) = mpsc::channel::<Reply>(in_flight + 2);
        let conn = Arc::new(Conn {
            session,
            requests: Arc::new(Semaphore::new(in_flight)),
            bytes: Arc::new(Semaphore::new(
                self.config.max_in_flight_bytes.max(1) as usize
            )),
            byte_budget: self.config.max_in_flight_bytes.max(1),
        });
        let writer = writer_loop(
            BufWriter::with_capacity(256 * 1024, wr),
            rx,
            Arc::clone(&conn.requests),
            in_flight,
        );
        let reader = reader_loop(BufReader::with_capacity(256 * 1024, rd), tx, conn);
        tokio::pin!(writer);
        tokio::select! {
            biased;
            w = &mut writer => {
                // The writer only stops early on a write error.
                w?;
                Ok(())
            }
            r = reader => {
                // Let in-flight requests finish and their replies drain.
                let w = writer.await;
                r.and(w.map_err(ConnError::from))
            }
        }
    }
}

/// A stream accepted on one runtime that can be handed to another: detached from the
/// accepting runtime's reactor, then attached to the connection thread's.
trait Rehome: AsyncRead + AsyncWrite + Send + Unpin + Sized + 'static {
    type Std: Send + 'static;
    fn into_std(self) -> io::Result<Self::Std>;
    /// Must run inside the runtime that will drive the stream.
    fn from_std(s: Self::Std) -> io::Result<Self>;
}

impl Rehome for TcpStream {
    type Std = std::net::TcpStream;
    fn into_std(self) -> io::Result<Self::Std> {
        TcpStream::into_std(self)
    }
    fn from_std(s: Self::Std) -> io::Result<Self> {
        TcpStream::from_std(s)
    }
}

impl Rehome for UnixStream {
    type Std = std::os::unix::net::UnixStream;
    fn into_std(self) -> io::Result<Self::Std> {
        UnixStream::into_std(self)
    }
    fn from_std(s: Self::Std) -> io::Result<Self> {
        UnixStream::from_std(s)
    }
}

struct HandshakeState {
    no_zeroes: bool,
    structured: bool,
    /// Export name given to SET_META_CONTEXT and the id of `base:allocation`.
    meta: Option<(String, u32)>,
}

/// What transmission runs with.
struct Session {
    export: Export,
    structured: bool,
    meta_ctx: Option<u32>,
    flags: u16,
    sizes: BlockSizes,
}

struct Conn {
    session: Session,
    requests: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    byte_budget: u32,
}

/// One reply, written contiguously; the permits are released once it is sent.
struct Reply {
    frames: Vec<Bytes>,
    _permits: Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
}

#[derive(Debug, Clone, Copy)]
struct Request {
    flags: u16,
    typ: u16,
    cookie: u64,
    offset: u64,
    len: u32,
}

impl Request {
    fn parse(h: &[u8; REQUEST_HEADER_LEN]) -> (u32, Request) {
        let be32 =
            |r: std::ops::Range<usize>| u32::from_be_bytes(h[r].try_into().unwrap_or_default());
        let be64 =
            |r: std::ops::Range<usize>| u64::from_be_bytes(h[r].try_into().unwrap_or_default());
        let magic = be32(0..4);
        let flags = u16::from_be_bytes([h[4], h[5]]);
        let typ = u16::from_be_bytes([h[6], h[7]]);
        (
            magic,
            Request {
                flags,
                typ,
                cookie: be64(8..16),
                offset: be64(16..24),
                len: be32(24..28),
            },
        )
    }
}

/// Sends replies in the order they come. `requests` holds a permit per request not yet
/// answered (a reply releases its own once written), out of `max_requests`.
async fn writer_loop<W>(
    mut w: BufWriter<W>,
    mut rx: mpsc::Receiver<Reply>,
    requests: Arc<Semaphore>,
    max_requests: usize,
) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    while let Some(reply) = rx.recv().await {
        write_reply(&mut w, reply).await?;
        // Batch whatever else is ready before paying for a flush.
        while let Ok(reply) = rx.try_recv() {
            write_reply(&mut w, reply).await?;
        }
        if requests.available_permits() < max_requests {
            // Requests are still under way: those that finish on this tick of the runtime
            // join the same send.
            tokio::task::yield_now().await;
            while let Ok(reply) = rx.try_recv() {
                write_reply(&mut w, reply).await?;
            }
        }
        w.flush().await?;
    }
    w.shutdown().await
}

async fn write_reply<W: AsyncWrite + Unpin>(w: &mut BufWriter<W>, reply: Reply) -> io::Result<()> {
    for f in &reply.frames {
        w.write_all(f).await?;
    }
    Ok(())
}

async fn reader_loop<R>(
    mut rd: BufReader<R>,
    tx: mpsc::Sender<Reply>,
    conn: Arc<Conn>,
) -> Result<(), ConnError>
where
    R: AsyncRead + Unpin,
{
    let max_payload = conn.session.sizes.max;
    loop {
        let mut h = [0u8; REQUEST_HEADER_LEN];
        match rd.read_exact(&mut h).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                debug!("client closed without NBD_CMD_DISC");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
        let (magic, req) = Request::parse(&h);
        if magic != REQUEST_MAGIC {
            warn!(
                magic = format_args!("{magic:#x}"),
                "bad request magic, closing"
            );
            return Err(violation(format!("bad request magic {magic:#x}")));
        }
        if req.typ == CMD_DISC {
            debug!("client sent NBD_CMD_DISC");
            return Ok(());
        }

        // Reserve capacity before reading any payload so memory stays bounded.
        let payload_len = match req.typ {
            CMD_WRITE | CMD_READ if req.len <= max_payload => req.len,
            _ => 0,
        };
        let permits = acquire(&conn, payload_len).await?;

        let payload = if req.typ == CMD_WRITE {
            if req.len > max_payload {
                // The payload cannot be skipped safely: reject, then hang up.
                warn!(len = req.len, max_payload, "oversized write, closing");
                let frames = conn.error_frames(&req, proto_err(EINVAL, "write payload too large"));
                let _ = tx
                    .send(Reply {
                        frames,
                        _permits: Some(permits),
                    })
                    .await;
                return Err(violation(format!("write of {} bytes", req.len)));
            }
            Some(read_payload(&mut rd, req.len as usize).await?)
        } else {
            None
        };

        let conn2 = Arc::clone(&conn);
        let tx2 = tx.clone();
        tokio::spawn(async move {
            let frames = match AssertUnwindSafe(conn2.handle(req, payload))
                .catch_unwind()
                .await
            {
                Ok(f) => f,
                Err(_) => {
                    tracing::error!(cookie = req.cookie, typ = req.typ, "block target panicked");
                    conn2.error_frames(&req, proto_err(EIO, "internal server error"))
                }
            };
            let _ = tx2
                .send(Reply {
                    frames,
                    _permits: Some(permits),
                })
                .await;
        });
    }
}

/// Reads exactly `len` bytes, without zero-filling the buffer first, into block-aligned
/// memory (see [`crate::payload`]).
async fn read_payload<R: AsyncRead + Unpin>(rd: &mut R, len: usize) -> io::Result<Bytes> {
    let mut buf = Payload::with_capacity(len)?;
    while !buf.is_full() {
        if rd.read_buf(&mut buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(buf.freeze())
}

async fn acquire(
    conn: &Conn,
    bytes: u32,
) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit), ConnError> {
    let closed = |_| ConnError::Io(io::Error::other("connection shutting down"));
    let r = Arc::clone(&conn.requests)
        .acquire_owned()
        .await
        .map_err(closed)?;
    let b = Arc::clone(&conn.bytes)
        .acquire_many_owned(bytes.clamp(1, conn.byte_budget))
        .await
        .map_err(closed)?;
    Ok((r, b))
}

/// An error with a message for the client.
struct ProtoErr {
    errno: u32,
    msg: String,
}

fn proto_err(errno: u32, msg: impl Into<String>) -> ProtoErr {
    ProtoErr {
        errno,
        msg: msg.into(),
    }
}

impl From<NbdError> for ProtoErr {
    fn from(e: NbdError) -> Self {
        ProtoErr {
            errno: e.errno(),
            msg: e.to_string(),
        }
    }
}

impl Conn {
    fn target(&self) -> &dyn BlockTarget {
        &*self.session.export.target
    }

    async fn handle(&self, req: Request, payload: Option<Bytes>) -> Vec<Bytes> {
        match self.execute(&req, payload).await {
            Ok(frames) => frames,
            Err(e) => {
                debug!(
                    cookie = req.cookie,
                    typ = req.typ,
                    offset = req.offset,
                    len = req.len,
                    errno = e.errno,
                    "request failed: {}",
                    e.msg
                );
                self.error_frames(&req, e)
            }
        }
    }

    fn allowed_flags(&self, typ: u16) -> u16 {
        CMD_FLAG_FUA
            | match typ {
                CMD_READ if self.session.structured => CMD_FLAG_DF,
                CMD_WRITE_ZEROES => CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
                CMD_BLOCK_STATUS => CMD_FLAG_REQ_ONE,
                _ => 0,
            }
    }

    /// Checks offset/length against the export size and minimum block size.
    fn check_range(&self, req: &Request, past_end_errno: u32) -> Result<(), ProtoErr> {
        let size = self.target().size_bytes();
        match req.offset.checked_add(req.len as u64) {
            Some(end) if end <= size => {}
            _ => {
                return Err(proto_err(
                    past_end_errno,
                    format!(
                        "request {}+{} beyond export size {size}",
                        req.offset, req.len
                    ),
                ))
            }
        }
        let min = self.session.sizes.min as u64;
        if min > 1 {
            let end = req.offset + req.len as u64;
            // `min` is a power of two.
            let mask = min - 1;
            if req.offset & mask != 0 || (req.len as u64 & mask != 0 && end != size) {
                return Err(proto_err(
                    EINVAL,
                    format!("request not aligned to {min} bytes"),
                ));
            }
        }
        Ok(())
    }

    fn check_writable(&self) -> Result<(), ProtoErr> {
        if self.target().read_only() {
            return Err(proto_err(EPERM, "export is read-only"));
        }
        Ok(())
    }

    async fn execute(&self, req: &Request, payload: Option<Bytes>) -> Result<Vec<Bytes>, ProtoErr> {
        let bad = req.flags & !self.allowed_flags(req.typ);
        if bad != 0 {
            return Err(proto_err(
                EINVAL,
                format!("unsupported flags {bad:#x} for command {}", req.typ),
            ));
        }
        let fua = req.flags & CMD_FLAG_FUA != 0;
        let t = self.target();
        match req.typ {
            CMD_READ => {
                self.check_range(req, EINVAL)?;
                self.read(req).await
            }
            CMD_WRITE => {
                self.check_writable()?;
                self.check_range(req, ENOSPC)?;
                let data = payload.unwrap_or_default();
                if !data.is_empty() {
                    t.write(req.offset, data, fua).await?;
                }
                Ok(self.ok_frames(req))
            }
            CMD_FLUSH => {
                t.flush().await?;
                Ok(self.ok_frames(req))
            }
            CMD_TRIM => {
                self.check_writable()?;
                self.check_range(req, EINVAL)?;
                if req.len > 0 {
                    t.trim(req.offset, req.len as u64, fua).await?;
                }
                Ok(self.ok_frames(req))
            }
            CMD_CACHE => {
                self.check_range(req, EINVAL)?;
                Ok(self.ok_frames(req))
            }
            CMD_WRITE_ZEROES => {
                self.check_writable()?;
                self.check_range(req, ENOSPC)?;
                if req.flags & CMD_FLAG_FAST_ZERO != 0 && !t.can_fast_zero() {
                    return Err(proto_err(ENOTSUP, "fast zero not supported"));
                }
                if req.len > 0 {
                    let no_hole = req.flags & CMD_FLAG_NO_HOLE != 0;
                    t.write_zeroes(req.offset, req.len as u64, fua, no_hole)
                        .await?;
                }
                Ok(self.ok_frames(req))
            }
            CMD_BLOCK_STATUS => {
                let Some(ctx) = self.session.meta_ctx else {
                    return Err(proto_err(EINVAL, "no metadata context negotiated"));
                };
                self.check_range(req, EINVAL)?;
                if req.len == 0 {
                    return Err(proto_err(EINVAL, "zero-length block status"));
                }
                let extents = t.block_status(req.offset, req.len as u64).await?;
                let req_one = req.flags & CMD_FLAG_REQ_ONE != 0;
                let Some(descs) = normalize_extents(&extents, req.len, req_one) else {
                    return Err(proto_err(EIO, "target returned an invalid extent list"));
                };
                let mut p = BytesMut::with_capacity(4 + descs.len() * 8);
                p.put_u32(ctx);
                for (len, flags) in descs {
                    p.put_u32(len);
                    p.put_u32(flags);
                }
                Ok(structured_chunk(
                    req.cookie,
                    REPLY_FLAG_DONE,
                    REPLY_TYPE_BLOCK_STATUS,
                    p.freeze(),
                ))
            }
            other => Err(proto_err(EINVAL, format!("unknown command {other}"))),
        }
    }

    async fn read(&self, req: &Request) -> Result<Vec<Bytes>, ProtoErr> {
        let t = self.target();
        let len = req.len as usize;
        if req.len > self.session.sizes.max {
            let errno = if self.session.structured {
                EOVERFLOW
            } else {
                EINVAL
            };
            return Err(proto_err(errno, "read larger than maximum payload"));
        }
        if !self.session.structured {
            let data = if len == 0 {
                Bytes::new()
            } else {
                t.read(req.offset, len).await?
            };
            if data.len() != len {
                return Err(proto_err(EIO, "target returned a short read"));
            }
            return Ok(vec![simple_header(req.cookie, 0), data]);
        }
        if len == 0 {
            return Ok(structured_chunk(
                req.cookie,
                REPLY_FLAG_DONE,
                REPLY_TYPE_NONE,
                Bytes::new(),
            ));
        }
        let chunks = if req.flags & CMD_FLAG_DF != 0 {
            vec![ReadChunk::Data(t.read(req.offset, len).await?)]
        } else {
            t.read_sparse(req.offset, len).await?
        };
        if chunks.iter().map(ReadChunk::len).sum::<u64>() != len as u64 {
            return Err(proto_err(EIO, "target returned a short read"));
        }
        let chunks: Vec<ReadChunk> = chunks.into_iter().filter(|c| !c.is_empty()).collect();
        let mut frames = Vec::with_capacity(chunks.len() * 2);
        let mut pos = req.offset;
        let last = chunks.len() - 1;
        for (i, c) in chunks.into_iter().enumerate() {
            let flags = if i == last { REPLY_FLAG_DONE } else { 0 };
            let n = c.len();
            match c {
                ReadChunk::Data(b) => {
                    let mut h = BytesMut::with_capacity(28);
                    h.put_u32(STRUCTURED_REPLY_MAGIC);
                    h.put_u16(flags);
                    h.put_u16(REPLY_TYPE_OFFSET_DATA);
                    h.put_u64(req.cookie);
                    h.put_u32(8 + b.len() as u32);
                    h.put_u64(pos);
                    frames.push(h.freeze());
                    frames.push(b);
                }
                ReadChunk::Zero(n) => {
                    let mut p = BytesMut::with_capacity(12);
                    p.put_u64(pos);
                    p.put_u32(n as u32);
                    frames.extend(structured_chunk(
                        req.cookie,
                        flags,
                        REPLY_TYPE_OFFSET_HOLE,
                        p.freeze(),
                    ));
                }
            }
            pos += n;
        }
        Ok(frames)
    }

    fn ok_frames(&self, req: &Request) -> Vec<Bytes> {
        vec![simple_header(req.cookie, 0)]
    }

    fn error_frames(&self, req: &Request, e: ProtoErr) -> Vec<Bytes> {
        if self.session.structured {
            let msg = truncate_str(&e.msg, MAX_STRING_LEN);
            let mut p = BytesMut::with_capacity(6 + msg.len());
            p.put_u32(e.errno);
            p.put_u16(msg.len() as u16);
            p.put_slice(msg.as_bytes());
            structured_chunk(req.cookie, REPLY_FLAG_DONE, REPLY_TYPE_ERROR, p.freeze())
        } else {
            vec![simple_header(req.cookie, e.errno)]
        }
    }
}

/// Clips the target's extents to the request, merges equal neighbours and
/// converts them to (length, flags) descriptors. `None` if the list is unusable.
fn normalize_extents(extents: &[Extent], len: u32, req_one: bool) -> Option<Vec<(u32, u32)>> {
    let len = len as u64;
    let mut out: Vec<(u32, u32)> = Vec::new();
    let mut covered = 0u64;
    for e in extents {
        if e.len == 0 {
            return None;
        }
        if covered >= len || out.len() >= MAX_EXTENTS_PER_CHUNK {
            break;
        }
        let take = e.len.min(len - covered);
        let flags = e.flags();
        match out.last_mut() {
            Some(last) if last.1 == flags => last.0 += take as u32,
            _ => out.push((take as u32, flags)),
        }
        covered += take;
    }
    if out.is_empty() {
        return None;
    }
    if req_one {
        out.truncate(1);
    }
    Some(out)
}

fn simple_header(cookie: u64, errno: u32) -> Bytes {
    let mut h = BytesMut::with_capacity(16);
    h.put_u32(SIMPLE_REPLY_MAGIC);
    h.put_u32(errno);
    h.put_u64(cookie);
    h.freeze()
}

fn structured_chunk(cookie: u64, flags: u16, typ: u16, payload: Bytes) -> Vec<Bytes> {
    let mut h = BytesMut::with_capacity(20 + payload.len().min(64));
    h.put_u32(STRUCTURED_REPLY_MAGIC);
    h.put_u16(flags);
    h.put_u16(typ);
    h.put_u64(cookie);
    h.put_u32(payload.len() as u32);
    if payload.len() <= 64 {
        h.put_slice(&payload);
        vec![h.freeze()]
    } else {
        vec![h.freeze(), payload]
    }
}

async fn opt_reply<W: AsyncWrite + Unpin>(
    w: &mut W,
    opt: u32,
    typ: u32,
    data: &[u8],
) -> io::Result<()> {
    let mut b = BytesMut::with_capacity(20 + data.len());
    b.put_u64(OPT_REPLY_MAGIC);
    b.put_u32(opt);
    b.put_u32(typ);
    b.put_u32(data.len() as u32);
    b.put_slice(data);
    w.write_all(&b).await
}

async fn opt_reply_msg<W: AsyncWrite + Unpin>(
    w: &mut W,
    opt: u32,
    typ: u32,
    msg: &str,
) -> io::Result<()> {
    opt_reply(w, opt, typ, truncate_str(msg, MAX_STRING_LEN).as_bytes()).await
}

fn truncate_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut n = max;
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    &s[..n]
}

/// Bounds-checked reader over option data.
struct Cursor<'a> {
    b: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn new(b: &'a [u8]) -> Self {
        Cursor { b }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.b.len() < n {
            return None;
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Some(h)
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|s| u16::from_be_bytes([s[0], s[1]]))
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }

    /// A string preceded by its 32-bit length; must be UTF-8 without NUL.
    fn string_u32(&mut self) -> Option<&'a str> {
        let n = self.u32()? as usize;
        if n > MAX_STRING_LEN {
            return None;
        }
        let s = std::str::from_utf8(self.take(n)?).ok()?;
        if s.contains('\0') {
            return None;
        }
        Some(s)
    }

    fn finish(&self) -> Option<()> {
        self.b.is_empty().then_some(())
    }
}

#[cfg(test)]
mod tests;
