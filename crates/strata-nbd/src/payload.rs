//! Write payloads received into block-aligned memory: a target whose disk is opened with
//! O_DIRECT writes them from where they are, without copying them into an aligned buffer.

use bytes::buf::UninitSlice;
use bytes::{BufMut, Bytes};
use std::alloc::{self, Layout};
use std::io;
use std::ptr::NonNull;
use std::sync::Mutex;

/// Alignment of payload buffers: the block size of O_DIRECT disks.
pub const PAYLOAD_ALIGN: usize = 4096;

/// Freed payload allocations kept for reuse: `(capacity, address)`. A fresh large aligned
/// allocation is mapped anew and page-faulted in on every write, which cost more than the
/// copy the alignment saves.
static POOL: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());
/// Allocations kept, at most.
const POOL_MAX: usize = 64;
/// Largest allocation kept.
const POOL_MAX_BYTES: usize = 4 << 20;

fn pool() -> std::sync::MutexGuard<'static, Vec<(usize, usize)>> {
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fixed-capacity, [`PAYLOAD_ALIGN`]-aligned buffer filled from the front.
pub(crate) struct Payload {
    ptr: NonNull<u8>,
    cap: usize,
    /// Bytes written so far (initialised); the rest is not.
    len: usize,
}

// SAFETY: `Payload` owns its allocation exclusively, like a `Vec<u8>`.
unsafe impl Send for Payload {}
// SAFETY: `&Payload` only reads the initialised bytes.
unsafe impl Sync for Payload {}

impl Payload {
    pub(crate) fn with_capacity(cap: usize) -> io::Result<Self> {
        if cap == 0 {
            return Ok(Payload {
                ptr: NonNull::dangling(),
                cap: 0,
                len: 0,
            });
        }
        let pooled = {
            let mut pool = pool();
            pool.iter()
                .position(|&(c, _)| c == cap)
                .map(|i| pool.swap_remove(i).1)
        };
        if let Some(ptr) = pooled.and_then(|addr| NonNull::new(addr as *mut u8)) {
            return Ok(Payload { ptr, cap, len: 0 });
        }
        let layout = Layout::from_size_align(cap, PAYLOAD_ALIGN)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "payload too large"))?;
        // SAFETY: `layout` has a non-zero size and a power-of-two alignment.
        let raw = unsafe { alloc::alloc(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout);
        };
        Ok(Payload { ptr, cap, len: 0 })
    }

    pub(crate) fn is_full(&self) -> bool {
        self.len == self.cap
    }

    pub(crate) fn freeze(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for Payload {
    fn as_ref(&self) -> &[u8] {
        if self.cap == 0 {
            return &[];
        }
        // SAFETY: the first `len` bytes of the allocation were written (`advance_mut`).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

// SAFETY: `chunk_mut` hands out exactly the unwritten rest of the allocation, and
// `advance_mut` only counts bytes within it.
unsafe impl BufMut for Payload {
    fn remaining_mut(&self) -> usize {
        self.cap - self.len
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        assert!(cnt <= self.cap - self.len, "advance past the payload's end");
        self.len += cnt;
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        if self.cap == 0 {
            return UninitSlice::new(&mut []);
        }
        // SAFETY: `len <= cap`, so the range lies inside the allocation, which `&mut self`
        // borrows exclusively.
        unsafe {
            UninitSlice::from_raw_parts_mut(self.ptr.as_ptr().add(self.len), self.cap - self.len)
        }
    }
}

impl Drop for Payload {
    fn drop(&mut self) {
        if self.cap == 0 {
            return;
        }
        if self.cap <= POOL_MAX_BYTES {
            let mut pool = pool();
            if pool.len() < POOL_MAX {
                // The allocation stays alive, owned by the pool (only its address is kept).
                pool.push((self.cap, self.ptr.as_ptr() as usize));
                return;
            }
        }
        // SAFETY: allocated in `with_capacity` with this very layout (it was valid then).
        unsafe {
            alloc::dealloc(
                self.ptr.as_ptr(),
                Layout::from_size_align_unchecked(self.cap, PAYLOAD_ALIGN),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_an_aligned_buffer() {
        let mut p = Payload::with_capacity(3 * PAYLOAD_ALIGN + 5).unwrap();
        p.put_slice(&[7u8; 5000]);
        assert!(!p.is_full());
        p.put_slice(&vec![9u8; 3 * PAYLOAD_ALIGN + 5 - 5000]);
        assert!(p.is_full());
        let b = p.freeze();
        assert_eq!(b.as_ptr() as usize % PAYLOAD_ALIGN, 0);
        assert_eq!(b.len(), 3 * PAYLOAD_ALIGN + 5);
        assert!(b[..5000].iter().all(|&x| x == 7) && b[5000..].iter().all(|&x| x == 9));
        let s = b.slice(PAYLOAD_ALIGN..2 * PAYLOAD_ALIGN);
        assert_eq!(s.as_ptr() as usize % PAYLOAD_ALIGN, 0);
        assert!(Payload::with_capacity(0).unwrap().freeze().is_empty());
    }
}
