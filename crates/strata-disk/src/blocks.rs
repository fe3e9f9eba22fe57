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
use rocksdb::{Direction, IteratorMode, ReadOptions, DB};
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

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

/// Marks the blocks every volume block entry occupies, at open. Entries of unsynced rounds
/// newer than the synced generation (the machine or process stopped before a sync) are checked
/// against their blocks' checksums: one whose data never reached the disk falls back to the
/// durable entry it replaced (or becomes a hole again). The outcome is then recorded durably.
pub(crate) fn mark_blocks(db: &DB, file: &File, alloc: &mut Allocator) -> Result<()> {
    let cf = index::cf(db, CF_BLOCKS)?;
    let synced = index::synced_gen(db)?;
    let mut unsynced: Vec<(Box<[u8]>, BlockEntry)> = Vec::new();
    for item in db.iterator_cf(cf, IteratorMode::Start) {
        let (k, v) = item.map_err(index::index_err)?;
        let Some(e) = BlockEntry::decode(&v) else {
            tracing::error!(key = ?k, "undecodable block index entry; its block stays unknown");
            continue;
        };
        if e.gen > synced {
            unsynced.push((k, e));
            continue;
        }
        mark_one(alloc, &k, e.addr);
    }
    if unsynced.is_empty() {
        return Ok(());
    }
    unsynced.sort_by_key(|(_, e)| e.addr);
    let newest = unsynced.iter().map(|(_, e)| e.gen).max().unwrap_or(synced);
    let mut wb = rocksdb::WriteBatch::default();
    let mut reverted = 0usize;
    let mut i = 0;
    while i < unsynced.len() {
        // A run of adjacent blocks, read with one I/O.
        let mut j = i + 1;
        while j < unsynced.len()
            && j - i < RECOVERY_READ_BLOCKS
            && unsynced[j].1.addr == unsynced[j - 1].1.addr + 1
        {
            j += 1;
        }
        let mut buf = AlignedBuf::zeroed(j - i);
        let read = file.read_exact_at(buf.as_mut_slice(), unsynced[i].1.addr * BLOCK as u64);
        for (n, (k, e)) in unsynced[i..j].iter().enumerate() {
            let intact = read.is_ok()
                && crc32c::crc32c(&buf.as_slice()[n * BLOCK..(n + 1) * BLOCK]) == e.crc;
            if intact {
                mark_one(alloc, k, e.addr);
                continue;
            }
            reverted += 1;
            match e.prev {
                Some((addr, crc)) => {
                    mark_one(alloc, k, addr);
                    wb.put_cf(cf, k, BlockEntry::synced(addr, crc).encode());
                }
                None => wb.delete_cf(cf, k),
            }
        }
        i = j;
    }
    let meta = index::cf(db, index::CF_META)?;
    wb.put_cf(meta, index::META_SYNCED_GEN, newest.to_be_bytes());
    let mut wo = rocksdb::WriteOptions::default();
    wo.set_sync(true);
    db.write_opt(wb, &wo).map_err(index::index_err)?;
    tracing::warn!(
        checked = unsynced.len(),
        reverted,
        "volume blocks written unsynced before an unclean stop were checked; those whose data \
         never reached the disk read as before"
    );
    Ok(())
}

/// Blocks read at once when checking unsynced entries at open (1 MiB).
const RECOVERY_READ_BLOCKS: usize = 256;

fn mark_one(alloc: &mut Allocator, key: &[u8], addr: u64) {
    if !alloc.mark(Extent {
        start: addr,
        len: 1,
    }) {
        tracing::error!(key = ?key, addr, "volume block is out of range or shared");
    }
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
    /// blocks). Parts that all start on a 4 KiB boundary are written from where they are
    /// (io_uring); others are copied once into the aligned buffer the disk write uses.
    pub async fn write_block_parts(
        &self,
        volume: u64,
        blocks: &[u64],
        parts: &[Bytes],
    ) -> Result<()> {
        self.write_parts(volume, blocks, parts, true).await
    }

    /// [`Disk::write_block_parts`] answered before the write is durable: it survives a crash
    /// of the process but not of the machine until [`Disk::sync`] (or any synced write) has
    /// run. After an unclean stop each such block reads either as written or as it was before.
    pub async fn write_block_parts_unsynced(
        &self,
        volume: u64,
        blocks: &[u64],
        parts: &[Bytes],
    ) -> Result<()> {
        self.write_parts(volume, blocks, parts, false).await
    }

    /// Makes every write answered so far durable.
    pub async fn sync(&self) -> Result<()> {
        self.submit(|reply| CommitOp::Sync { reply }).await
    }

    async fn write_parts(
        &self,
        volume: u64,
        blocks: &[u64],
        parts: &[Bytes],
        synced: bool,
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
        self.straighten.busy();
        self.straighten.wrote(volume, blocks);
        let ext = self.alloc_extent(count).await?;
        let crcs: Vec<u32> = parts
            .iter()
            .flat_map(|p| p.chunks(BLOCK))
            .map(crc32c::crc32c)
            .collect();
        let offset = ext.start * BLOCK as u64;
        let written = if self.io.writes_in_place()
            && parts
                .iter()
                .all(|p| (p.as_ptr() as usize).is_multiple_of(BLOCK))
        {
            // Block-aligned parts (an NBD payload is received into such a buffer) go to
            // the disk from where they are, without a copy.
            self.io.write_parts(offset, parts.to_vec()).await
        } else {
            let mut buf = AlignedBuf::for_overwrite(count as usize);
            let mut at = 0;
            for p in parts {
                buf.as_mut_slice()[at..at + p.len()].copy_from_slice(p);
                at += p.len();
            }
            self.io.write(offset, buf).await
        };
        if let Err(e) = written {
            // The write finished (with an error); nothing refers to these blocks.
            self.lock_alloc().free(ext);
            return Err(self.io_err(e));
        }
        self.submit(|reply| CommitOp::WriteBlocks {
            volume,
            blocks: blocks.to_vec(),
            start: ext.start,
            crcs,
            synced,
            expect: None,
            reply,
        })
        .await
    }

    /// Makes blocks `first..first + count` of a volume holes. `Ok` means durable.
    pub async fn trim_blocks(&self, volume: u64, first: u64, count: u64) -> Result<()> {
        check_range(first, count, u64::MAX)?;
        self.straighten.busy();
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
        let decode = |block: u64, v: &[u8]| {
            BlockEntry::decode(v).ok_or(DiskError::CorruptBlock {
                volume,
                block,
                what: "undecodable index entry",
            })
        };
        let mut out = BTreeMap::new();
        if count == 1 {
            // A point lookup costs less than setting up an iterator (random 4 KiB reads).
            if let Some(v) = self.db.get_pinned_cf(cf, from).map_err(index::index_err)? {
                out.insert(first, decode(first, &v)?);
            }
            return Ok(out);
        }
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(index::block_key(volume, first + count));
        for item in self
            .db
            .iterator_cf_opt(cf, opts, IteratorMode::From(&from, Direction::Forward))
        {
            let (k, v) = item.map_err(index::index_err)?;
            let Some((_, block)) = index::decode_block_key(&k) else {
                continue;
            };
            out.insert(block, decode(block, &v)?);
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
        self.straighten.busy();
        self.read_checked(volume, first, count).await
    }

    /// Looks a span of a volume up in the index and, if its blocks are scattered, reads it
    /// (which relocates it). Idle-time work: it does not count as the disk being busy.
    pub(crate) async fn straighten_span(&self, volume: u64, span: u64) -> Result<()> {
        let first = span * crate::straighten::SPAN_BLOCKS;
        let count = crate::straighten::SPAN_BLOCKS;
        if !crate::relocate::scattered(&self.block_entries(volume, first, count)?) {
            return Ok(());
        }
        match self.read_checked(volume, first, count).await {
            Err(e @ DiskError::CorruptBlock { .. }) => {
                tracing::warn!(volume, first, count, error = %e, "straightening found a corrupt block");
                Err(e)
            }
            r => r.map(drop),
        }
    }

    /// [`Disk::read_blocks`] past the argument check.
    async fn read_checked(&self, volume: u64, first: u64, count: u64) -> Result<BlockRead> {
        let mut bad = (first, "crc32c mismatch");
        for _ in 0..READ_ATTEMPTS {
            // Taken before the index is read: a relocation of what this read finds applies
            // only if no write or trim of the range is planned after this point.
            let stamps = self.stamps.take(volume, first, count);
            let entries = self.block_entries(volume, first, count)?;
            match self.read_entries(first, count, &entries).await? {
                Ok(read) => {
                    self.offer_relocation(volume, first, &entries, &read, stamps);
                    return Ok(read);
                }
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

#[cfg(test)]
mod unsynced_tests {
    use super::*;
    use crate::DiskConfig;
    use std::path::Path;
    use std::sync::Arc;

    fn open(dir: &Path) -> Arc<Disk> {
        Disk::open(DiskConfig {
            dir: dir.to_path_buf(),
            device: None,
            capacity_bytes: 16 << 20,
            force_syscall_io: false,
            read_cache_bytes: crate::READ_CACHE_BYTES_DEFAULT,
            straighten_idle_ms: 0,
        })
        .expect("open")
    }

    fn block(fill: u8) -> Bytes {
        Bytes::from(vec![fill; BLOCK])
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// The index entry of block `b` of volume 7, read with the disk closed.
    fn entry(dir: &Path, b: u64) -> BlockEntry {
        let db = index::open_db(&dir.join("index")).expect("index");
        let cf = index::cf(&db, CF_BLOCKS).expect("cf");
        let v = db
            .get_cf(cf, index::block_key(7, b))
            .expect("get")
            .expect("entry");
        BlockEntry::decode(&v).expect("decodes")
    }

    /// Overwrite a data-area block, as if its write had never reached the disk.
    fn lose(dir: &Path, addr: u64) {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("chunks.dat"))
            .expect("data file");
        f.write_all_at(&[0xEE; BLOCK], addr * BLOCK as u64)
            .expect("overwrite");
    }

    /// Block `b` of volume 7 as (its first byte if every byte is the same, present).
    async fn read(d: &Disk, b: u64) -> (Option<u8>, bool) {
        let r = d.read_blocks(7, b, 1).await.expect("read");
        let same = r.data.iter().all(|x| *x == r.data[0]);
        (same.then_some(r.data[0]), r.present[0])
    }

    #[test]
    fn unsynced_blocks_whose_data_was_lost_read_as_before_after_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut used_before = 0;
        {
            let d = open(dir.path());
            rt().block_on(async {
                d.write_block_parts(7, &[0, 1], &[block(0xA0), block(0xA1)])
                    .await
                    .expect("durable write");
                used_before = d.usage().used_bytes;
                // Over a durable entry, then over the unsynced one; over a durable entry; over
                // a hole.
                d.write_block_parts_unsynced(7, &[0], &[block(0xB0)])
                    .await
                    .expect("unsynced");
                d.write_block_parts_unsynced(7, &[0], &[block(0xC0)])
                    .await
                    .expect("unsynced again");
                d.write_block_parts_unsynced(7, &[1, 5], &[block(0xB1), block(0xB5)])
                    .await
                    .expect("unsynced pair");
                assert_eq!(read(&d, 0).await, (Some(0xC0), true));
                assert_eq!(read(&d, 1).await, (Some(0xB1), true));
                assert_eq!(read(&d, 5).await, (Some(0xB5), true));
                // The replaced durable blocks stay allocated until a sync; the block of the
                // replaced unsynced write does not: 0xC0, 0xB1 and 0xB5 are new.
                assert_eq!(d.usage().used_bytes, used_before + 3 * BLOCK as u64);
            });
        }
        let e0 = entry(dir.path(), 0);
        let e5 = entry(dir.path(), 5);
        assert!(e0.gen > 0 && e0.prev.is_some());
        assert!(e5.gen > 0 && e5.prev.is_none());
        lose(dir.path(), e0.addr);
        lose(dir.path(), e5.addr);
        for _ in 0..2 {
            let d = open(dir.path());
            rt().block_on(async {
                assert_eq!(read(&d, 0).await, (Some(0xA0), true), "falls back");
                assert_eq!(read(&d, 1).await, (Some(0xB1), true), "intact");
                assert_eq!(read(&d, 5).await, (Some(0), false), "a hole again");
            });
            // Blocks 0 (old place) and 1 (new place): the rest is free again.
            assert_eq!(d.usage().used_bytes, used_before);
        }
    }

    /// Blocks 0 and 1 of volume 7 written durably (1, 2), then rewritten unsynced (3, 4);
    /// returns the space used after the durable write.
    async fn durable_then_unsynced(d: &Disk) -> u64 {
        d.write_block_parts(7, &[0, 1], &[block(1), block(2)])
            .await
            .expect("durable write");
        let used = d.usage().used_bytes;
        d.write_block_parts_unsynced(7, &[0, 1], &[block(3), block(4)])
            .await
            .expect("unsynced");
        used
    }

    #[test]
    fn a_flushed_generation_whose_record_was_lost_is_checked_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let used = {
            let d = open(dir.path());
            rt().block_on(async {
                let used = durable_then_unsynced(&d).await;
                d.sync().await.expect("sync");
                used
            })
        };
        let gen = entry(dir.path(), 0).gen;
        {
            // The machine stopped before the record of the generation reached the disk.
            let db = index::open_db(&dir.path().join("index")).expect("index");
            let meta = index::cf(&db, index::CF_META).expect("meta");
            db.put_cf(meta, index::META_SYNCED_GEN, (gen - 1).to_be_bytes())
                .expect("put");
        }
        for _ in 0..2 {
            let d = open(dir.path());
            rt().block_on(async {
                assert_eq!(read(&d, 0).await, (Some(3), true));
                assert_eq!(read(&d, 1).await, (Some(4), true));
            });
            // The blocks they replaced are free again.
            assert_eq!(d.usage().used_bytes, used);
        }
    }

    #[test]
    fn a_sync_makes_unsynced_blocks_durable_and_frees_what_they_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = open(dir.path());
        let used = rt().block_on(async {
            let used = durable_then_unsynced(&d).await;
            assert_eq!(d.usage().used_bytes, used + 2 * BLOCK as u64);
            d.sync().await.expect("sync");
            // The sync recorded their generation without a sync of its own: what they
            // replaced stays allocated until the index is synced again.
            assert_eq!(d.usage().used_bytes, used + 2 * BLOCK as u64);
            // A synced write after unsynced ones also records them durable.
            d.write_block_parts_unsynced(7, &[0], &[block(5)])
                .await
                .expect("unsynced");
            d.write_block_parts(7, &[2], &[block(6)])
                .await
                .expect("durable write");
            // Released now: the places of 1 and 2, and of 3 (replaced by 5).
            assert_eq!(d.usage().used_bytes, used + BLOCK as u64);
            used
        });
        drop(d);
        // Durable now: a lost block is corruption, not a fallback.
        let e0 = entry(dir.path(), 0);
        lose(dir.path(), e0.addr);
        let d = open(dir.path());
        assert_eq!(d.usage().used_bytes, used + BLOCK as u64);
        rt().block_on(async {
            assert!(matches!(
                d.read_blocks(7, 0, 1).await,
                Err(DiskError::CorruptBlock { .. })
            ));
            assert_eq!(read(&d, 1).await, (Some(4), true));
        });
    }
}
