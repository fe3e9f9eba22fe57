//! Heap buffers aligned to the block size, as O_DIRECT requires.

use std::alloc::{self, Layout};
use std::ptr::NonNull;
use std::sync::Mutex;

/// The unit of all data I/O: offsets, lengths and buffer addresses are multiples of it.
pub const BLOCK: usize = 4096;

/// Number of blocks needed to hold `len` bytes.
pub fn blocks_for(len: usize) -> usize {
    len.div_ceil(BLOCK)
}

/// Freed buffers kept for reads and writes to reuse: `(capacity, address)`. A fresh buffer
/// costs a zeroing pass and, for large ones, page faults on first touch; a read, or a write
/// copying its data in, overwrites all of it anyway. Every read is checked against stored checksums, so stale bytes in a reused
/// buffer could not pass for data.
static POOL: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());
/// Buffers kept, at most.
const POOL_MAX: usize = 32;
/// Largest buffer kept.
const POOL_MAX_BYTES: usize = 4 << 20;

/// A buffer of a whole number of blocks, aligned to [`BLOCK`]; its bytes are always
/// initialised (zeroed when fresh).
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    cap: usize,
}

// SAFETY: `AlignedBuf` owns its allocation exclusively (like a `Vec<u8>`); nothing else holds
// the pointer, so moving it to or sharing `&` of it with another thread is sound.
unsafe impl Send for AlignedBuf {}
// SAFETY: see above; `&AlignedBuf` only gives read access.
unsafe impl Sync for AlignedBuf {}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AlignedBuf {
    /// A zeroed buffer of `blocks` blocks. A buffer of zero blocks holds no allocation.
    pub fn zeroed(blocks: usize) -> Self {
        let cap = blocks * BLOCK;
        if cap == 0 {
            return AlignedBuf {
                ptr: NonNull::dangling(),
                cap: 0,
            };
        }
        let layout = Self::layout(cap);
        // SAFETY: `layout` has a non-zero size (checked above) and a valid power-of-two alignment.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout);
        };
        AlignedBuf { ptr, cap }
    }

    /// A buffer of `blocks` blocks whose contents the caller overwrites entirely (a read):
    /// a pooled one of that size when there is one (holding old bytes), else a zeroed one.
    pub fn for_overwrite(blocks: usize) -> Self {
        let cap = blocks * BLOCK;
        let pooled = {
            let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
            pool.iter()
                .position(|&(c, _)| c == cap)
                .map(|i| pool.swap_remove(i).1)
        };
        match pooled.and_then(|addr| NonNull::new(addr as *mut u8)) {
            Some(ptr) => AlignedBuf { ptr, cap },
            None => Self::zeroed(blocks),
        }
    }

    /// A buffer holding `data`, its tail block padded with zeroes. Every byte is written
    /// here, so a pooled buffer serves (no zeroing pass, no fresh pages to fault in).
    pub fn from_slice(data: &[u8]) -> Self {
        let mut buf = Self::for_overwrite(blocks_for(data.len()));
        let s = buf.as_mut_slice();
        s[..data.len()].copy_from_slice(data);
        s[data.len()..].fill(0);
        buf
    }

    fn layout(cap: usize) -> Layout {
        match Layout::from_size_align(cap, BLOCK) {
            Ok(layout) => layout,
            // Same behaviour as `Vec` on a size overflow; callers only ask for chunk-sized
            // buffers (a few MiB), so this cannot be reached from the engine.
            Err(_) => panic!("aligned buffer capacity overflow"),
        }
    }

    pub fn len(&self) -> usize {
        self.cap
    }

    pub fn is_empty(&self) -> bool {
        self.cap == 0
    }

    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for `cap` initialised bytes (zeroed at allocation, only
        // written since, also while pooled), or dangling with `cap == 0`, which is allowed
        // for an empty slice.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.cap) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.cap) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.cap != 0 && self.cap <= POOL_MAX_BYTES {
            let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
            if pool.len() < POOL_MAX {
                // The pool now owns the allocation; `for_overwrite` hands it out again.
                pool.push((self.cap, self.ptr.as_ptr() as usize));
                return;
            }
        }
        if self.cap != 0 {
            // SAFETY: the pointer came from `alloc_zeroed` with exactly this layout (a pooled
            // buffer keeps the capacity it was allocated with).
            unsafe { alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.cap)) };
        }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.cap)
            .finish()
    }
}

/// The first `len` bytes of an aligned buffer, handed out as `Bytes` without a copy.
pub struct BufPrefix {
    pub buf: AlignedBuf,
    pub len: usize,
}

impl AsRef<[u8]> for BufPrefix {
    fn as_ref(&self) -> &[u8] {
        &self.buf.as_slice()[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_padded() {
        let b = AlignedBuf::from_slice(&[7u8; 5000]);
        assert_eq!(b.len(), 2 * BLOCK);
        assert_eq!(b.as_ptr() as usize % BLOCK, 0);
        assert!(b.as_slice()[..5000].iter().all(|&x| x == 7));
        assert!(b.as_slice()[5000..].iter().all(|&x| x == 0));
        let e = AlignedBuf::from_slice(&[]);
        assert!(e.is_empty());
        assert_eq!(e.as_slice().len(), 0);
    }

    #[test]
    fn pooled_buffers_serve_overwrites_only() {
        for _ in 0..4 {
            let mut b = AlignedBuf::for_overwrite(3);
            assert_eq!(b.len(), 3 * BLOCK);
            assert_eq!(b.as_ptr() as usize % BLOCK, 0);
            b.as_mut_slice().fill(0xee);
        }
        // Whatever the pool holds now, a zeroed buffer is zeroed.
        assert!(AlignedBuf::zeroed(3).as_slice().iter().all(|&x| x == 0));
        // Buffers too large for the pool are freed, not kept.
        drop(AlignedBuf::for_overwrite(POOL_MAX_BYTES / BLOCK + 1));
        // A write's buffer may come from the pool, dirty: its padding is zeroed all the same.
        for _ in 0..4 {
            let mut b = AlignedBuf::for_overwrite(2);
            b.as_mut_slice().fill(0xee);
            drop(b);
            let w = AlignedBuf::from_slice(&[7u8; 5000]);
            assert!(w.as_slice()[..5000].iter().all(|&x| x == 7));
            assert!(w.as_slice()[5000..].iter().all(|&x| x == 0));
        }
    }
}
