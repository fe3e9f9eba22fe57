//! Block target over a (sparse) regular file.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::FutureExt;

use crate::mem::push_extent;
use crate::target::{BlockSizes, BlockTarget, Extent, NbdError, NbdResult};

/// Most extents one block status call reports (the client asks again for the rest).
const MAX_FILE_EXTENTS: usize = 4096;
/// Buffer used when zeroes have to be written out.
const ZERO_BUF: usize = 1 << 20;

/// A block device backed by a regular file: `pread`/`pwrite`, `fdatasync`
/// for flush/FUA, `SEEK_DATA`/`SEEK_HOLE` for the allocation map and
/// `fallocate` hole punching for trim.
pub struct FileTarget {
    file: Arc<File>,
    size: u64,
    read_only: bool,
    block_sizes: BlockSizes,
}

impl FileTarget {
    /// Opens `path` read-write, creating it if needed; when `size` is given
    /// the file is truncated or extended (sparsely) to it.
    pub fn open(path: impl AsRef<Path>, size: Option<u64>) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        if let Some(size) = size {
            file.set_len(size)?;
        }
        let size = file.metadata()?.len();
        Ok(FileTarget {
            file: Arc::new(file),
            size,
            read_only: false,
            block_sizes: BlockSizes::default(),
        })
    }

    /// Opens an existing file read-only.
    pub fn open_read_only(path: impl AsRef<Path>) -> io::Result<Self> {
        let file = File::open(path)?;
        let size = file.metadata()?.len();
        Ok(FileTarget {
            file: Arc::new(file),
            size,
            read_only: true,
            block_sizes: BlockSizes::default(),
        })
    }

    pub fn with_block_sizes(mut self, sizes: BlockSizes) -> Self {
        self.block_sizes = sizes;
        self
    }

    fn check_range(&self, offset: u64, len: u64) -> NbdResult<u64> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(end),
            _ => Err(NbdError::invalid(format!(
                "range {offset}+{len} beyond size {}",
                self.size
            ))),
        }
    }

    fn check_writable(&self) -> NbdResult<()> {
        if self.read_only {
            return Err(NbdError::PermissionDenied("read-only target".into()));
        }
        Ok(())
    }

    /// Runs blocking file I/O off the async threads.
    fn blocking<T, F>(&self, f: F) -> BoxFuture<'static, NbdResult<T>>
    where
        T: Send + 'static,
        F: FnOnce(&File) -> NbdResult<T> + Send + 'static,
    {
        let file = Arc::clone(&self.file);
        async move {
            match tokio::task::spawn_blocking(move || f(&file)).await {
                Ok(r) => r,
                Err(e) => Err(NbdError::io(format!("file task failed: {e}"))),
            }
        }
        .boxed()
    }
}

fn fallocate(file: &File, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    let off =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: plain syscall on an open descriptor owned by `file`.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), mode, off, len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `lseek(SEEK_DATA / SEEK_HOLE)`; `Ok(None)` when there is no more data (ENXIO).
fn seek(file: &File, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    let off =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: plain syscall on an open descriptor owned by `file`; lseek on a
    // shared descriptor is fine for SEEK_DATA/SEEK_HOLE since we never rely on
    // the file position elsewhere (all I/O is positional).
    let rc = unsafe { libc::lseek(file.as_raw_fd(), off, whence) };
    if rc >= 0 {
        return Ok(Some(rc as u64));
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENXIO) {
        Ok(None)
    } else {
        Err(e)
    }
}

fn write_zero_bytes(file: &File, mut offset: u64, end: u64) -> io::Result<()> {
    let zeros = vec![0u8; ZERO_BUF.min((end - offset) as usize)];
    while offset < end {
        let n = (end - offset).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], offset)?;
        offset += n as u64;
    }
    Ok(())
}

fn file_block_status(file: &File, offset: u64, end: u64) -> io::Result<Vec<Extent>> {
    let mut out = Vec::new();
    let mut pos = offset;
    while pos < end && out.len() < MAX_FILE_EXTENTS {
        let data = match seek(file, pos, libc::SEEK_DATA) {
            Ok(d) => d,
            // No SEEK_DATA support: report everything as allocated.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                push_extent(&mut out, Extent::data(end - pos));
                break;
            }
            Err(e) => return Err(e),
        };
        match data {
            None => {
                push_extent(&mut out, Extent::hole(end - pos));
                break;
            }
            Some(d) if d > pos => {
                let stop = d.min(end);
                push_extent(&mut out, Extent::hole(stop - pos));
                pos = stop;
            }
            Some(_) => {
                let hole = seek(file, pos, libc::SEEK_HOLE)?.unwrap_or(end);
                let stop = hole.clamp(pos + 1, end);
                push_extent(&mut out, Extent::data(stop - pos));
                pos = stop;
            }
        }
    }
    Ok(out)
}

impl BlockTarget for FileTarget {
    fn size_bytes(&self) -> u64 {
        self.size
    }

    fn block_sizes(&self) -> BlockSizes {
        self.block_sizes
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn can_multi_conn(&self) -> bool {
        // One descriptor shared by every connection; fdatasync covers all of them.
        true
    }

    fn can_fast_zero(&self) -> bool {
        true
    }

    fn read(&self, offset: u64, len: usize) -> BoxFuture<'_, NbdResult<Bytes>> {
        if let Err(e) = self.check_range(offset, len as u64) {
            return futures::future::ready(Err(e)).boxed();
        }
        self.blocking(move |file| {
            let mut buf = BytesMut::zeroed(len);
            let mut done = 0usize;
            while done < len {
                match file.read_at(&mut buf[done..], offset + done as u64) {
                    // Past the end of a shrunk file: the rest reads as zeroes.
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(buf.freeze())
        })
    }

    fn write(&self, offset: u64, data: Bytes, fua: bool) -> BoxFuture<'_, NbdResult<()>> {
        if let Err(e) = self.check_writable().and_then(|_| {
            self.check_range(offset, data.len() as u64)
                .map_err(|e| NbdError::NoSpace(e.to_string()))
        }) {
            return futures::future::ready(Err(e)).boxed();
        }
        self.blocking(move |file| {
            file.write_all_at(&data, offset)?;
            if fua {
                file.sync_data()?;
            }
            Ok(())
        })
    }

    fn flush(&self) -> BoxFuture<'_, NbdResult<()>> {
        self.blocking(|file| Ok(file.sync_data()?))
    }

    fn trim(&self, offset: u64, len: u64, fua: bool) -> BoxFuture<'_, NbdResult<()>> {
        if let Err(e) = self
            .check_writable()
            .and_then(|_| self.check_range(offset, len))
        {
            return futures::future::ready(Err(e)).boxed();
        }
        self.blocking(move |file| {
            match fallocate(
                file,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            ) {
                Ok(()) => {}
                // Trim is advisory: nothing to do where punching is unsupported.
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
                Err(e) => return Err(e.into()),
            }
            if fua {
                file.sync_data()?;
            }
            Ok(())
        })
    }

    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        fua: bool,
        no_hole: bool,
    ) -> BoxFuture<'_, NbdResult<()>> {
        if let Err(e) = self.check_writable().and_then(|_| {
            self.check_range(offset, len)
                .map_err(|e| NbdError::NoSpace(e.to_string()))
        }) {
            return futures::future::ready(Err(e)).boxed();
        }
        self.blocking(move |file| {
            let mode = if no_hole {
                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
            } else {
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
            };
            match fallocate(file, mode, offset, len) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                    write_zero_bytes(file, offset, offset + len)?
                }
                Err(e) => return Err(e.into()),
            }
            if fua {
                file.sync_data()?;
            }
            Ok(())
        })
    }

    fn block_status(&self, offset: u64, len: u64) -> BoxFuture<'_, NbdResult<Vec<Extent>>> {
        let end = match self.check_range(offset, len) {
            Ok(end) => end,
            Err(e) => return futures::future::ready(Err(e)).boxed(),
        };
        self.blocking(move |file| Ok(file_block_status(file, offset, end)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_target_roundtrip_and_map() {
        let dir = tempfile::tempdir().unwrap();
        let size = 4 << 20;
        let t = FileTarget::open(dir.path().join("disk.img"), Some(size)).unwrap();
        assert_eq!(t.size_bytes(), size);

        let ext = t.block_status(0, size).await.unwrap();
        assert_eq!(
            ext,
            vec![Extent::hole(size)],
            "fresh sparse file is one hole"
        );

        t.write(1 << 20, Bytes::from(vec![0x5a; 65536]), true)
            .await
            .unwrap();
        let got = t.read((1 << 20) - 10, 20).await.unwrap();
        assert_eq!(&got[..10], &[0u8; 10]);
        assert_eq!(&got[10..], &[0x5a; 10]);

        let ext = t.block_status(0, size).await.unwrap();
        let data: Vec<_> = ext.iter().filter(|e| !e.hole).collect();
        assert!(!data.is_empty());
        assert_eq!(ext.iter().map(|e| e.len).sum::<u64>(), size);
        // The written range is data.
        let mut pos = 0;
        for e in &ext {
            if pos <= 1 << 20 && (1 << 20) < pos + e.len {
                assert!(!e.hole);
            }
            pos += e.len;
        }

        t.trim(1 << 20, 65536, false).await.unwrap();
        assert!(t
            .read(1 << 20, 65536)
            .await
            .unwrap()
            .iter()
            .all(|b| *b == 0));
        assert_eq!(
            t.block_status(0, size).await.unwrap(),
            vec![Extent::hole(size)]
        );

        t.write(0, Bytes::from(vec![1u8; 8192]), false)
            .await
            .unwrap();
        t.write_zeroes(0, 8192, false, true).await.unwrap();
        assert!(t.read(0, 8192).await.unwrap().iter().all(|b| *b == 0));
        t.flush().await.unwrap();

        assert_eq!(
            t.write(size - 1, Bytes::from_static(b"ab"), false)
                .await
                .unwrap_err()
                .errno(),
            crate::proto::ENOSPC
        );
    }
}
