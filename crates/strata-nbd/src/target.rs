//! The storage side of an export: what the protocol layer needs from a block
//! device, independent of how the bytes are kept.

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;

use crate::proto;

/// Result of a block target operation.
pub type NbdResult<T> = Result<T, NbdError>;

/// Errors a target reports; each maps onto one NBD error value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NbdError {
    /// Generic I/O failure (`NBD_EIO`).
    #[error("I/O error: {0}")]
    Io(String),
    /// Bad offset, length, alignment or flag (`NBD_EINVAL`).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Out of space, or a write beyond the end of the export (`NBD_ENOSPC`).
    #[error("no space left: {0}")]
    NoSpace(String),
    /// Write to a read-only export, or otherwise forbidden (`NBD_EPERM`).
    #[error("operation not permitted: {0}")]
    PermissionDenied(String),
    /// Request too large to serve (`NBD_EOVERFLOW`).
    #[error("value too large: {0}")]
    Overflow(String),
    /// Operation not supported, e.g. a fast zero that would be slow (`NBD_ENOTSUP`).
    #[error("operation not supported: {0}")]
    NotSupported(String),
    /// Out of memory (`NBD_ENOMEM`).
    #[error("out of memory: {0}")]
    NoMemory(String),
    /// The target is going away (`NBD_ESHUTDOWN`).
    #[error("shutting down: {0}")]
    Shutdown(String),
}

impl NbdError {
    /// The NBD error value sent to the client.
    pub fn errno(&self) -> u32 {
        match self {
            NbdError::Io(_) => proto::EIO,
            NbdError::InvalidArgument(_) => proto::EINVAL,
            NbdError::NoSpace(_) => proto::ENOSPC,
            NbdError::PermissionDenied(_) => proto::EPERM,
            NbdError::Overflow(_) => proto::EOVERFLOW,
            NbdError::NotSupported(_) => proto::ENOTSUP,
            NbdError::NoMemory(_) => proto::ENOMEM,
            NbdError::Shutdown(_) => proto::ESHUTDOWN,
        }
    }

    pub fn io(msg: impl Into<String>) -> Self {
        NbdError::Io(msg.into())
    }

    pub fn invalid(msg: impl Into<String>) -> Self {
        NbdError::InvalidArgument(msg.into())
    }
}

impl From<std::io::Error> for NbdError {
    fn from(e: std::io::Error) -> Self {
        let msg = e.to_string();
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG) => NbdError::NoSpace(msg),
            Some(libc::EPERM) | Some(libc::EACCES) | Some(libc::EROFS) => {
                NbdError::PermissionDenied(msg)
            }
            Some(libc::EINVAL) => NbdError::InvalidArgument(msg),
            Some(libc::EOVERFLOW) => NbdError::Overflow(msg),
            Some(libc::EOPNOTSUPP) => NbdError::NotSupported(msg),
            Some(libc::ENOMEM) => NbdError::NoMemory(msg),
            Some(libc::ESHUTDOWN) => NbdError::Shutdown(msg),
            _ => match e.kind() {
                std::io::ErrorKind::InvalidInput => NbdError::InvalidArgument(msg),
                std::io::ErrorKind::PermissionDenied => NbdError::PermissionDenied(msg),
                std::io::ErrorKind::OutOfMemory => NbdError::NoMemory(msg),
                std::io::ErrorKind::Unsupported => NbdError::NotSupported(msg),
                _ => NbdError::Io(msg),
            },
        }
    }
}

/// One run of the `base:allocation` map, starting where the previous one ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Length in bytes (non-zero).
    pub len: u64,
    /// Not allocated in the backing store.
    pub hole: bool,
    /// Reads as zeroes.
    pub zero: bool,
}

impl Extent {
    pub fn data(len: u64) -> Self {
        Extent {
            len,
            hole: false,
            zero: false,
        }
    }

    pub fn hole(len: u64) -> Self {
        Extent {
            len,
            hole: true,
            zero: true,
        }
    }

    /// `base:allocation` status flags of this extent.
    pub fn flags(&self) -> u32 {
        let mut f = 0;
        if self.hole {
            f |= proto::STATE_HOLE;
        }
        if self.zero {
            f |= proto::STATE_ZERO;
        }
        f
    }
}

/// A piece of a sparse read, see [`BlockTarget::read_sparse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadChunk {
    /// Bytes read from the export.
    Data(Bytes),
    /// This many bytes read as zeroes.
    Zero(u64),
}

impl ReadChunk {
    pub fn len(&self) -> u64 {
        match self {
            ReadChunk::Data(b) => b.len() as u64,
            ReadChunk::Zero(n) => *n,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Size constraints advertised with `NBD_INFO_BLOCK_SIZE` and enforced on requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSizes {
    /// Power of two, 1..=65536: alignment of offsets and lengths.
    pub min: u32,
    /// Power of two, at least max(min, 512).
    pub preferred: u32,
    /// Largest READ/WRITE payload, at least `preferred`.
    pub max: u32,
}

/// Default largest payload: 32 MiB, the size every client may assume.
pub const DEFAULT_MAX_PAYLOAD: u32 = 32 * 1024 * 1024;

impl Default for BlockSizes {
    fn default() -> Self {
        BlockSizes {
            min: 1,
            preferred: 4096,
            max: DEFAULT_MAX_PAYLOAD,
        }
    }
}

impl BlockSizes {
    /// Whether these constraints are internally consistent (per the protocol).
    pub fn is_valid(&self) -> bool {
        self.min.is_power_of_two()
            && self.min <= 65536
            && self.preferred.is_power_of_two()
            && self.preferred >= self.min.max(512)
            && self.max >= self.preferred
    }
}

/// A block device exported over NBD.
///
/// Offsets and lengths handed to the I/O methods have already been checked by
/// the server against [`size_bytes`](Self::size_bytes) and the minimum block
/// size, and lengths are never larger than the maximum payload for `read` and
/// `write`; implementations may still refuse requests with an [`NbdError`].
///
/// `fua` asks that the data be durable before the future resolves.
pub trait BlockTarget: Send + Sync + 'static {
    /// Size of the export in bytes.
    fn size_bytes(&self) -> u64;

    /// Block size constraints. Defaults to 1 / 4 KiB / 32 MiB.
    fn block_sizes(&self) -> BlockSizes {
        BlockSizes::default()
    }

    /// Refuse all writes (advertised as `NBD_FLAG_READ_ONLY`).
    fn read_only(&self) -> bool {
        false
    }

    /// Flush and FUA on one connection are visible on all others
    /// (advertised as `NBD_FLAG_CAN_MULTI_CONN`).
    fn can_multi_conn(&self) -> bool {
        false
    }

    /// Whether [`write_zeroes`](Self::write_zeroes) is cheaper than writing
    /// zero bytes; when false, fast-zero requests fail with `NBD_ENOTSUP`.
    fn can_fast_zero(&self) -> bool {
        false
    }

    /// Human-readable description shown by `NBD_OPT_LIST` and `NBD_INFO_DESCRIPTION`.
    fn description(&self) -> Option<String> {
        None
    }

    /// Read exactly `len` bytes at `offset`.
    fn read(&self, offset: u64, len: usize) -> BoxFuture<'_, NbdResult<Bytes>>;

    /// Read `len` bytes at `offset` as consecutive chunks, zero runs possibly
    /// reported without their bytes. The chunks must cover the range exactly,
    /// in order. The default reads everything as data.
    fn read_sparse(&self, offset: u64, len: usize) -> BoxFuture<'_, NbdResult<Vec<ReadChunk>>> {
        self.read(offset, len)
            .map(|r| r.map(|b| vec![ReadChunk::Data(b)]))
            .boxed()
    }

    /// Write `data` at `offset`.
    fn write(&self, offset: u64, data: Bytes, fua: bool) -> BoxFuture<'_, NbdResult<()>>;

    /// Make every completed write durable.
    fn flush(&self) -> BoxFuture<'_, NbdResult<()>>;

    /// Discard a range (a hint: contents afterwards are unspecified).
    fn trim(&self, offset: u64, len: u64, fua: bool) -> BoxFuture<'_, NbdResult<()>>;

    /// Make a range read as zeroes; with `no_hole` it must stay allocated.
    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        fua: bool,
        no_hole: bool,
    ) -> BoxFuture<'_, NbdResult<()>>;

    /// Allocation map starting at `offset`: consecutive non-empty extents
    /// covering at least the first byte of the range (they may stop short of
    /// `len` or run past it; the server trims them).
    fn block_status(&self, offset: u64, len: u64) -> BoxFuture<'_, NbdResult<Vec<Extent>>>;
}
