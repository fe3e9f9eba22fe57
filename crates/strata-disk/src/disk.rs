//! The disk engine: opening and recovery, and the chunk and record operations.

use crate::alloc::{Allocator, Extent};
use crate::buf::{blocks_for, AlignedBuf, BufPrefix, BLOCK};
use crate::cache::ReadCache;
use crate::commit::{self, CommitOp, Committer, Counters};
use crate::index::{self, ChunkEntry, Format, CF_CHUNKS, CF_META, CF_RECORDS, META_FORMAT};
use crate::io::{read_full_at, write_full_at, IoEngine};
use crate::relocate::WriteStamps;
use crate::straighten::Straighten;
use crate::{DiskConfig, DiskError, DiskUsage, Record, Result, TallyTotals};
use bytes::Bytes;
use rocksdb::{Direction, IteratorMode, WriteOptions, DB};
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;
use strata_types::{ChunkId, CHUNK_SIZE_BYTES_MAX};
use tokio::sync::{mpsc, oneshot};

/// Blocks at the start of the data area that hold the superblock, never chunk data.
const RESERVED_BLOCKS: u64 = 1;
/// Reads of a chunk whose checksums do not match, before it is declared corrupt. A mismatch can
/// also mean the chunk was deleted or overwritten (and its blocks reused) during the read; the
/// index is consulted again between attempts to tell the two apart.
const READ_ATTEMPTS: usize = 3;

/// Group-commit counters since the disk was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Committer rounds that made at least one write durable.
    pub rounds: u64,
    /// fdatasyncs of the data file.
    pub data_syncs: u64,
    /// Synced rocksdb `WriteBatch`es.
    pub index_syncs: u64,
    /// Chunk puts made durable.
    pub chunk_puts: u64,
    /// All writes (chunk puts and deletes, record puts and removals) made durable.
    pub ops: u64,
    /// Volume blocks moved side by side after a read found them scattered.
    pub relocated_blocks: u64,
    /// Relocations dropped because a write or trim changed their range first.
    pub relocations_lost: u64,
}

/// One disk: a data file (or block device) plus its rocksdb index. See the crate docs.
pub struct Disk {
    pub(crate) db: Arc<DB>,
    pub(crate) io: Arc<IoEngine>,
    pub(crate) alloc: Arc<Mutex<Allocator>>,
    counters: Arc<Counters>,
    data_path: PathBuf,
    commit_tx: Option<mpsc::Sender<CommitOp>>,
    committer: Option<JoinHandle<()>>,
    cache: ReadCache,
    pub(crate) stamps: Arc<WriteStamps>,
    /// The runtime the disk was opened on, if any: background work a caller's request starts
    /// (a relocation) runs there, not on the caller's runtime, which may be a connection's
    /// own and end with it.
    pub(crate) home: Option<tokio::runtime::Handle>,
    pub(crate) straighten: Straighten,
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk")
            .field("data_path", &self.data_path)
            .field("io_backend", &self.io.name())
            .finish_non_exhaustive()
    }
}

fn io_error(path: &Path) -> impl Fn(io::Error) -> DiskError + '_ {
    move |source| DiskError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn invalid(path: &Path, msg: String) -> DiskError {
    DiskError::Io {
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidData, msg),
    }
}

impl Disk {
    /// Opens (creating and preallocating if needed) the disk described by `cfg`, and rebuilds
    /// the allocator from the index.
    pub fn open(cfg: DiskConfig) -> Result<Arc<Disk>> {
        std::fs::create_dir_all(&cfg.dir).map_err(io_error(&cfg.dir))?;
        let (data_path, is_device) = match &cfg.device {
            Some(dev) => (dev.clone(), true),
            None => (cfg.dir.join("chunks.dat"), false),
        };
        let err = io_error(&data_path);
        let mut oo = OpenOptions::new();
        oo.read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC);
        if !is_device {
            oo.create(true);
        }
        let mut file = oo.open(&data_path).map_err(&err)?;
        let size = if is_device {
            file.seek(SeekFrom::End(0)).map_err(&err)?
        } else {
            let current = file.metadata().map_err(&err)?.len();
            let wanted = cfg.capacity_bytes / BLOCK as u64 * BLOCK as u64;
            if wanted > current {
                preallocate(&file, wanted).map_err(&err)?;
                wanted
            } else {
                if wanted < current {
                    tracing::info!(
                        path = %data_path.display(),
                        current,
                        wanted,
                        "data file is larger than the configured capacity; keeping its size"
                    );
                }
                current
            }
        };
        let blocks = size / BLOCK as u64;
        if blocks <= RESERVED_BLOCKS {
            return Err(invalid(
                &data_path,
                format!("data area of {size} bytes is too small"),
            ));
        }

        let db = index::open_db(&cfg.dir.join("index"))?;
        Self::check_format(&db, &file, &data_path, &cfg.dir, blocks, is_device)?;

        let mut alloc = Allocator::new(blocks, RESERVED_BLOCKS);
        let mut chunks = 0u64;
        {
            let cf = index::cf(&db, CF_CHUNKS)?;
            for item in db.iterator_cf(cf, IteratorMode::Start) {
                let (k, v) = item.map_err(index::index_err)?;
                chunks += 1;
                let Some(entry) = ChunkEntry::decode(&v) else {
                    tracing::error!(key = ?k, "undecodable chunk index entry; its blocks stay unknown");
                    continue;
                };
                let ext = commit::extent_of(&entry);
                if ext.len > 0 && !alloc.mark(ext) {
                    tracing::error!(
                        key = ?k,
                        start = ext.start,
                        len = ext.len,
                        "chunk extent is out of range or overlaps another chunk"
                    );
                }
            }
        }

        crate::blocks::mark_blocks(&db, &file, &mut alloc)?;
        let gen = index::synced_gen(&db)? + 1;

        let file = Arc::new(file);
        let io = Arc::new(IoEngine::new(file, cfg.force_syscall_io));
        let db = Arc::new(db);
        let alloc = Arc::new(Mutex::new(alloc));
        let counters = Arc::new(Counters::default());
        counters.chunks.store(chunks, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(commit::QUEUE_DEPTH);
        let stamps = Arc::new(WriteStamps::new());
        let committer = Committer {
            db: db.clone(),
            io: io.clone(),
            alloc: alloc.clone(),
            counters: counters.clone(),
            data_path: data_path.clone(),
            failed: Mutex::new(None),
            gen: AtomicU64::new(gen),
            gen_used: Default::default(),
            deferred: Mutex::new(Vec::new()),
            deferred_pending: Mutex::new(Vec::new()),
            stamps: stamps.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("strata-disk-commit".into())
            .spawn(move || committer.run(rx))
            .map_err(&err)?;
        tracing::info!(
            path = %data_path.display(),
            blocks,
            chunks,
            io_backend = io.name(),
            "disk opened"
        );
        let disk = Arc::new(Disk {
            db,
            io,
            alloc,
            counters,
            data_path: data_path.clone(),
            commit_tx: Some(tx),
            committer: Some(handle),
            cache: ReadCache::new(cfg.read_cache_bytes),
            stamps,
            home: tokio::runtime::Handle::try_current().ok(),
            straighten: Straighten::new(Duration::from_millis(cfg.straighten_idle_ms)),
        });
        if let (true, Some(home)) = (disk.straighten.enabled(), &disk.home) {
            home.spawn(crate::straighten::run(
                Arc::downgrade(&disk),
                Duration::from_millis(cfg.straighten_idle_ms),
            ));
        }
        Ok(disk)
    }

    /// Initialises a fresh disk (superblock, then format entry), or checks that the data file
    /// is the one this index describes.
    fn check_format(
        db: &DB,
        file: &File,
        data_path: &Path,
        dir: &Path,
        blocks: u64,
        is_device: bool,
    ) -> Result<()> {
        let err = io_error(data_path);
        let meta = index::cf(db, CF_META)?;
        match db.get_cf(meta, META_FORMAT).map_err(index::index_err)? {
            None => {
                let format = Format {
                    instance: new_instance_id(data_path),
                    blocks,
                };
                let sb = AlignedBuf::from_slice(&index::encode_superblock(&format));
                write_full_at(file, sb.as_slice(), 0).map_err(&err)?;
                file.sync_all().map_err(&err)?;
                if !is_device {
                    File::open(dir)
                        .and_then(|d| d.sync_all())
                        .map_err(io_error(dir))?;
                }
                let mut wo = WriteOptions::default();
                wo.set_sync(true);
                db.put_cf_opt(meta, META_FORMAT, format.encode(), &wo)
                    .map_err(index::index_err)?;
            }
            Some(v) => {
                let format = Format::decode(&v)
                    .ok_or_else(|| DiskError::Index("undecodable format entry".into()))?;
                let mut sb = AlignedBuf::zeroed(1);
                read_full_at(file, sb.as_mut_slice(), 0).map_err(&err)?;
                let on_disk = index::decode_superblock(sb.as_slice())
                    .ok_or_else(|| invalid(data_path, "no valid superblock".into()))?;
                if on_disk.instance != format.instance {
                    return Err(invalid(
                        data_path,
                        "data file belongs to a different index (superblock id mismatch)".into(),
                    ));
                }
                if blocks < format.blocks {
                    return Err(invalid(
                        data_path,
                        format!("data area shrank from {} to {blocks} blocks", format.blocks),
                    ));
                }
            }
        }
        Ok(())
    }

    /// A handle on the committer's queue that does not keep the committer running.
    pub(crate) fn commit_sender(&self) -> Option<mpsc::WeakSender<CommitOp>> {
        self.commit_tx.as_ref().map(mpsc::Sender::downgrade)
    }

    pub(crate) fn lock_alloc(&self) -> MutexGuard<'_, Allocator> {
        crate::alloc::lock(&self.alloc)
    }

    /// A free extent of `blocks` blocks. When there is none, blocks that unsynced writes
    /// replaced may still be held for crash safety: one synced round releases them, and the
    /// allocation is tried once more.
    pub(crate) async fn alloc_extent(&self, blocks: u64) -> Result<Extent> {
        if let Some(ext) = self.lock_alloc().alloc(blocks) {
            return Ok(ext);
        }
        self.submit(|reply| CommitOp::Reclaim { reply }).await?;
        self.lock_alloc().alloc(blocks).ok_or(DiskError::Full {
            needed_bytes: blocks * BLOCK as u64,
        })
    }

    pub(crate) fn io_err(&self, source: io::Error) -> DiskError {
        DiskError::Io {
            path: self.data_path.clone(),
            source,
        }
    }

    pub(crate) async fn submit<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T>>) -> CommitOp,
    ) -> Result<T> {
        let tx = self.commit_tx.as_ref().ok_or(DiskError::Closed)?;
        let (reply, rx) = oneshot::channel();
        tx.send(make(reply)).await.map_err(|_| DiskError::Closed)?;
        rx.await.map_err(|_| DiskError::Closed)?
    }

    /// Stores a chunk, replacing any chunk with the same id. `Ok` means durable.
    ///
    /// If the returned future is dropped before it completes, the chunk may or may not be
    /// stored, and its blocks may stay reserved until the disk is reopened.
    pub async fn put_chunk(&self, id: ChunkId, data: Bytes) -> Result<()> {
        let blake3 = *blake3::hash(&data).as_bytes();
        self.put_chunk_hashed(id, data, blake3).await
    }

    /// [`Disk::put_chunk`] with the chunk's blake3 already computed (and checked) by the caller,
    /// as a chunk that arrives from another node comes with it.
    pub async fn put_chunk_hashed(&self, id: ChunkId, data: Bytes, blake3: [u8; 32]) -> Result<()> {
        if data.len() > CHUNK_SIZE_BYTES_MAX {
            return Err(DiskError::TooLarge {
                len: data.len(),
                max: CHUNK_SIZE_BYTES_MAX,
            });
        }
        let blocks = blocks_for(data.len()) as u64;
        let ext = self.alloc_extent(blocks).await?;
        let offset = ext.start * BLOCK as u64;
        let entry = ChunkEntry::for_data(offset, &data, blake3);
        if blocks > 0 {
            let buf = AlignedBuf::from_slice(&data);
            drop(data);
            if let Err(e) = self.io.write(offset, buf).await {
                // The write finished (with an error); nothing refers to these blocks.
                self.lock_alloc().free(ext);
                return Err(self.io_err(e));
            }
        }
        let done = self
            .submit(|reply| CommitOp::PutChunk { id, entry, reply })
            .await;
        self.cache.remove(&id);
        done
    }

    /// Looks a chunk up in the index and checks the entry describes a place in the data area.
    fn lookup(&self, id: ChunkId) -> Result<Option<ChunkEntry>> {
        let cf = index::cf(&self.db, CF_CHUNKS)?;
        let Some(v) = self.db.get_pinned_cf(cf, id.0).map_err(index::index_err)? else {
            return Ok(None);
        };
        let entry = ChunkEntry::decode(&v).ok_or(DiskError::Corrupt {
            chunk: id,
            what: "undecodable index entry",
        })?;
        let Extent { start, len } = commit::extent_of(&entry);
        let total = self.lock_alloc().total_blocks();
        if len > 0 && (start < RESERVED_BLOCKS || start.saturating_add(len) > total) {
            return Err(DiskError::Corrupt {
                chunk: id,
                what: "index entry outside the data area",
            });
        }
        Ok(Some(entry))
    }

    /// Reads and verifies a chunk. `Ok(None)` if there is no such chunk.
    pub async fn get_chunk(&self, id: ChunkId) -> Result<Option<Bytes>> {
        Ok(self.get_chunk_with_hash(id).await?.map(|(data, _)| data))
    }

    /// Reads a chunk, verified against the crc32c of each block, with the blake3 recorded when
    /// it was written: a reader on another node checks the bytes it receives against that hash,
    /// so the check spans the write, the disk and the transfer.
    pub async fn get_chunk_with_hash(&self, id: ChunkId) -> Result<Option<(Bytes, [u8; 32])>> {
        if let Some(hit) = self.cache.get(&id) {
            return Ok(Some(hit));
        }
        let mut what = "checksum mismatch";
        for _ in 0..READ_ATTEMPTS {
            let Some(entry) = self.lookup(id)? else {
                return Ok(None);
            };
            let buf = self
                .io
                .read(entry.offset, entry.blocks() as usize)
                .await
                .map_err(|e| self.io_err(e))?;
            let len = entry.len as usize;
            match verify(&entry, &buf.as_slice()[..len]) {
                Ok(()) => {
                    let data = Bytes::from_owner(BufPrefix { buf, len });
                    // Cached only if no put or delete changed the entry since it was looked up.
                    self.cache.insert_if(
                        id,
                        &data,
                        entry.blake3,
                        || matches!(self.lookup(id), Ok(Some(now)) if now == entry),
                    );
                    return Ok(Some((data, entry.blake3)));
                }
                Err(w) => what = w,
            }
        }
        Err(DiskError::Corrupt { chunk: id, what })
    }

    /// Deletes a chunk (absent is fine). `Ok` means the delete is durable.
    pub async fn delete_chunk(&self, id: ChunkId) -> Result<()> {
        let done = self
            .submit(|reply| CommitOp::DeleteChunk { id, reply })
            .await;
        self.cache.remove(&id);
        done
    }

    pub fn has_chunk(&self, id: ChunkId) -> Result<bool> {
        let cf = index::cf(&self.db, CF_CHUNKS)?;
        Ok(self
            .db
            .get_pinned_cf(cf, id.0)
            .map_err(index::index_err)?
            .is_some())
    }

    /// Stores `rec` under `key` if it is strictly newer than what is stored (last writer wins).
    /// Returns whether it was stored; `Ok(true)` means durable.
    /// A live record may count in a tally group: a prefix of its key (see [`Disk::tally`]).
    pub async fn put_record(&self, key: &[u8], rec: Record) -> Result<bool> {
        if let Some(t) = rec.tally.filter(|_| rec.value.is_some()) {
            if t.group_len as usize > key.len() {
                return Err(DiskError::BadRecord(format!(
                    "tally group of {} bytes is longer than the {}-byte key",
                    t.group_len,
                    key.len()
                )));
            }
        }
        let key = key.to_vec();
        self.submit(|reply| CommitOp::PutRecord { key, rec, reply })
            .await
    }

    /// The record stored under `key`, tombstones included.
    pub fn get_record(&self, key: &[u8]) -> Result<Option<Record>> {
        let cf = index::cf(&self.db, CF_RECORDS)?;
        match self.db.get_pinned_cf(cf, key).map_err(index::index_err)? {
            None => Ok(None),
            Some(v) => index::decode_record(&v)
                .map(Some)
                .ok_or_else(|| index::corrupt_record(key)),
        }
    }

    /// Records with `start <= key < end` (no upper bound if `end` is `None`), in key order,
    /// tombstones included, at most `limit` of them.
    pub fn scan_records(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Record)>> {
        let cf = index::cf(&self.db, CF_RECORDS)?;
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        for item in self
            .db
            .iterator_cf(cf, IteratorMode::From(start, Direction::Forward))
        {
            let (k, v) = item.map_err(index::index_err)?;
            if end.is_some_and(|end| &*k >= end) {
                break;
            }
            let rec = index::decode_record(&v).ok_or_else(|| index::corrupt_record(&k))?;
            out.push((k.into_vec(), rec));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// The totals of a tally group: its live tallied records, their weights and the newest
    /// timestamp applied to one of them. Maintained with every record change, so this is one
    /// index lookup whatever the group's size.
    pub fn tally(&self, group: &[u8]) -> Result<TallyTotals> {
        let cf = index::cf(&self.db, index::CF_TALLIES)?;
        match self.db.get_pinned_cf(cf, group).map_err(index::index_err)? {
            None => Ok(TallyTotals::default()),
            Some(v) => index::decode_tally(&v).ok_or_else(|| {
                DiskError::Index(format!(
                    "tally {:?} has an undecodable value",
                    String::from_utf8_lossy(group)
                ))
            }),
        }
    }

    /// Physically removes a record (no tombstone). `Ok` means durable.
    pub async fn remove_record(&self, key: &[u8]) -> Result<()> {
        let key = key.to_vec();
        self.submit(|reply| CommitOp::RemoveRecord { key, reply })
            .await
    }

    pub fn usage(&self) -> DiskUsage {
        let a = self.lock_alloc();
        DiskUsage {
            capacity_bytes: a.data_blocks() * BLOCK as u64,
            used_bytes: a.used_blocks() * BLOCK as u64,
            chunks: self.counters.chunks.load(Ordering::Relaxed),
            io_backend: self.io.name(),
            read_cache_bytes: self.cache.bytes(),
        }
    }

    /// Ids of all stored chunks, in id order.
    pub fn chunk_ids(&self) -> Result<Vec<ChunkId>> {
        let cf = index::cf(&self.db, CF_CHUNKS)?;
        let mut out = Vec::new();
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (k, _) = item.map_err(index::index_err)?;
            let id = ChunkId::from_slice(&k)
                .ok_or_else(|| DiskError::Index(format!("chunk key of {} bytes", k.len())))?;
            out.push(id);
        }
        Ok(out)
    }

    /// Group-commit counters since open.
    pub fn commit_stats(&self) -> CommitStats {
        let c = &self.counters;
        CommitStats {
            rounds: c.rounds.load(Ordering::Relaxed),
            data_syncs: c.data_syncs.load(Ordering::Relaxed),
            index_syncs: c.index_syncs.load(Ordering::Relaxed),
            chunk_puts: c.chunk_puts.load(Ordering::Relaxed),
            ops: c.ops.load(Ordering::Relaxed),
            relocated_blocks: c.relocated_blocks.load(Ordering::Relaxed),
            relocations_lost: c.relocations_lost.load(Ordering::Relaxed),
        }
    }

    /// Where a chunk's bytes live in the data file: `(byte offset, length)`. For diagnostics and
    /// repair tools; the location changes when the chunk is overwritten.
    pub fn chunk_location(&self, id: ChunkId) -> Result<Option<(u64, u64)>> {
        Ok(self.lookup(id)?.map(|e| (e.offset, u64::from(e.len))))
    }

    /// Path of the data file or device.
    pub fn data_path(&self) -> &Path {
        &self.data_path
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        // Let the committer drain what is queued and exit, so the index is closed (and its lock
        // released) once the disk is gone; the ring thread stops when the last engine handle goes.
        self.commit_tx.take();
        if let Some(h) = self.committer.take() {
            if h.join().is_err() {
                tracing::error!("disk committer thread panicked");
            }
        }
    }
}

/// Checks a chunk read from the disk against the crc32c of each of its blocks, which catches
/// torn, misdirected and decayed blocks. The chunk's blake3 is not recomputed on a local read
/// (it cost twice the crc32c pass on every GET); it goes with the bytes when they leave the node.
fn verify(entry: &ChunkEntry, data: &[u8]) -> std::result::Result<(), &'static str> {
    if data
        .chunks(BLOCK)
        .zip(&entry.crcs)
        .any(|(block, &crc)| crc32c::crc32c(block) != crc)
    {
        return Err("crc32c mismatch");
    }
    Ok(())
}

fn preallocate(file: &File, len: u64) -> io::Result<()> {
    let len =
        libc::off_t::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    loop {
        // SAFETY: fallocate on a descriptor we own; no memory is passed.
        let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EOPNOTSUPP) => {
                tracing::warn!(
                    "fallocate unsupported by the filesystem; extending the file instead"
                );
                return file.set_len(len as u64);
            }
            _ => return Err(e),
        }
    }
}

fn new_instance_id(path: &Path) -> [u8; 16] {
    let mut h = blake3::Hasher::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    h.update(&now.to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.update(path.as_os_str().as_encoded_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&h.finalize().as_bytes()[..16]);
    id
}
