//! Sparse in-memory block target.

use std::collections::BTreeMap;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::{Bytes, BytesMut};
use futures::future::{self, BoxFuture};
use futures::FutureExt;

use crate::target::{BlockSizes, BlockTarget, Extent, NbdError, NbdResult, ReadChunk};

/// Allocation unit of [`MemTarget`].
pub const PAGE_SIZE: u64 = 4096;

type Page = Box<[u8]>;

/// A sparse, volatile block device: 4 KiB pages allocated on first write,
/// unwritten (or trimmed) pages reported as holes and read as zeroes.
pub struct MemTarget {
    size: u64,
    pages: RwLock<BTreeMap<u64, Page>>,
    read_only: bool,
    block_sizes: BlockSizes,
    description: Option<String>,
}

impl MemTarget {
    pub fn new(size: u64) -> Self {
        MemTarget {
            size,
            pages: RwLock::new(BTreeMap::new()),
            read_only: false,
            block_sizes: BlockSizes::default(),
            description: None,
        }
    }

    pub fn with_read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    pub fn with_block_sizes(mut self, sizes: BlockSizes) -> Self {
        self.block_sizes = sizes;
        self
    }

    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// Bytes of memory held by allocated pages.
    pub fn allocated_bytes(&self) -> u64 {
        self.pages_read().len() as u64 * PAGE_SIZE
    }

    fn pages_read(&self) -> RwLockReadGuard<'_, BTreeMap<u64, Page>> {
        self.pages.read().unwrap_or_else(|e| e.into_inner())
    }

    fn pages_write(&self) -> RwLockWriteGuard<'_, BTreeMap<u64, Page>> {
        self.pages.write().unwrap_or_else(|e| e.into_inner())
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

    /// Calls `f(page_index, offset_in_page, byte_count)` for each page piece of a range.
    fn for_each_piece(offset: u64, end: u64, mut f: impl FnMut(u64, usize, usize)) {
        let mut pos = offset;
        while pos < end {
            let page = pos / PAGE_SIZE;
            let in_page = (pos % PAGE_SIZE) as usize;
            let n = (PAGE_SIZE - in_page as u64).min(end - pos) as usize;
            f(page, in_page, n);
            pos += n as u64;
        }
    }

    fn zero_range(&self, offset: u64, end: u64, keep_allocated: bool) {
        let mut pages = self.pages_write();
        Self::for_each_piece(offset, end, |page, at, n| {
            if n as u64 == PAGE_SIZE {
                if keep_allocated {
                    pages.insert(page, zero_page());
                } else {
                    pages.remove(&page);
                }
            } else if let Some(p) = pages.get_mut(&page) {
                p[at..at + n].fill(0);
            } else if keep_allocated {
                pages.insert(page, zero_page());
            }
        });
    }
}

fn zero_page() -> Page {
    vec![0u8; PAGE_SIZE as usize].into_boxed_slice()
}

/// Appends an extent, merging it with the previous one when the flags agree.
pub(crate) fn push_extent(out: &mut Vec<Extent>, e: Extent) {
    if e.len == 0 {
        return;
    }
    if let Some(last) = out.last_mut() {
        if last.hole == e.hole && last.zero == e.zero {
            last.len += e.len;
            return;
        }
    }
    out.push(e);
}

impl BlockTarget for MemTarget {
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
        true
    }

    fn can_fast_zero(&self) -> bool {
        true
    }

    fn description(&self) -> Option<String> {
        self.description.clone()
    }

    fn read(&self, offset: u64, len: usize) -> BoxFuture<'_, NbdResult<Bytes>> {
        let r = (|| {
            let end = self.check_range(offset, len as u64)?;
            let mut buf = BytesMut::zeroed(len);
            let pages = self.pages_read();
            let mut out = 0usize;
            Self::for_each_piece(offset, end, |page, at, n| {
                if let Some(p) = pages.get(&page) {
                    buf[out..out + n].copy_from_slice(&p[at..at + n]);
                }
                out += n;
            });
            Ok(buf.freeze())
        })();
        future::ready(r).boxed()
    }

    fn read_sparse(&self, offset: u64, len: usize) -> BoxFuture<'_, NbdResult<Vec<ReadChunk>>> {
        let r = (|| {
            let end = self.check_range(offset, len as u64)?;
            let pages = self.pages_read();
            let mut chunks = Vec::new();
            let mut data = BytesMut::new();
            let mut zeros = 0u64;
            Self::for_each_piece(offset, end, |page, at, n| match pages.get(&page) {
                Some(p) => {
                    if zeros > 0 {
                        chunks.push(ReadChunk::Zero(zeros));
                        zeros = 0;
                    }
                    if data.is_empty() {
                        data.reserve((end - offset) as usize);
                    }
                    data.extend_from_slice(&p[at..at + n]);
                }
                None => {
                    if !data.is_empty() {
                        chunks.push(ReadChunk::Data(data.split().freeze()));
                    }
                    zeros += n as u64;
                }
            });
            if !data.is_empty() {
                chunks.push(ReadChunk::Data(data.freeze()));
            }
            if zeros > 0 {
                chunks.push(ReadChunk::Zero(zeros));
            }
            Ok(chunks)
        })();
        future::ready(r).boxed()
    }

    fn write(&self, offset: u64, data: Bytes, _fua: bool) -> BoxFuture<'_, NbdResult<()>> {
        let r = (|| {
            self.check_writable()?;
            let end = self
                .check_range(offset, data.len() as u64)
                .map_err(|e| NbdError::NoSpace(e.to_string()))?;
            let mut pages = self.pages_write();
            let mut src = 0usize;
            Self::for_each_piece(offset, end, |page, at, n| {
                let piece = &data[src..src + n];
                if n as u64 == PAGE_SIZE {
                    // Whole page: copy straight in, no zero fill.
                    match pages.get_mut(&page) {
                        Some(p) => p.copy_from_slice(piece),
                        None => {
                            pages.insert(page, piece.into());
                        }
                    }
                } else {
                    let p = pages.entry(page).or_insert_with(zero_page);
                    p[at..at + n].copy_from_slice(piece);
                }
                src += n;
            });
            Ok(())
        })();
        future::ready(r).boxed()
    }

    fn flush(&self) -> BoxFuture<'_, NbdResult<()>> {
        future::ready(Ok(())).boxed()
    }

    fn trim(&self, offset: u64, len: u64, _fua: bool) -> BoxFuture<'_, NbdResult<()>> {
        let r = (|| {
            self.check_writable()?;
            let end = self.check_range(offset, len)?;
            // Only whole pages are discarded; partial pages keep their bytes.
            let first = offset.div_ceil(PAGE_SIZE);
            let last = end / PAGE_SIZE;
            if first < last {
                let mut pages = self.pages_write();
                let doomed: Vec<u64> = pages.range(first..last).map(|(k, _)| *k).collect();
                for k in doomed {
                    pages.remove(&k);
                }
            }
            Ok(())
        })();
        future::ready(r).boxed()
    }

    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        _fua: bool,
        no_hole: bool,
    ) -> BoxFuture<'_, NbdResult<()>> {
        let r = (|| {
            self.check_writable()?;
            let end = self
                .check_range(offset, len)
                .map_err(|e| NbdError::NoSpace(e.to_string()))?;
            self.zero_range(offset, end, no_hole);
            Ok(())
        })();
        future::ready(r).boxed()
    }

    fn block_status(&self, offset: u64, len: u64) -> BoxFuture<'_, NbdResult<Vec<Extent>>> {
        let r = (|| {
            let end = self.check_range(offset, len)?;
            let mut out = Vec::new();
            if len == 0 {
                return Ok(out);
            }
            let pages = self.pages_read();
            let mut cursor = offset;
            let first = offset / PAGE_SIZE;
            let last = (end - 1) / PAGE_SIZE;
            for (&page, _) in pages.range(first..=last) {
                let start = (page * PAGE_SIZE).max(offset);
                let stop = ((page + 1) * PAGE_SIZE).min(end);
                if start > cursor {
                    push_extent(&mut out, Extent::hole(start - cursor));
                }
                push_extent(&mut out, Extent::data(stop - start));
                cursor = stop;
            }
            if cursor < end {
                push_extent(&mut out, Extent::hole(end - cursor));
            }
            Ok(out)
        })();
        future::ready(r).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sparse_pages_and_extents() {
        let t = MemTarget::new(64 * 1024);
        assert_eq!(t.read(0, 100).await.unwrap(), Bytes::from(vec![0u8; 100]));
        t.write(5000, Bytes::from(vec![7u8; 5000]), false)
            .await
            .unwrap();
        // 5000..10000 touches pages 1 and 2.
        assert_eq!(t.allocated_bytes(), 2 * PAGE_SIZE);
        let got = t.read(4990, 5020).await.unwrap();
        assert!(got[..10].iter().all(|b| *b == 0));
        assert!(got[10..5010].iter().all(|b| *b == 7));
        assert!(got[5010..].iter().all(|b| *b == 0));

        let ext = t.block_status(0, 64 * 1024).await.unwrap();
        assert_eq!(
            ext,
            vec![
                Extent::hole(4096),
                Extent::data(8192),
                Extent::hole(64 * 1024 - 12288)
            ]
        );
        let ext = t.block_status(5000, 100).await.unwrap();
        assert_eq!(ext, vec![Extent::data(100)]);

        let chunks = t.read_sparse(0, 16384).await.unwrap();
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks[0], ReadChunk::Zero(4096));
        assert_eq!(chunks[1].len(), 8192);
        assert_eq!(chunks[2], ReadChunk::Zero(4096));

        // Trim only discards whole pages.
        t.trim(4096, 6000, false).await.unwrap();
        assert_eq!(t.allocated_bytes(), PAGE_SIZE);
        t.write_zeroes(0, 64 * 1024, false, false).await.unwrap();
        assert_eq!(t.allocated_bytes(), 0);
        t.write_zeroes(0, 8192, false, true).await.unwrap();
        assert_eq!(t.allocated_bytes(), 2 * PAGE_SIZE);
        assert!(t.read(0, 8192).await.unwrap().iter().all(|b| *b == 0));
    }

    #[tokio::test]
    async fn bounds_and_read_only() {
        let t = MemTarget::new(8192);
        assert_eq!(
            t.write(8000, Bytes::from(vec![1u8; 200]), false)
                .await
                .unwrap_err()
                .errno(),
            crate::proto::ENOSPC
        );
        assert_eq!(
            t.read(u64::MAX, 2).await.unwrap_err().errno(),
            crate::proto::EINVAL
        );
        let ro = MemTarget::new(8192).with_read_only(true);
        assert_eq!(
            ro.write(0, Bytes::from_static(b"x"), false)
                .await
                .unwrap_err()
                .errno(),
            crate::proto::EPERM
        );
    }
}
