//! Volume blocks: 4 KiB blocks of block-device volumes, addressed by (volume, block number).
//!
//! A write appends its blocks to a fresh extent of the data area and points the per-block
//! index entries (column family `blocks`) at them, through the same group commit as chunks; it
//! never rewrites the blocks around it. A block with no entry is a hole and reads as zeroes.
//! Blocks an overwrite or a trim released return to the allocator once that index change is
//! durable.

use crate::alloc::{Allocator, Extent};
use crate::buf::{AlignedBuf, BLOCK};
use crate::commit::CommitOp;
use crate::index::{self, BlockEntry, CF_BLOCKS};
use crate::{Disk, DiskError, Result};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use rocksdb::{Direction, IteratorMode, DB};
use std::collections::BTreeMap;

/// Size of a volume block.
pub const BLOCK_BYTES: usize = BLOCK;
/// Most blocks one write or read may carry (4 MiB).
pub const BLOCKS_PER_WRITE_MAX: u64 = (strata_types::CHUNK_SIZE_BYTES_MAX / BLOCK) as u64;
/// Reads that find a block's checksum wrong before it is declared corrupt: a mismatch can also
/// mean the block was overwritten (and its old place reused) during the read.
const READ_ATTEMPTS: usize = 3;
/// Disk reads one block read keeps in flight.
const READS_IN_FLIGHT: usize = 32;

/// The result of reading a range of volume blocks.
#[derive(Debug, Clone)]
pub struct BlockRead {
    /// `count * 4096` bytes; holes are zeroes.
    pub data: Bytes,
    /// Per block: does it hold written data (false: a hole)?
    pub present: Vec<bool>,
}

/// Marks the blocks every volume block entry occupies, at open.
pub(crate) fn mark_blocks(db: &DB, alloc: &mut Allocator) -> Result<()> {
    let cf = index::cf(db, CF_BLOCKS)?;
    for item in db.iterator_cf(cf, IteratorMode::Start) {
        let (k, v) = item.map_err(index::index_err)?;
        let Some(e) = BlockEntry::decode(&v) else {
            tracing::error!(key = ?k, "undecodable block index entry; its block stays unknown");
            continue;
        };
        if !alloc.mark(Extent {
            start: e.addr,
            len: 1,
        }) {
            tracing::error!(key = ?k, addr = e.addr, "volume block is out of range or shared");
        }
    }
    Ok(())
}

fn check_range(first: u64, count: u64, max: u64) -> Result<()> {
    if count == 0 || count > max || first.checked_add(count).is_none() {
        return Err(DiskError::BadBlockRange(format!(
            "{count} blocks from {first} (1 to {max} blocks per request)"
        )));
    }
    Ok(())
}

impl Disk {
    /// Writes whole 4 KiB blocks of a volume starting at block `first`. `Ok` means durable.
    pub async fn write_blocks(&self, volume: u64, first: u64, data: Bytes) -> Result<()> {
        let count = (data.len() / BLOCK) as u64;
        check_range(first, count.max(1), BLOCKS_PER_WRITE_MAX)?;
        let blocks: Vec<u64> = (first..first + count).collect();
        self.write_block_list(volume, &blocks, data).await
    }

    /// Writes 4 KiB blocks of a volume that need not be adjacent: block `blocks[i]` gets the
    /// `i`th 4 KiB of `data`. `blocks` is strictly ascending. The blocks land side by side in
    /// one extent of the data area, written with one I/O, so scattered small writes cost what
    /// one sequential write does. `Ok` means durable.
    pub async fn write_block_list(&self, volume: u64, blocks: &[u64], data: Bytes) -> Result<()> {
        self.write_block_parts(volume, blocks, std::slice::from_ref(&data))
            .await
    }

    /// [`Disk::write_block_list`] with the data in consecutive parts (each a whole number of
    /// blocks), copied once, straight into the aligned buffer the disk write uses.
    pub async fn write_block_parts(
        &self,
        volume: u64,
        blocks: &[u64],
        parts: &[Bytes],
    ) -> Result<()> {
        let len: usize = parts.iter().map(Bytes::len).sum();
        if len == 0 || parts.iter().any(|p| !p.len().is_multiple_of(BLOCK)) {
            return Err(DiskError::BadBlockRange(format!(
                "{len} bytes in {} parts is not a whole number of 4 KiB blocks per part",
                parts.len()
            )));
        }
        let count = (len / BLOCK) as u64;
        if blocks.len() as u64 != count {
            return Err(DiskError::BadBlockRange(format!(
                "{} block numbers for {count} blocks of data",
                blocks.len()
            )));
        }
        check_range(blocks[0], count, BLOCKS_PER_WRITE_MAX)?;
        if !blocks.windows(2).all(|w| w[0] < w[1]) || blocks[blocks.len() - 1] == u64::MAX {
            return Err(DiskError::BadBlockRange(
                "block numbers must be strictly ascending".into(),
            ));
        }
        let ext = self.lock_alloc().alloc(count).ok_or(DiskError::Full {
            needed_bytes: len as u64,
        })?;
        let crcs: Vec<u32> = parts
            .iter()
            .flat_map(|p| p.chunks(BLOCK))
            .map(crc32c::crc32c)
            .collect();
        let mut buf = AlignedBuf::for_overwrite(count as usize);
        let mut at = 0;
        for p in parts {
            buf.as_mut_slice()[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        if let Err(e) = self.io.write(ext.start * BLOCK as u64, buf).await {
            // The write finished (with an error); nothing refers to these blocks.
            self.lock_alloc().free(ext);
            return Err(self.io_err(e));
        }
        self.submit(|reply| CommitOp::WriteBlocks {
            volume,
            blocks: blocks.to_vec(),
            start: ext.start,
            crcs,
            reply,
        })
        .await
    }

    /// Makes blocks `first..first + count` of a volume holes. `Ok` means durable.
    pub async fn trim_blocks(&self, volume: u64, first: u64, count: u64) -> Result<()> {
        check_range(first, count, u64::MAX)?;
        self.submit(|reply| CommitOp::TrimBlocks {
            volume,
            first,
            count,
            reply,
        })
        .await
    }

    /// The index entries of blocks `first..first + count` that hold data.
    fn block_entries(
        &self,
        volume: u64,
        first: u64,
        count: u64,
    ) -> Result<BTreeMap<u64, BlockEntry>> {
        let cf = index::cf(&self.db, CF_BLOCKS)?;
        let from = index::block_key(volume, first);
        let to = index::block_key(volume, first + count);
        let mut out = BTreeMap::new();
        for item in self
            .db
            .iterator_cf(cf, IteratorMode::From(&from, Direction::Forward))
        {
            let (k, v) = item.map_err(index::index_err)?;
            if *k >= to[..] {
                break;
            }
            let Some((_, block)) = index::decode_block_key(&k) else {
                continue;
            };
            let entry = BlockEntry::decode(&v).ok_or(DiskError::CorruptBlock {
                volume,
                block,
                what: "undecodable index entry",
            })?;
            out.insert(block, entry);
        }
        Ok(out)
    }

    /// Byte offset in the data file of a volume block (`None`: a hole). For repair tools and
    /// fault-injection tests.
    pub fn block_location(&self, volume: u64, block: u64) -> Result<Option<u64>> {
        let entries = self.block_entries(volume, block, 1)?;
        Ok(entries.get(&block).map(|e| e.addr * BLOCK as u64))
    }

    /// Which of blocks `first..first + count` hold data (false: a hole).
    pub fn block_map(&self, volume: u64, first: u64, count: u64) -> Result<Vec<bool>> {
        check_range(first, count, u64::from(u32::MAX))?;
        let entries = self.block_entries(volume, first, count)?;
        Ok((first..first + count)
            .map(|b| entries.contains_key(&b))
            .collect())
    }

    /// Reads and verifies blocks `first..first + count` of a volume; holes read as zeroes.
    pub async fn read_blocks(&self, volume: u64, first: u64, count: u64) -> Result<BlockRead> {
        check_range(first, count, BLOCKS_PER_WRITE_MAX)?;
        let mut bad = (first, "crc32c mismatch");
        for _ in 0..READ_ATTEMPTS {
            let entries = self.block_entries(volume, first, count)?;
            match self.read_entries(first, count, &entries).await? {
                Ok(read) => return Ok(read),
                Err(block) => bad = (block, "crc32c mismatch"),
            }
        }
        Err(DiskError::CorruptBlock {
            volume,
            block: bad.0,
            what: bad.1,
        })
    }

    /// Reads the blocks of `entries`, merging runs that are contiguous both in the volume and
    /// on disk into one I/O. The inner `Err` names a block whose checksum did not match.
    async fn read_entries(
        &self,
        first: u64,
        count: u64,
        entries: &BTreeMap<u64, BlockEntry>,
    ) -> Result<std::result::Result<BlockRead, u64>> {
        let mut runs: Vec<(u64, u64, u64)> = Vec::new(); // (first block, first addr, len)
        for (&block, e) in entries {
            match runs.last_mut() {
                Some((b, a, len)) if *b + *len == block && *a + *len == e.addr => *len += 1,
                _ => runs.push((block, e.addr, 1)),
            }
        }
        // The whole range is one run on disk (a sequentially written range): its read buffer
        // becomes the answer as it is, with no copy.
        if let [(block, addr, len)] = runs[..] {
            if block == first && len == count {
                let buf = self
                    .io
                    .read(addr * BLOCK as u64, len as usize)
                    .await
                    .map_err(|e| self.io_err(e))?;
                for (i, piece) in buf.as_slice().chunks(BLOCK).enumerate() {
                    let b = first + i as u64;
                    if crc32c::crc32c(piece) != entries[&b].crc {
                        return Ok(Err(b));
                    }
                }
                return Ok(Ok(BlockRead {
                    data: Bytes::from_owner(buf),
                    present: vec![true; count as usize],
                }));
            }
        }
        // A range written piecemeal (random writes land wherever the log was) is many short
        // runs: read them all at once, not one after the other.
        let reads: Vec<_> = runs
            .into_iter()
            .map(|(block, addr, len)| {
                async move {
                    let buf = self.io.read(addr * BLOCK as u64, len as usize).await;
                    (block, len, buf)
                }
                .boxed()
            })
            .collect();
        let reads = futures::stream::iter(reads)
            .buffer_unordered(READS_IN_FLIGHT)
            .collect::<Vec<_>>()
            .await;
        let mut data = vec![0u8; count as usize * BLOCK];
        let mut present = vec![false; count as usize];
        for (block, len, buf) in reads {
            let buf = buf.map_err(|e| self.io_err(e))?;
            for i in 0..len {
                let b = block + i;
                let piece = &buf.as_slice()[i as usize * BLOCK..(i as usize + 1) * BLOCK];
                if crc32c::crc32c(piece) != entries[&b].crc {
                    return Ok(Err(b));
                }
                let at = (b - first) as usize;
                data[at * BLOCK..(at + 1) * BLOCK].copy_from_slice(piece);
                present[at] = true;
            }
        }
        Ok(Ok(BlockRead {
            data: Bytes::from(data),
            present,
        }))
    }
}
