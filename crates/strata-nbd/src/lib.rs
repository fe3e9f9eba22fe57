//! NBD (Network Block Device) server.
//!
//! Exports [`BlockTarget`]s by name (an [`Exports`] registry) to NBD clients
//! such as QEMU, `nbd-client` or libnbd, over TCP or Unix sockets. Implements
//! the fixed newstyle handshake (`NBD_OPT_GO`/`INFO`/`LIST`/`EXPORT_NAME`,
//! structured replies, the `base:allocation` metadata context) and a
//! pipelined transmission phase (READ, WRITE with FUA, FLUSH, TRIM,
//! WRITE_ZEROES, CACHE, BLOCK_STATUS, DISC).
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use std::sync::Arc;
//! use strata_nbd::{serve_tcp, Exports, MemTarget};
//!
//! let exports = Exports::new();
//! exports.add("disk", Arc::new(MemTarget::new(1 << 30))).unwrap();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:10809").await?;
//! serve_tcp(listener, exports).await
//! # }
//! ```

mod exports;
mod file;
mod mem;
mod payload;
pub mod proto;
mod server;
mod target;

pub use exports::{Export, ExportError, Exports};
pub use file::FileTarget;
pub use mem::{MemTarget, PAGE_SIZE};
pub use payload::PAYLOAD_ALIGN;
pub use server::{serve_tcp, serve_unix, ConnError, Server, ServerConfig};
pub use target::{
    BlockSizes, BlockTarget, Extent, NbdError, NbdResult, ReadChunk, DEFAULT_MAX_PAYLOAD,
};
