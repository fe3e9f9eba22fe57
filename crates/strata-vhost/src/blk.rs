//! The virtio-blk side, without I/O: device configuration space, request
//! headers, the shape of descriptor chains and how each request maps onto the
//! block target (virtio 1.2, section 5.2 "Block Device").
//!
//! Everything here is pure so that it can be tested without a guest: a chain
//! is described by its [`Segment`]s, a request by its [`Header`], and the
//! result is a [`Request`] to run or the status to answer with.

use std::fmt;

use strata_nbd::{BlockSizes, NbdError};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};

/// The unit of `sector` fields and of the capacity, whatever the block size.
pub const SECTOR_SIZE: u64 = 512;
/// Size of `struct virtio_blk_outhdr`: le32 type, le32 reserved (ioprio), le64 sector.
pub const HEADER_SIZE: u64 = 16;
/// Size of `struct virtio_blk_discard_write_zeroes`.
pub const DISCARD_SEGMENT_SIZE: u64 = 16;
/// Length of the device ID returned by `VIRTIO_BLK_T_GET_ID`.
pub const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;
/// Most queues one device can have: the vring worker watches up to 32.
pub const MAX_QUEUES: usize = 32;
/// Bytes of configuration space we describe (through `unused1`, offset 60);
/// reads beyond it return zeroes.
pub const CONFIG_SPACE_SIZE: usize = 60;

/// Completion status written into the last byte of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    IoErr,
    Unsupported,
}

impl Status {
    pub fn byte(self) -> u8 {
        let v = match self {
            Status::Ok => VIRTIO_BLK_S_OK,
            Status::IoErr => VIRTIO_BLK_S_IOERR,
            Status::Unsupported => VIRTIO_BLK_S_UNSUPP,
        };
        v as u8
    }

    /// The status a failed target operation is reported with: virtio-blk has
    /// no finer error codes than "I/O error" and "unsupported".
    pub fn from_error(e: &NbdError) -> Status {
        match e {
            NbdError::NotSupported(_) => Status::Unsupported,
            _ => Status::IoErr,
        }
    }
}

/// Device limits, fixed for a connection and published in the config space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Geometry {
    /// Export size in bytes (the capacity is this divided by 512, rounded down).
    pub size_bytes: u64,
    /// Logical block size advertised with `VIRTIO_BLK_F_BLK_SIZE` (power of two, >= 512).
    pub blk_size: u32,
    /// Alignment the target needs for offsets and lengths (power of two).
    pub target_align: u32,
    /// Largest payload handed to one target `read`/`write` call.
    pub target_max_io: u32,
    /// `size_max`: largest single data segment.
    pub size_max: u32,
    /// `seg_max`: most data segments in one request.
    pub seg_max: u32,
    /// Largest data payload of one READ/WRITE request (`size_max * seg_max`).
    pub max_request_bytes: u64,
    /// Queues advertised in `num_queues`.
    pub num_queues: u16,
    /// `max_discard_sectors` / `max_write_zeroes_sectors` (per segment).
    pub max_discard_sectors: u32,
    /// `max_discard_seg` / `max_write_zeroes_seg`.
    pub max_discard_seg: u32,
    /// Writes are refused (`VIRTIO_BLK_F_RO`).
    pub read_only: bool,
}

/// Logical block size advertised unless told otherwise.
pub const DEFAULT_BLK_SIZE: u32 = 4096;
/// `size_max`: the largest data segment the guest may use.
pub const SIZE_MAX: u32 = 256 * 1024;
/// `seg_max`: the most data segments in one request (with `SIZE_MAX`, 32 MiB).
pub const SEG_MAX: u32 = 128;
/// Per-segment limit of DISCARD and WRITE_ZEROES: 1 GiB.
pub const MAX_DISCARD_SECTORS: u32 = (1 << 30) / SECTOR_SIZE as u32;
/// Segments in one DISCARD or WRITE_ZEROES request.
pub const MAX_DISCARD_SEG: u32 = 16;

impl Geometry {
    /// The device a target of `size_bytes` with `sizes` is shown as.
    ///
    /// `blk_size` is the logical block size to advertise; by default 4 KiB or
    /// the target's minimum I/O size if larger. A smaller one is honoured (the
    /// backend then reads-modifies-writes partial target blocks). The
    /// capacity is rounded down to both.
    pub fn new(
        size_bytes: u64,
        sizes: BlockSizes,
        read_only: bool,
        blk_size: Option<u32>,
        num_queues: u16,
    ) -> Result<Geometry, String> {
        if !sizes.is_valid() {
            return Err(format!("invalid target block sizes {sizes:?}"));
        }
        let blk_size = blk_size.unwrap_or(DEFAULT_BLK_SIZE.max(sizes.min));
        if !blk_size.is_power_of_two() || !(512..=65536).contains(&blk_size) {
            return Err(format!(
                "block size {blk_size} is not a power of two in 512..=65536"
            ));
        }
        if num_queues == 0 || usize::from(num_queues) > MAX_QUEUES {
            return Err(format!("{num_queues} queues, expected 1..={MAX_QUEUES}"));
        }
        let unit = u64::from(blk_size.max(sizes.min));
        let size_bytes = size_bytes / unit * unit;
        Ok(Geometry {
            size_bytes,
            blk_size,
            target_align: sizes.min,
            target_max_io: sizes.max,
            size_max: SIZE_MAX,
            seg_max: SEG_MAX,
            max_request_bytes: u64::from(SIZE_MAX) * u64::from(SEG_MAX),
            num_queues,
            max_discard_sectors: MAX_DISCARD_SECTORS,
            max_discard_seg: MAX_DISCARD_SEG,
            read_only,
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.size_bytes / SECTOR_SIZE
    }

    /// Bytes of the export the guest can address (whole sectors).
    pub fn addressable_bytes(&self) -> u64 {
        self.capacity_sectors() * SECTOR_SIZE
    }

    /// `struct virtio_blk_config`, little-endian, as far as we fill it in.
    pub fn config_space(&self) -> [u8; CONFIG_SPACE_SIZE] {
        let mut c = [0u8; CONFIG_SPACE_SIZE];
        put_u64(&mut c, 0, self.capacity_sectors()); // capacity
        put_u32(&mut c, 8, self.size_max); // size_max
        put_u32(&mut c, 12, self.seg_max); // seg_max
                                           // 16..20 geometry: not offered
        put_u32(&mut c, 20, self.blk_size); // blk_size
                                            // 24..32 topology: not offered
        c[32] = 0; // writeback (only meaningful with CONFIG_WCE)
        put_u16(&mut c, 34, self.num_queues); // num_queues
        put_u32(&mut c, 36, self.max_discard_sectors); // max_discard_sectors
        put_u32(&mut c, 40, self.max_discard_seg); // max_discard_seg
        put_u32(&mut c, 44, self.discard_alignment_sectors()); // discard_sector_alignment
        put_u32(&mut c, 48, self.max_discard_sectors); // max_write_zeroes_sectors
        put_u32(&mut c, 52, self.max_discard_seg); // max_write_zeroes_seg
        c[56] = 1; // write_zeroes_may_unmap
        c
    }

    /// `size` bytes of the config space from `offset` (zeroes past what we
    /// describe), as answered to `VHOST_USER_GET_CONFIG`.
    pub fn config_read(&self, offset: u32, size: u32) -> Vec<u8> {
        let space = self.config_space();
        let mut out = vec![0u8; size as usize];
        let start = offset as usize;
        if start < space.len() {
            let n = (space.len() - start).min(out.len());
            out[..n].copy_from_slice(&space[start..start + n]);
        }
        out
    }

    fn discard_alignment_sectors(&self) -> u32 {
        (u64::from(self.blk_size.max(self.target_align)) / SECTOR_SIZE).max(1) as u32
    }
}

fn put_u16(buf: &mut [u8], at: usize, v: u16) {
    buf[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// The request header (`struct virtio_blk_outhdr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub request_type: u32,
    pub ioprio: u32,
    pub sector: u64,
}

impl Header {
    pub fn parse(bytes: &[u8; HEADER_SIZE as usize]) -> Header {
        Header {
            request_type: u32::from_le_bytes(bytes[0..4].try_into().unwrap_or_default()),
            ioprio: u32::from_le_bytes(bytes[4..8].try_into().unwrap_or_default()),
            sector: u64::from_le_bytes(bytes[8..16].try_into().unwrap_or_default()),
        }
    }
}

/// One descriptor of a chain, as the device sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical address.
    pub addr: u64,
    pub len: u32,
    /// Device-writable (`VIRTQ_DESC_F_WRITE`).
    pub writable: bool,
}

impl Segment {
    pub fn readable(addr: u64, len: u32) -> Self {
        Segment {
            addr,
            len,
            writable: false,
        }
    }

    pub fn writable(addr: u64, len: u32) -> Self {
        Segment {
            addr,
            len,
            writable: true,
        }
    }
}

/// Why a chain cannot carry a request at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainError {
    /// No descriptor (or the chain could not be read).
    Empty,
    /// More descriptors than we accept in one chain.
    TooLong(usize),
    /// A device-readable descriptor after a device-writable one.
    ReadableAfterWritable,
    /// No device-writable byte to put the status in.
    NoStatus,
    /// Fewer than 16 device-readable bytes: no room for the header.
    ShortHeader(u64),
    /// A descriptor's range wraps around the address space.
    AddressOverflow,
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChainError::Empty => write!(f, "empty descriptor chain"),
            ChainError::TooLong(n) => write!(f, "descriptor chain of {n} descriptors"),
            ChainError::ReadableAfterWritable => {
                write!(f, "device-readable descriptor after a device-writable one")
            }
            ChainError::NoStatus => write!(f, "no device-writable byte for the status"),
            ChainError::ShortHeader(n) => write!(f, "{n} device-readable bytes, header needs 16"),
            ChainError::AddressOverflow => write!(f, "descriptor range wraps around"),
        }
    }
}

/// Most descriptors we accept in one chain (indirect tables can hold 65535).
pub const MAX_CHAIN_DESCRIPTORS: usize = 4096;

/// A chain split into its parts: the device-readable bytes (header, then
/// the payload of OUT/DISCARD/WRITE_ZEROES), the device-writable bytes (the
/// payload of IN/GET_ID) and the status byte, which is the last writable byte.
/// The header and payloads may be split across descriptors in any way
/// (`VIRTIO_F_ANY_LAYOUT` is implied by `VIRTIO_F_VERSION_1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub header: Vec<Segment>,
    pub out_data: Vec<Segment>,
    pub in_data: Vec<Segment>,
    /// Guest address of the status byte.
    pub status_addr: u64,
}

impl Layout {
    pub fn out_len(&self) -> u64 {
        total_len(&self.out_data)
    }

    pub fn in_len(&self) -> u64 {
        total_len(&self.in_data)
    }
}

/// Sum of the segment lengths.
pub fn total_len(segs: &[Segment]) -> u64 {
    segs.iter().map(|s| u64::from(s.len)).sum()
}

/// Where the status byte of a chain is, if it has one: the last byte of its
/// last device-writable descriptor. Used to report `IOERR` for chains that
/// [`parse_layout`] rejects.
pub fn status_addr(segs: &[Segment]) -> Option<u64> {
    segs.iter()
        .rev()
        .find(|s| s.writable && s.len > 0)
        .and_then(|s| s.addr.checked_add(u64::from(s.len) - 1))
}

/// Splits a chain into header, payloads and status (see [`Layout`]).
pub fn parse_layout(segs: &[Segment]) -> Result<Layout, ChainError> {
    if segs.is_empty() {
        return Err(ChainError::Empty);
    }
    if segs.len() > MAX_CHAIN_DESCRIPTORS {
        return Err(ChainError::TooLong(segs.len()));
    }
    let mut seen_writable = false;
    for s in segs {
        if s.len > 0 && s.addr.checked_add(u64::from(s.len) - 1).is_none() {
            return Err(ChainError::AddressOverflow);
        }
        if s.writable {
            seen_writable = true;
        } else if seen_writable && s.len > 0 {
            return Err(ChainError::ReadableAfterWritable);
        }
    }
    let readable: Vec<Segment> = segs
        .iter()
        .filter(|s| !s.writable && s.len > 0)
        .copied()
        .collect();
    let writable: Vec<Segment> = segs
        .iter()
        .filter(|s| s.writable && s.len > 0)
        .copied()
        .collect();
    let w_len = total_len(&writable);
    if w_len == 0 {
        return Err(ChainError::NoStatus);
    }
    let r_len = total_len(&readable);
    if r_len < HEADER_SIZE {
        return Err(ChainError::ShortHeader(r_len));
    }
    let status = sub_range(&writable, w_len - 1, 1);
    let status_addr = match status.as_slice() {
        [s] => s.addr,
        _ => return Err(ChainError::NoStatus),
    };
    Ok(Layout {
        header: sub_range(&readable, 0, HEADER_SIZE),
        out_data: sub_range(&readable, HEADER_SIZE, r_len - HEADER_SIZE),
        in_data: sub_range(&writable, 0, w_len - 1),
        status_addr,
    })
}

/// The segments covering bytes `offset..offset+len` of the concatenation of
/// `segs` (clipped to what `segs` holds).
pub fn sub_range(segs: &[Segment], offset: u64, len: u64) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut skip = offset;
    let mut left = len;
    for s in segs {
        if left == 0 {
            break;
        }
        let slen = u64::from(s.len);
        if skip >= slen {
            skip -= slen;
            continue;
        }
        let take = (slen - skip).min(left);
        out.push(Segment {
            addr: s.addr + skip,
            len: take as u32,
            writable: s.writable,
        });
        left -= take;
        skip = 0;
    }
    out
}

/// One range of a DISCARD or WRITE_ZEROES request, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZeroRange {
    pub offset: u64,
    pub len: u64,
    /// `VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP`: the range may be deallocated.
    pub unmap: bool,
}

/// A request that passed validation, ready to run against the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Read `len` bytes at `offset` into the chain's writable payload.
    Read {
        offset: u64,
        len: u64,
    },
    /// Write the chain's readable payload (`len` bytes) at `offset`.
    Write {
        offset: u64,
        len: u64,
    },
    Flush,
    /// Write the device ID (up to 20 bytes) into the writable payload.
    GetId,
    Discard(Vec<ZeroRange>),
    WriteZeroes(Vec<ZeroRange>),
}

/// A request refused before it reaches the target: the status to answer
/// with and why (for the log line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: Status,
    pub reason: String,
}

impl Rejection {
    fn ioerr(reason: impl Into<String>) -> Self {
        Rejection {
            status: Status::IoErr,
            reason: reason.into(),
        }
    }

    fn unsupported(reason: impl Into<String>) -> Self {
        Rejection {
            status: Status::Unsupported,
            reason: reason.into(),
        }
    }
}

/// Byte range of `len` bytes at `sector`, checked against the capacity.
pub fn byte_range(geo: &Geometry, sector: u64, len: u64) -> Result<u64, Rejection> {
    let offset = sector
        .checked_mul(SECTOR_SIZE)
        .ok_or_else(|| Rejection::ioerr(format!("sector {sector} overflows")))?;
    match offset.checked_add(len) {
        Some(end) if end <= geo.addressable_bytes() => Ok(offset),
        _ => Err(Rejection::ioerr(format!(
            "{len} bytes at sector {sector} beyond capacity of {} sectors",
            geo.capacity_sectors()
        ))),
    }
}

/// Validates a request against the device limits. `out_len` and `in_len`
/// are the readable payload after the header and the writable payload before
/// the status byte; `discard_payload` holds the readable payload when the
/// request is a DISCARD or WRITE_ZEROES (it is read from the guest first).
pub fn plan(
    geo: &Geometry,
    hdr: &Header,
    out_len: u64,
    in_len: u64,
    discard_payload: Option<&[u8]>,
) -> Result<Request, Rejection> {
    match hdr.request_type {
        VIRTIO_BLK_T_IN => {
            let len = in_len;
            check_io_len(geo, len, "read")?;
            let offset = byte_range(geo, hdr.sector, len)?;
            Ok(Request::Read { offset, len })
        }
        VIRTIO_BLK_T_OUT => {
            if geo.read_only {
                return Err(Rejection::ioerr("write to a read-only device"));
            }
            let len = out_len;
            check_io_len(geo, len, "write")?;
            let offset = byte_range(geo, hdr.sector, len)?;
            Ok(Request::Write { offset, len })
        }
        VIRTIO_BLK_T_FLUSH => Ok(Request::Flush),
        VIRTIO_BLK_T_GET_ID => Ok(Request::GetId),
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            let zeroes = hdr.request_type == VIRTIO_BLK_T_WRITE_ZEROES;
            if geo.read_only {
                return Err(Rejection::ioerr(
                    "discard/write-zeroes on a read-only device",
                ));
            }
            check_discard_len(geo, out_len)?;
            let payload = discard_payload.unwrap_or(&[]);
            if payload.len() as u64 != out_len {
                return Err(Rejection::ioerr("discard/write-zeroes payload not read"));
            }
            let ranges = parse_discard_segments(geo, payload, zeroes)?;
            Ok(if zeroes {
                Request::WriteZeroes(ranges)
            } else {
                Request::Discard(ranges)
            })
        }
        t => Err(Rejection::unsupported(format!("request type {t}"))),
    }
}

fn check_io_len(geo: &Geometry, len: u64, what: &str) -> Result<(), Rejection> {
    if !len.is_multiple_of(SECTOR_SIZE) {
        return Err(Rejection::ioerr(format!(
            "{what} of {len} bytes is not a whole number of sectors"
        )));
    }
    if len > geo.max_request_bytes {
        return Err(Rejection::ioerr(format!(
            "{what} of {len} bytes exceeds the limit of {}",
            geo.max_request_bytes
        )));
    }
    Ok(())
}

/// Checks the payload size of a DISCARD or WRITE_ZEROES request before it is
/// read from the guest: a non-empty array of at most `max_discard_seg`
/// 16-byte segments.
pub fn check_discard_len(geo: &Geometry, out_len: u64) -> Result<(), Rejection> {
    if out_len == 0 || !out_len.is_multiple_of(DISCARD_SEGMENT_SIZE) {
        return Err(Rejection::ioerr(format!(
            "discard/write-zeroes payload of {out_len} bytes is not a non-empty array of 16-byte segments"
        )));
    }
    let count = out_len / DISCARD_SEGMENT_SIZE;
    if count > u64::from(geo.max_discard_seg) {
        return Err(Rejection::ioerr(format!(
            "{count} discard/write-zeroes segments, limit {}",
            geo.max_discard_seg
        )));
    }
    Ok(())
}

/// Parses the `struct virtio_blk_discard_write_zeroes` array of a DISCARD
/// (`zeroes == false`) or WRITE_ZEROES request.
pub fn parse_discard_segments(
    geo: &Geometry,
    payload: &[u8],
    zeroes: bool,
) -> Result<Vec<ZeroRange>, Rejection> {
    let seg = DISCARD_SEGMENT_SIZE as usize;
    check_discard_len(geo, payload.len() as u64)?;
    let count = payload.len() / seg;
    let mut out = Vec::with_capacity(count);
    for chunk in payload.chunks_exact(seg) {
        let sector = u64::from_le_bytes(chunk[0..8].try_into().unwrap_or_default());
        let num_sectors = u32::from_le_bytes(chunk[8..12].try_into().unwrap_or_default());
        let flags = u32::from_le_bytes(chunk[12..16].try_into().unwrap_or_default());
        let unmap = flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
        if flags & !VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0 {
            return Err(Rejection::unsupported(format!(
                "discard/write-zeroes flags {flags:#x}"
            )));
        }
        if unmap && !zeroes {
            // "the device MUST set the status to VIRTIO_BLK_S_UNSUPP for
            // discard commands if the unmap flag is set"
            return Err(Rejection::unsupported("unmap flag on a discard"));
        }
        if num_sectors > geo.max_discard_sectors {
            return Err(Rejection::ioerr(format!(
                "discard/write-zeroes of {num_sectors} sectors, limit {}",
                geo.max_discard_sectors
            )));
        }
        let len = u64::from(num_sectors) * SECTOR_SIZE;
        let offset = byte_range(geo, sector, len)?;
        out.push(ZeroRange { offset, len, unmap });
    }
    Ok(out)
}

/// The GET_ID answer: the serial, NUL-padded or cut to 20 bytes.
pub fn device_id(serial: &str) -> [u8; ID_BYTES] {
    let mut id = [0u8; ID_BYTES];
    let b = serial.as_bytes();
    let n = b.len().min(ID_BYTES);
    id[..n].copy_from_slice(&b[..n]);
    id
}

/// Range `[offset, offset+len)` widened to multiples of `align` (a power of two).
pub fn align_out(offset: u64, len: u64, align: u64) -> (u64, u64) {
    let start = offset & !(align - 1);
    let end = (offset + len).div_ceil(align) * align;
    (start, end - start)
}

/// The aligned part inside `[offset, offset+len)`, if any.
pub fn align_in(offset: u64, len: u64, align: u64) -> Option<(u64, u64)> {
    let start = offset.div_ceil(align) * align;
    let end = (offset + len) & !(align - 1);
    (end > start).then(|| (start, end - start))
}

/// Splits `[offset, offset+len)` into pieces of at most `max` bytes whose
/// boundaries stay on multiples of `align` (`max` is rounded down to one).
pub fn chunks(offset: u64, len: u64, max: u64, align: u64) -> Vec<(u64, u64)> {
    let step = (max / align * align).max(align);
    let mut out = Vec::new();
    let mut at = offset;
    let end = offset + len;
    while at < end {
        let n = step.min(end - at);
        out.push((at, n));
        at += n;
    }
    out
}

#[cfg(test)]
mod tests;
