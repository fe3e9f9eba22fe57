//! Measures group commit: 16 concurrent writers of 4 KiB chunks for a few seconds, against the
//! disk's raw rate of (4 KiB write + fdatasync) pairs.
//!
//! `cargo run --release -p strata-disk --example group_commit [dir] [seconds] [writers]`

use bytes::Bytes;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_disk::{Disk, DiskConfig};
use strata_types::ChunkId;

fn raw_sync_rate(dir: &std::path::Path, secs: f64) -> std::io::Result<f64> {
    let path = dir.join("sync-probe");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)?;
    let block = [0x5au8; 4096];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        f.write_all_at(&block, (n % 256) * 4096)?;
        f.sync_data()?;
        n += 1;
    }
    std::fs::remove_file(&path)?;
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let tmp = tempfile::tempdir()?;
    let dir = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let secs: f64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(3.0);
    let writers: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(16);

    std::fs::create_dir_all(&dir)?;
    let raw = raw_sync_rate(&dir, 1.0)?;
    println!("raw 4 KiB write + fdatasync: {raw:.0}/s");

    for force_syscall_io in [false, true] {
        let sub = dir.join(if force_syscall_io { "pread" } else { "uring" });
        let disk = Disk::open(DiskConfig {
            dir: sub.clone(),
            device: None,
            capacity_bytes: 1 << 30,
            force_syscall_io,
            read_cache_bytes: strata_disk::READ_CACHE_BYTES_DEFAULT,
            straighten_idle_ms: strata_disk::STRAIGHTEN_IDLE_MS_DEFAULT,
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let before = disk.commit_stats();
        let start = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..writers {
            let (disk, stop, done) = (disk.clone(), stop.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                let data = Bytes::from(vec![w as u8; 4096]);
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let mut id = [0u8; 32];
                    id[..8].copy_from_slice(&w.to_be_bytes());
                    id[8..16].copy_from_slice(&i.to_be_bytes());
                    disk.put_chunk(ChunkId(id), data.clone()).await?;
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
                anyhow::Ok(())
            }));
        }
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await??;
        }
        let elapsed = start.elapsed().as_secs_f64();
        let s = disk.commit_stats();
        let puts = s.chunk_puts - before.chunk_puts;
        let syncs = s.data_syncs - before.data_syncs;
        let index_syncs = s.index_syncs - before.index_syncs;
        println!(
            "{}: {writers} writers, {puts} puts in {elapsed:.2}s = {:.0} puts/s; \
             {syncs} data fdatasyncs ({:.0}/s), {index_syncs} index syncs, \
             {:.1} chunks per fdatasync",
            disk.usage().io_backend,
            puts as f64 / elapsed,
            syncs as f64 / elapsed,
            puts as f64 / syncs.max(1) as f64,
        );
        assert_eq!(puts, done.load(Ordering::Relaxed));
        drop(disk);
        std::fs::remove_dir_all(&sub)?;
    }
    Ok(())
}
