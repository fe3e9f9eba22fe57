//! Micro-benchmarks of the hot paths under every object and block request: the
//! checksums (crc32c per 4 KiB block, blake3 per chunk, MD5 for Swift's ETag), chunk
//! id derivation, placement lookups, and the disk engine's chunk write (group commit,
//! fdatasync) and read (io_uring, O_DIRECT, verified).
//!
//! `cargo bench -p strata-bench --bench hot_paths`; figures go to `target/criterion`.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use md5::{Digest, Md5};
use std::hint::black_box;
use strata_disk::{Disk, DiskConfig};
use strata_placement::{Device, Ring, RingSpec};
use strata_types::{ChunkId, Timestamp};

const MIB: usize = 1 << 20;

fn checksums(c: &mut Criterion) {
    let mut g = c.benchmark_group("checksum");
    for size in [4096usize, MIB] {
        let data = vec![0x5au8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("crc32c", size), &data, |b, d| {
            b.iter(|| crc32c::crc32c(black_box(d)))
        });
        g.bench_with_input(BenchmarkId::new("blake3", size), &data, |b, d| {
            b.iter(|| blake3::hash(black_box(d)))
        });
        g.bench_with_input(BenchmarkId::new("md5", size), &data, |b, d| {
            b.iter(|| Md5::digest(black_box(d)))
        });
    }
    g.finish();
}

fn chunk_ids(c: &mut Criterion) {
    let owner = b"o/AUTH_0123456789abcdef\0container\0some/object/name.bin";
    c.bench_function("chunk_id/derive", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            ChunkId::derive(black_box(owner), Timestamp(1_700_000_000_000_000), i)
        })
    });
}

fn placement(c: &mut Criterion) {
    let devices: Vec<Device> = (1..=30u64)
        .map(|n| Device {
            id: n * 1000,
            node: n,
            zone: format!("z{}", n % 3),
            weight: 1.0,
        })
        .collect();
    let ring = Ring::new(RingSpec {
        version: 1,
        part_power: 12,
        replicas: 3,
        devices,
    })
    .expect("a valid ring");
    let keys: Vec<Vec<u8>> = (0..1024)
        .map(|i| format!("AUTH_test/container/object-{i}").into_bytes())
        .collect();
    c.bench_function("placement/replicas_for_key", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) % keys.len();
            ring.replicas_for_key(black_box(&keys[i])).len()
        })
    });
}

fn disk_engine(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let disk = Disk::open(DiskConfig {
        dir: dir.path().to_path_buf(),
        device: None,
        capacity_bytes: 2 << 30,
        force_syscall_io: false,
        read_cache_bytes: strata_disk::READ_CACHE_BYTES_DEFAULT,
        straighten_idle_ms: strata_disk::STRAIGHTEN_IDLE_MS_DEFAULT,
    })
    .expect("the disk opens");
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let mut g = c.benchmark_group("disk");
    g.sample_size(20);
    for size in [4096usize, MIB] {
        let data = Bytes::from(vec![0xa5u8; size]);
        g.throughput(Throughput::Bytes(size as u64));
        let mut n = 0u64;
        let mut written = Vec::new();
        g.bench_with_input(BenchmarkId::new("put_chunk", size), &data, |b, d| {
            b.iter(|| {
                n += 1;
                let id = ChunkId::derive(b"bench", Timestamp(n), size as u64);
                rt.block_on(disk.put_chunk(id, d.clone())).expect("written");
                written.push(id);
            })
        });
        // Keep the data file from filling up across sizes.
        let ids = std::mem::take(&mut written);
        let sample = ids[..ids.len().min(64)].to_vec();
        g.bench_with_input(BenchmarkId::new("get_chunk", size), &sample, |b, ids| {
            let mut i = 0usize;
            b.iter(|| {
                i = (i + 1) % ids.len();
                rt.block_on(disk.get_chunk(ids[i])).expect("read")
            })
        });
        for id in ids {
            rt.block_on(disk.delete_chunk(id)).expect("deleted");
        }
    }
    g.finish();
}

criterion_group!(benches, checksums, chunk_ids, placement, disk_engine);
criterion_main!(benches);
