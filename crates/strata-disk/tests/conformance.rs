//! The same behaviour tests, run against both I/O backends (io_uring and pread/pwrite).

use bytes::Bytes;
use rand::{Rng, RngCore, SeedableRng};
use std::path::Path;
use std::sync::Arc;
use strata_disk::{Disk, DiskConfig, DiskError, Record, Tally};
use strata_types::{ChunkId, CHUNK_SIZE_BYTES_MAX};

const MIB: u64 = 1 << 20;

#[derive(Clone, Copy, Debug)]
enum Backend {
    Uring,
    Syscall,
}

fn cfg(dir: &Path, backend: Backend, capacity: u64) -> DiskConfig {
    DiskConfig {
        dir: dir.to_path_buf(),
        device: None,
        capacity_bytes: capacity,
        force_syscall_io: matches!(backend, Backend::Syscall),
        read_cache_bytes: strata_disk::READ_CACHE_BYTES_DEFAULT,
        // Off, so that what a test reads is placed as its writes left it; one test turns
        // it on.
        straighten_idle_ms: 0,
    }
}

fn open(dir: &Path, backend: Backend, capacity: u64) -> Arc<Disk> {
    let d = Disk::open(cfg(dir, backend, capacity)).expect("open");
    let want = match backend {
        Backend::Uring => "io_uring",
        Backend::Syscall => "pread",
    };
    assert_eq!(d.usage().io_backend, want);
    d
}

fn id(n: u64) -> ChunkId {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&n.to_be_bytes());
    b[31] = 0xa5;
    ChunkId(b)
}

fn random_bytes(rng: &mut impl RngCore, len: usize) -> Bytes {
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    Bytes::from(v)
}

const SIZES: [usize; 7] = [
    0,
    1,
    4095,
    4096,
    4097,
    MIB as usize + 3,
    CHUNK_SIZE_BYTES_MAX,
];

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod uring {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::Uring).await }
            )*
        }
        mod syscall {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::Syscall).await }
            )*
        }
    };
}

both_backends!(
    roundtrip_sizes,
    reopen_preserves_everything,
    allocator_reuses_space_and_reports_full,
    records_last_writer_wins,
    concurrent_record_writers_keep_the_newest,
    tallies_follow_every_record_change,
    detects_corrupt_data,
    concurrent_overwrites_never_read_as_corrupt,
    writers_share_syncs,
    scattered_ranges_are_relocated_when_read,
    idle_disks_straighten_what_writes_scattered,
    relocation_never_undoes_a_racing_write,
    unsynced_overwrites_of_a_full_disk_get_space_back,
    block_aligned_parts_are_written_in_place,
    abandoned_io_leaves_the_disk_usable,
);

async fn roundtrip_sizes(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let disk = open(dir.path(), b, 64 * MIB);
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for (i, &len) in SIZES.iter().enumerate() {
        let data = random_bytes(&mut rng, len);
        let cid = id(i as u64);
        assert!(!disk.has_chunk(cid).unwrap());
        assert_eq!(disk.get_chunk(cid).await.unwrap(), None);
        disk.put_chunk(cid, data.clone()).await.unwrap();
        assert!(disk.has_chunk(cid).unwrap());
        assert_eq!(
            disk.get_chunk(cid).await.unwrap().as_deref(),
            Some(&data[..]),
            "len {len}"
        );
        // The hash recorded at write time comes back with the bytes, for transfers (this
        // second read is answered by the read cache).
        let (read, hash) = disk.get_chunk_with_hash(cid).await.unwrap().unwrap();
        assert_eq!(
            (&read[..], &hash),
            (&data[..], blake3::hash(&data).as_bytes())
        );
    }
    assert_eq!(disk.usage().chunks, SIZES.len() as u64);
    // Overwrite each with a different size, then delete every other one.
    for (i, &len) in SIZES.iter().enumerate() {
        let new_len = SIZES[(i + 3) % SIZES.len()];
        let data = random_bytes(&mut rng, new_len);
        let cid = id(i as u64);
        disk.put_chunk(cid, data.clone()).await.unwrap();
        assert_eq!(
            disk.get_chunk(cid).await.unwrap().as_deref(),
            Some(&data[..]),
            "{len}->{new_len}"
        );
    }
    assert!(
        disk.usage().read_cache_bytes > 0,
        "reads fill the read cache"
    );
    for i in (0..SIZES.len()).step_by(2) {
        // Read just before: a delete must not leave the cached copy answering.
        assert!(disk.get_chunk(id(i as u64)).await.unwrap().is_some());
        disk.delete_chunk(id(i as u64)).await.unwrap();
        assert_eq!(disk.get_chunk(id(i as u64)).await.unwrap(), None);
        assert!(!disk.has_chunk(id(i as u64)).unwrap());
    }
    // Deleting an absent chunk is fine.
    disk.delete_chunk(id(999)).await.unwrap();
    let ids = disk.chunk_ids().unwrap();
    let expected: Vec<_> = (1..SIZES.len()).step_by(2).map(|i| id(i as u64)).collect();
    assert_eq!(ids, expected);
    assert_eq!(disk.usage().chunks, expected.len() as u64);

    let too_big = Bytes::from(vec![0u8; CHUNK_SIZE_BYTES_MAX + 1]);
    assert!(matches!(
        disk.put_chunk(id(50), too_big).await,
        Err(DiskError::TooLarge { .. })
    ));
    assert!(!disk.has_chunk(id(50)).unwrap());

    // Random sizes.
    for n in 0..40u64 {
        let len = rng.gen_range(0..300_000);
        let data = random_bytes(&mut rng, len);
        disk.put_chunk(id(100 + n), data.clone()).await.unwrap();
        assert_eq!(
            disk.get_chunk(id(100 + n)).await.unwrap().as_deref(),
            Some(&data[..])
        );
    }
}

async fn reopen_preserves_everything(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let mut chunks = Vec::new();
    let mut used;
    {
        let disk = open(dir.path(), b, 64 * MIB);
        for (i, &len) in SIZES.iter().enumerate() {
            let data = random_bytes(&mut rng, len);
            disk.put_chunk(id(i as u64), data.clone()).await.unwrap();
            chunks.push((id(i as u64), data));
        }
        disk.delete_chunk(id(3)).await.unwrap();
        chunks.retain(|(c, _)| *c != id(3));
        assert!(disk
            .put_record(
                b"a",
                Record {
                    timestamp: 5,
                    value: Some(b"x".to_vec()),
                    tally: None,
                }
            )
            .await
            .unwrap());
        assert!(disk
            .put_record(
                b"b",
                Record {
                    timestamp: 6,
                    value: None,
                    tally: None,
                }
            )
            .await
            .unwrap());
        used = disk.usage();
    }
    for round in 0..2 {
        // Reopen with a different configured capacity: the existing file is kept.
        let disk = open(dir.path(), b, 8 * MIB);
        let u = disk.usage();
        assert_eq!(u.capacity_bytes, used.capacity_bytes, "round {round}");
        assert_eq!(u.used_bytes, used.used_bytes);
        assert_eq!(u.chunks, chunks.len() as u64);
        for (c, data) in &chunks {
            assert_eq!(
                disk.get_chunk(*c).await.unwrap().as_deref(),
                Some(&data[..])
            );
        }
        assert_eq!(disk.get_chunk(id(3)).await.unwrap(), None);
        assert_eq!(
            disk.get_record(b"a").unwrap(),
            Some(Record {
                timestamp: 5,
                value: Some(b"x".to_vec()),
                tally: None,
            })
        );
        assert_eq!(
            disk.get_record(b"b").unwrap(),
            Some(Record {
                timestamp: 6,
                value: None,
                tally: None,
            })
        );
        // Freed and used space is consistent after recovery: new writes do not clobber old ones.
        let extra = random_bytes(&mut rng, 200_000);
        disk.put_chunk(id(1000 + round), extra.clone())
            .await
            .unwrap();
        chunks.push((id(1000 + round), extra));
        for (c, data) in &chunks {
            assert_eq!(
                disk.get_chunk(*c).await.unwrap().as_deref(),
                Some(&data[..])
            );
        }
        drop(disk);
        let disk = open(dir.path(), b, 8 * MIB);
        assert_eq!(disk.usage().chunks, chunks.len() as u64);
        used = disk.usage();
    }
}

async fn allocator_reuses_space_and_reports_full(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    // One superblock block plus 256 data blocks (1 MiB).
    let disk = open(dir.path(), b, MIB + 4096);
    assert_eq!(disk.usage().capacity_bytes, MIB);
    let quarter = Bytes::from(vec![7u8; (MIB / 4) as usize]);
    for i in 0..4 {
        disk.put_chunk(id(i), quarter.clone()).await.unwrap();
    }
    assert_eq!(disk.usage().used_bytes, MIB);
    match disk.put_chunk(id(9), Bytes::from_static(b"x")).await {
        Err(DiskError::Full { needed_bytes }) => assert_eq!(needed_bytes, 4096),
        other => panic!("expected Full, got {other:?}"),
    }
    // An overwrite needs room for the new copy before the old one is released.
    assert!(matches!(
        disk.put_chunk(id(0), quarter.clone()).await,
        Err(DiskError::Full { .. })
    ));
    // Empty chunks take no blocks.
    disk.put_chunk(id(10), Bytes::new()).await.unwrap();
    assert_eq!(
        disk.get_chunk(id(10)).await.unwrap().as_deref(),
        Some(&[][..])
    );

    disk.delete_chunk(id(1)).await.unwrap();
    assert_eq!(disk.usage().used_bytes, 3 * MIB / 4);
    let other = Bytes::from(vec![9u8; (MIB / 4) as usize]);
    disk.put_chunk(id(5), other.clone()).await.unwrap();
    assert_eq!(
        disk.get_chunk(id(5)).await.unwrap().as_deref(),
        Some(&other[..])
    );
    for i in [0, 2, 3] {
        assert_eq!(
            disk.get_chunk(id(i)).await.unwrap().as_deref(),
            Some(&quarter[..])
        );
    }
    assert!(matches!(
        disk.put_chunk(id(6), quarter.clone()).await,
        Err(DiskError::Full { .. })
    ));
    // Free two neighbours: a chunk of twice the size fits in their place only if contiguous.
    disk.delete_chunk(id(2)).await.unwrap();
    disk.delete_chunk(id(3)).await.unwrap();
    let half = Bytes::from(vec![3u8; (MIB / 2) as usize]);
    disk.put_chunk(id(7), half.clone()).await.unwrap();
    assert_eq!(
        disk.get_chunk(id(7)).await.unwrap().as_deref(),
        Some(&half[..])
    );
    assert_eq!(disk.usage().used_bytes, MIB);
    drop(disk);
    let disk = open(dir.path(), b, MIB + 4096);
    assert_eq!(disk.usage().used_bytes, MIB);
    assert!(matches!(
        disk.put_chunk(id(8), Bytes::from_static(b"y")).await,
        Err(DiskError::Full { .. })
    ));
}

fn rec(ts: u64, v: Option<&[u8]>) -> Record {
    Record {
        timestamp: ts,
        value: v.map(<[u8]>::to_vec),
        tally: None,
    }
}

async fn records_last_writer_wins(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let disk = open(dir.path(), b, 8 * MIB);
    assert_eq!(disk.get_record(b"k").unwrap(), None);
    assert!(disk.put_record(b"k", rec(10, Some(b"v10"))).await.unwrap());
    assert!(!disk.put_record(b"k", rec(5, Some(b"v5"))).await.unwrap());
    assert!(!disk
        .put_record(b"k", rec(10, Some(b"other")))
        .await
        .unwrap());
    assert_eq!(disk.get_record(b"k").unwrap(), Some(rec(10, Some(b"v10"))));
    assert!(disk.put_record(b"k", rec(11, None)).await.unwrap());
    assert_eq!(disk.get_record(b"k").unwrap(), Some(rec(11, None)));
    assert!(!disk.put_record(b"k", rec(11, Some(b"late"))).await.unwrap());
    assert!(disk.put_record(b"k", rec(12, Some(b""))).await.unwrap());
    assert_eq!(disk.get_record(b"k").unwrap(), Some(rec(12, Some(b""))));

    for (i, key) in ["a", "b", "b\0", "ba", "c", "d"].iter().enumerate() {
        let value = if i == 3 { None } else { Some(key.as_bytes()) };
        assert!(disk
            .put_record(key.as_bytes(), rec(100 + i as u64, value))
            .await
            .unwrap());
    }
    let keys =
        |v: Vec<(Vec<u8>, Record)>| -> Vec<Vec<u8>> { v.into_iter().map(|(k, _)| k).collect() };
    let all = disk.scan_records(b"", None, 100).unwrap();
    assert_eq!(
        keys(all.clone()),
        vec![&b"a"[..], b"b", b"b\0", b"ba", b"c", b"d", b"k"]
    );
    assert_eq!(all[3].1, rec(103, None), "tombstones are scanned too");
    assert_eq!(
        keys(disk.scan_records(b"b", Some(b"c"), 100).unwrap()),
        vec![&b"b"[..], b"b\0", b"ba"]
    );
    assert_eq!(
        keys(disk.scan_records(b"b", Some(b"c"), 2).unwrap()),
        vec![&b"b"[..], b"b\0"]
    );
    assert_eq!(
        keys(disk.scan_records(b"bb", None, 2).unwrap()),
        vec![&b"c"[..], b"d"]
    );
    assert!(disk.scan_records(b"a", Some(b"a"), 10).unwrap().is_empty());
    assert!(disk.scan_records(b"a", None, 0).unwrap().is_empty());

    disk.remove_record(b"c").await.unwrap();
    assert_eq!(disk.get_record(b"c").unwrap(), None);
    // Removal is physical: any timestamp is accepted afterwards.
    assert!(disk.put_record(b"c", rec(1, Some(b"again"))).await.unwrap());
    disk.remove_record(b"never-existed").await.unwrap();
    drop(disk);
    let disk = open(dir.path(), b, 8 * MIB);
    assert_eq!(disk.get_record(b"c").unwrap(), Some(rec(1, Some(b"again"))));
    assert_eq!(disk.get_record(b"k").unwrap(), Some(rec(12, Some(b""))));
}

/// A live record of `key` counted in the group of its first `group` bytes.
fn tallied(ts: u64, group: u32, weight: u64) -> Record {
    Record {
        timestamp: ts,
        value: Some(b"row".to_vec()),
        tally: Some(Tally {
            group_len: group,
            weight,
        }),
    }
}

async fn tallies_follow_every_record_change(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let disk = open(dir.path(), b, 8 * MIB);
    let totals = |d: &Disk, g: &[u8]| {
        let t = d.tally(g).unwrap();
        (t.count, t.weight, t.stamp)
    };
    assert_eq!(
        totals(&disk, b"g1/"),
        (0, 0, 0),
        "an unknown group is empty"
    );
    assert!(disk.put_record(b"g1/a", tallied(10, 3, 100)).await.unwrap());
    assert!(disk.put_record(b"g1/b", tallied(11, 3, 20)).await.unwrap());
    assert!(disk.put_record(b"g2/a", tallied(12, 3, 7)).await.unwrap());
    assert_eq!(totals(&disk, b"g1/"), (2, 120, 11));
    assert_eq!(totals(&disk, b"g2/"), (1, 7, 12));
    // An overwrite moves the weight; a stale write changes nothing.
    assert!(disk.put_record(b"g1/a", tallied(13, 3, 5)).await.unwrap());
    assert!(!disk.put_record(b"g1/a", tallied(9, 3, 1000)).await.unwrap());
    assert_eq!(totals(&disk, b"g1/"), (2, 25, 13));
    // A tombstone takes the record out; a stale tombstone does not.
    assert!(!disk.put_record(b"g1/b", rec(5, None)).await.unwrap());
    assert!(disk.put_record(b"g1/b", rec(14, None)).await.unwrap());
    assert_eq!(totals(&disk, b"g1/"), (1, 5, 14));
    // Live again, then physically removed.
    assert!(disk.put_record(b"g1/b", tallied(15, 3, 1)).await.unwrap());
    assert_eq!(totals(&disk, b"g1/"), (2, 6, 15));
    disk.remove_record(b"g1/b").await.unwrap();
    assert_eq!(totals(&disk, b"g1/"), (1, 5, 15));
    // An untallied record over a tallied one leaves the group.
    assert!(disk
        .put_record(b"g2/a", rec(16, Some(b"plain")))
        .await
        .unwrap());
    assert_eq!(totals(&disk, b"g2/"), (0, 0, 16));
    // A group longer than the key is refused, and changes nothing.
    assert!(matches!(
        disk.put_record(b"g1/c", tallied(17, 5, 1)).await,
        Err(DiskError::BadRecord(_))
    ));
    assert_eq!(disk.get_record(b"g1/c").unwrap(), None);
    // Many writes to one group in one round each count once.
    let writes: Vec<_> = (0..64u64)
        .map(|i| {
            let disk = disk.clone();
            tokio::spawn(async move {
                let key = format!("g3/{}", i % 16).into_bytes();
                disk.put_record(&key, tallied(100 + i, 3, i)).await.unwrap()
            })
        })
        .collect();
    for w in writes {
        w.await.unwrap();
    }
    let want: u64 = (0..16u64)
        .map(|k| disk.get_record(format!("g3/{k}").as_bytes()).unwrap())
        .map(|r| r.and_then(|r| r.tally).map_or(0, |t| t.weight))
        .sum();
    assert_eq!(totals(&disk, b"g3/").0, 16);
    assert_eq!(totals(&disk, b"g3/").1, want);
    drop(disk);
    let disk = open(dir.path(), b, 8 * MIB);
    assert_eq!(
        totals(&disk, b"g1/"),
        (1, 5, 15),
        "tallies survive reopening"
    );
    assert_eq!(disk.get_record(b"g1/a").unwrap(), Some(tallied(13, 3, 5)));
}

async fn concurrent_record_writers_keep_the_newest(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let disk = open(dir.path(), b, 8 * MIB);
    let mut tasks = Vec::new();
    for t in 0..16u64 {
        let disk = disk.clone();
        tasks.push(tokio::spawn(async move {
            let mut accepted = Vec::new();
            for i in 0..20u64 {
                // Timestamps interleave across tasks; each is unique.
                let ts = (i * 7919 + t * 104_729) % 1000 + t * 1000;
                let value = format!("{t}-{i}").into_bytes();
                if disk
                    .put_record(
                        b"hot",
                        Record {
                            timestamp: ts,
                            value: Some(value),
                            tally: None,
                        },
                    )
                    .await
                    .unwrap()
                {
                    accepted.push(ts);
                }
            }
            accepted
        }));
    }
    let mut max_accepted = 0;
    for t in tasks {
        for ts in t.await.unwrap() {
            max_accepted = max_accepted.max(ts);
        }
    }
    let got = disk.get_record(b"hot").unwrap().unwrap();
    assert_eq!(got.timestamp, max_accepted);
    // The newest timestamp written overall must be the one stored.
    let newest = (0..16u64)
        .flat_map(|t| (0..20u64).map(move |i| (i * 7919 + t * 104_729) % 1000 + t * 1000))
        .max()
        .unwrap();
    assert_eq!(got.timestamp, newest);
}

async fn detects_corrupt_data(b: Backend) {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let disk = open(dir.path(), b, 16 * MIB);
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let data = random_bytes(&mut rng, 3 * 4096 + 100);
    disk.put_chunk(id(1), data.clone()).await.unwrap();
    let good = random_bytes(&mut rng, 5000);
    disk.put_chunk(id(2), good.clone()).await.unwrap();
    let (offset, len) = disk.chunk_location(id(1)).unwrap().unwrap();
    assert_eq!(len, data.len() as u64);
    assert_eq!(offset & 4095, 0);

    // Flip one byte in the middle of the chunk through an ordinary (buffered) descriptor.
    let path = dir.path().join("chunks.dat");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let at = offset + 2 * 4096 + 17;
    let mut byte = [0u8];
    f.read_exact_at(&mut byte, at).unwrap();
    f.write_all_at(&[byte[0] ^ 0x40], at).unwrap();
    f.sync_all().unwrap();
    drop(f);
    match disk.get_chunk(id(1)).await {
        Err(DiskError::Corrupt { chunk, .. }) => assert_eq!(chunk, id(1)),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(
        disk.get_chunk(id(2)).await.unwrap().as_deref(),
        Some(&good[..])
    );
    // Rewriting the chunk heals it.
    disk.put_chunk(id(1), data.clone()).await.unwrap();
    assert_eq!(
        disk.get_chunk(id(1)).await.unwrap().as_deref(),
        Some(&data[..])
    );
}

async fn concurrent_overwrites_never_read_as_corrupt(b: Backend) {
    // Writers overwrite and delete a small set of ids while readers read them: blocks get reused
    // under the readers' feet, which must never surface as corruption.
    let dir = tempfile::tempdir().unwrap();
    let disk = open(dir.path(), b, 4 * MIB);
    let content = |n: u64, v: u64| -> Bytes {
        let mut out = vec![0u8; 4096 + (v as usize * 997) % 20_000];
        blake3::Hasher::new()
            .update(&n.to_le_bytes())
            .update(&v.to_le_bytes())
            .finalize_xof()
            .fill(&mut out);
        Bytes::from(out)
    };
    let mut tasks = Vec::new();
    for w in 0..4u64 {
        let disk = disk.clone();
        tasks.push(tokio::spawn(async move {
            for v in 0..60u64 {
                let n = (w * 7 + v) % 4;
                if v % 5 == 4 {
                    disk.delete_chunk(id(n)).await.unwrap();
                } else {
                    disk.put_chunk(id(n), content(n, v)).await.unwrap();
                }
            }
        }));
    }
    for r in 0..4u64 {
        let disk = disk.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..300u64 {
                let n = (r + i) % 4;
                let got = disk.get_chunk(id(n)).await.expect("read must not fail");
                if let Some(data) = got {
                    let v = (0..60u64).find(|&v| content(n, v) == data);
                    assert!(
                        v.is_some(),
                        "read bytes that were never written to chunk {n}"
                    );
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

async fn writers_share_syncs(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let disk = open(dir.path(), b, 64 * MIB);
    let before = disk.commit_stats();
    let mut tasks = Vec::new();
    for t in 0..64u64 {
        let disk = disk.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..4u64 {
                disk.put_chunk(id(t * 100 + i), Bytes::from(vec![t as u8; 4096]))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let s = disk.commit_stats();
    let puts = s.chunk_puts - before.chunk_puts;
    let syncs = s.data_syncs - before.data_syncs;
    assert_eq!(puts, 256);
    assert!(
        syncs < puts / 2,
        "{syncs} data syncs for {puts} puts: writes are not grouped"
    );
    assert_eq!(disk.usage().chunks, 256);
}

#[tokio::test]
async fn bad_index_values_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let data = Bytes::from(vec![1u8; 10_000]);
    {
        let disk = open(dir.path(), Backend::Uring, 8 * MIB);
        disk.put_chunk(id(1), data.clone()).await.unwrap();
        disk.put_chunk(id(2), data.clone()).await.unwrap();
        disk.put_record(b"r", rec(1, Some(b"v"))).await.unwrap();
        disk.put_record(b"s", rec(1, Some(b"v"))).await.unwrap();
    }
    {
        let mut opts = rocksdb::Options::default();
        opts.create_missing_column_families(true);
        let db = rocksdb::DB::open_cf(
            &opts,
            dir.path().join("index"),
            ["chunks", "records", "meta", "blocks", "tallies"],
        )
        .unwrap();
        let chunks = db.cf_handle("chunks").unwrap();
        db.put_cf(db.cf_handle("tallies").unwrap(), b"g/", b"\x01short")
            .unwrap();
        let records = db.cf_handle("records").unwrap();
        db.put_cf(chunks, id(1).0, b"\x01garbage").unwrap();
        // A well-formed entry that points past the end of the data area.
        let mut far = vec![1u8];
        far.extend_from_slice(&(1u64 << 40).to_be_bytes());
        far.extend_from_slice(&5u32.to_be_bytes());
        far.extend_from_slice(&[0; 32]);
        far.extend_from_slice(&[0; 4]);
        db.put_cf(chunks, id(3).0, &far).unwrap();
        db.put_cf(chunks, b"short-key", b"\x07").unwrap();
        db.put_cf(records, b"r", b"\x09zz").unwrap();
    }
    let disk = open(dir.path(), Backend::Uring, 8 * MIB);
    assert!(matches!(
        disk.get_chunk(id(1)).await,
        Err(DiskError::Corrupt { .. })
    ));
    assert!(matches!(
        disk.get_chunk(id(3)).await,
        Err(DiskError::Corrupt { .. })
    ));
    assert_eq!(
        disk.get_chunk(id(2)).await.unwrap().as_deref(),
        Some(&data[..])
    );
    assert!(disk.get_record(b"r").is_err());
    assert!(disk.scan_records(b"", None, 10).is_err());
    assert!(disk.put_record(b"r", rec(2, None)).await.is_err());
    assert!(disk.chunk_ids().is_err());
    assert_eq!(disk.get_record(b"s").unwrap(), Some(rec(1, Some(b"v"))));
    // A damaged chunk entry can be replaced or deleted.
    disk.put_chunk(id(1), data.clone()).await.unwrap();
    assert_eq!(
        disk.get_chunk(id(1)).await.unwrap().as_deref(),
        Some(&data[..])
    );
    disk.delete_chunk(id(3)).await.unwrap();
    assert_eq!(disk.get_chunk(id(3)).await.unwrap(), None);
    disk.remove_record(b"r").await.unwrap();
    assert_eq!(disk.get_record(b"r").unwrap(), None);
    // A damaged tally is an error to read; the next change to its group counts from zero.
    assert!(disk.tally(b"g/").is_err());
    assert!(disk.put_record(b"g/x", tallied(3, 2, 40)).await.unwrap());
    let t = disk.tally(b"g/").unwrap();
    assert_eq!((t.count, t.weight, t.stamp), (1, 40, 3));
}

#[tokio::test]
async fn reopen_with_a_foreign_data_file_fails() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    drop(open(a.path(), Backend::Uring, 8 * MIB));
    drop(open(b.path(), Backend::Uring, 8 * MIB));
    std::fs::copy(a.path().join("chunks.dat"), b.path().join("chunks.dat")).unwrap();
    assert!(Disk::open(cfg(b.path(), Backend::Uring, 8 * MIB)).is_err());
}

#[test]
fn usable_outside_a_runtime_for_sync_calls() {
    let dir = tempfile::tempdir().unwrap();
    let disk = open(dir.path(), Backend::Uring, 8 * MIB);
    assert!(!disk.has_chunk(id(1)).unwrap());
    assert_eq!(disk.get_record(b"x").unwrap(), None);
    assert_eq!(disk.usage().used_bytes, 0);
}

/// Block `b` of a volume as written at version `v`.
fn vblock(b: u64, v: u64) -> Vec<u8> {
    let mut out = vec![0u8; 4096];
    blake3::Hasher::new()
        .update(&b.to_le_bytes())
        .update(&v.to_le_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

/// Writes blocks `0..n` of `volume` one at a time in a shuffled order, so that they lie
/// scattered over the data area.
async fn write_scattered(disk: &Disk, volume: u64, n: u64, version: u64, seed: u64) {
    use rand::seq::SliceRandom;
    let mut order: Vec<u64> = (0..n).collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    for b in order {
        disk.write_block_list(volume, &[b], Bytes::from(vblock(b, version)))
            .await
            .unwrap();
    }
}

async fn wait_relocated(disk: &Disk, blocks: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while disk.commit_stats().relocated_blocks < blocks {
        assert!(
            std::time::Instant::now() < deadline,
            "relocation did not happen: {:?}",
            disk.commit_stats()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

async fn scattered_ranges_are_relocated_when_read(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let disk = open(dir.path(), b, 64 * MIB);
    write_scattered(&disk, 5, 256, 1, 7).await;
    let expect: Vec<u8> = (0..256).flat_map(|b| vblock(b, 1)).collect();
    let scattered = |d: &Disk| {
        (1..256u64)
            .filter(|&b| {
                let at = |b| d.block_location(5, b).unwrap().unwrap();
                at(b) != at(b - 1) + 4096
            })
            .count()
    };
    assert!(scattered(&disk) > 100, "the shuffled writes are scattered");
    let read = disk.read_blocks(5, 0, 256).await.unwrap();
    assert_eq!(&read.data[..], &expect[..]);
    wait_relocated(&disk, 256).await;
    assert_eq!(scattered(&disk), 0, "the range now lies in one run");
    assert_eq!(
        disk.read_blocks(5, 0, 256).await.unwrap().data[..],
        expect[..]
    );
    // A range read in one run is left alone.
    let stats = disk.commit_stats();
    disk.read_blocks(5, 0, 256).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(disk.commit_stats().relocated_blocks, stats.relocated_blocks);
    // The blocks the relocation left are free again once a synced round recorded it.
    disk.sync().await.unwrap();
    disk.put_record(b"synced", rec(1, Some(b"round")))
        .await
        .unwrap();
    let used = disk.usage().used_bytes;
    assert_eq!(used, 256 * 4096, "only the relocated copy is allocated");
    drop(disk);
    let disk = open(dir.path(), b, 64 * MIB);
    assert_eq!(
        disk.read_blocks(5, 0, 256).await.unwrap().data[..],
        expect[..]
    );
    assert_eq!(scattered(&disk), 0);
    assert_eq!(disk.usage().used_bytes, 256 * 4096);
}

async fn idle_disks_straighten_what_writes_scattered(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let disk = Disk::open(DiskConfig {
        straighten_idle_ms: 200,
        ..cfg(dir.path(), b, 64 * MIB)
    })
    .expect("open");
    let runs = |d: &Disk, first: u64, n: u64| {
        let at = |b| d.block_location(5, b).unwrap().unwrap();
        1 + (first + 1..first + n)
            .filter(|&b| at(b) != at(b - 1) + 4096)
            .count()
    };
    // Blocks 0..256 written one at a time in shuffled order; 256..512 in one write; 16
    // scattered blocks of 512..768, too few to be worth moving.
    write_scattered(&disk, 5, 256, 1, 7).await;
    disk.write_blocks(
        5,
        256,
        Bytes::from((256..512).flat_map(|b| vblock(b, 1)).collect::<Vec<u8>>()),
    )
    .await
    .unwrap();
    for blk in (512..768).step_by(16) {
        disk.write_block_list(5, &[blk], Bytes::from(vblock(blk, 1)))
            .await
            .unwrap();
    }
    assert!(
        runs(&disk, 0, 256) > 100,
        "the shuffled writes are scattered"
    );
    assert_eq!(
        disk.straighten_pending_bytes(),
        2 * MIB,
        "the shuffled span and the sparse one are remembered, not the one written whole"
    );
    // While the disk serves volume I/O, it does not straighten.
    let busy_until = std::time::Instant::now() + std::time::Duration::from_millis(600);
    while std::time::Instant::now() < busy_until {
        disk.read_blocks(5, 300, 1).await.unwrap();
    }
    assert_eq!(disk.commit_stats().relocated_blocks, 0);
    assert_eq!(disk.straighten_pending_bytes(), 2 * MIB);
    // Idle, it does, without a read from anyone.
    wait_relocated(&disk, 256).await;
    assert_eq!(runs(&disk, 0, 256), 1, "the range now lies in one run");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        disk.commit_stats().relocated_blocks,
        256,
        "the range written whole and the sparse one are left alone"
    );
    assert_eq!(
        disk.straighten_pending_bytes(),
        0,
        "both spans were looked at"
    );
    let expect: Vec<u8> = (0..512).flat_map(|b| vblock(b, 1)).collect();
    for first in [0, 256] {
        let read = disk.read_blocks(5, first, 256).await.unwrap();
        let at = first as usize * 4096;
        assert_eq!(&read.data[..], &expect[at..at + 256 * 4096]);
    }
    // What it moved away from is free once a synced round recorded the move.
    disk.sync().await.unwrap();
    disk.put_record(b"synced", rec(1, Some(b"round")))
        .await
        .unwrap();
    assert_eq!(disk.usage().used_bytes, (256 + 256 + 16) * 4096);
    drop(disk);
    let disk = open(dir.path(), b, 64 * MIB);
    assert_eq!(runs(&disk, 0, 256), 1);
    let read = disk.read_blocks(5, 0, 256).await.unwrap();
    assert_eq!(&read.data[..], &expect[..256 * 4096]);
}

async fn relocation_never_undoes_a_racing_write(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let disk = open(dir.path(), b, 64 * MIB);
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut version = vec![0u64; 128];
    for round in 1..=30u64 {
        write_scattered(&disk, 9, 128, round * 1000, round).await;
        version.iter_mut().for_each(|v| *v = round * 1000);
        // Reads (which relocate) race with writes and trims of some of the same blocks.
        let reader = {
            let disk = disk.clone();
            tokio::spawn(async move {
                for _ in 0..3 {
                    disk.read_blocks(9, 0, 128).await.unwrap();
                    tokio::task::yield_now().await;
                }
            })
        };
        for i in 0..8u64 {
            let blk = rng.gen_range(0..128u64);
            if rng.gen_bool(0.8) {
                let v = round * 1000 + i + 1;
                disk.write_block_list(9, &[blk], Bytes::from(vblock(blk, v)))
                    .await
                    .unwrap();
                version[blk as usize] = v;
            } else {
                disk.trim_blocks(9, blk, 1).await.unwrap();
                version[blk as usize] = 0;
            }
        }
        reader.await.unwrap();
        // Let relocations under way finish, then check every block.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let read = disk.read_blocks(9, 0, 128).await.unwrap();
        for (blk, &v) in version.iter().enumerate() {
            let got = &read.data[blk * 4096..(blk + 1) * 4096];
            if v == 0 {
                assert!(!read.present[blk], "round {round}: block {blk} was trimmed");
            } else {
                assert!(
                    got == vblock(blk as u64, v).as_slice(),
                    "round {round}: block {blk} is not version {v}"
                );
            }
        }
    }
    let s = disk.commit_stats();
    assert!(s.relocated_blocks > 0, "some relocation happened: {s:?}");
    drop(disk);
    let disk = open(dir.path(), b, 64 * MIB);
    let read = disk.read_blocks(9, 0, 128).await.unwrap();
    for (blk, &v) in version.iter().enumerate() {
        assert_eq!(read.present[blk], v != 0);
        if v != 0 {
            assert!(read.data[blk * 4096..(blk + 1) * 4096] == vblock(blk as u64, v)[..]);
        }
    }
}

/// One MiB (256 blocks) of volume data, megabyte `m` at version `v`.
fn vmib(m: u64, v: u64) -> Bytes {
    Bytes::from(
        (m * 256..(m + 1) * 256)
            .flat_map(|b| vblock(b, v))
            .collect::<Vec<u8>>(),
    )
}

async fn write_mib_unsynced(disk: &Disk, volume: u64, m: u64, v: u64) {
    let blocks: Vec<u64> = (m * 256..(m + 1) * 256).collect();
    disk.write_block_parts_unsynced(volume, &blocks, &[vmib(m, v)])
        .await
        .unwrap_or_else(|e| panic!("unsynced write of MiB {m} at version {v}: {e}"));
}

/// Unsynced writes hold the durable blocks they replace until a synced round, so that a crash
/// can fall back to them. On a full disk those blocks must be won back, not the write refused.
async fn unsynced_overwrites_of_a_full_disk_get_space_back(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    // 8 MiB of data blocks.
    let disk = open(dir.path(), b, 8 * MIB + 4096);
    for m in 0..4 {
        disk.write_blocks(1, m * 256, vmib(m, 1)).await.unwrap();
    }
    // Overwritten unsynced, the durable copies stay allocated: the disk is full.
    for m in 0..4 {
        write_mib_unsynced(&disk, 1, m, 2).await;
    }
    assert_eq!(disk.usage().used_bytes, 8 * MIB);
    // A FLUSH makes the new copies durable but records that unsynced: the old ones are
    // released only by a later sync of the index. The next write needs them.
    disk.sync().await.unwrap();
    write_mib_unsynced(&disk, 1, 4, 2).await;
    assert_eq!(disk.usage().used_bytes, 5 * MIB);
    // Many passes of unsynced overwrites, far more than the disk holds, with and without
    // FLUSHes between them.
    for v in 3..12 {
        for m in 0..5 {
            write_mib_unsynced(&disk, 1, m, v).await;
        }
        if v % 3 == 0 {
            disk.sync().await.unwrap();
        }
    }
    let check = |disk: Arc<Disk>| async move {
        for m in 0..5 {
            let got = disk.read_blocks(1, m * 256, 256).await.unwrap();
            assert!(
                got.data[..] == vmib(m, 11)[..],
                "MiB {m} holds its last version"
            );
        }
    };
    check(disk.clone()).await;
    // Space that is really in use is still refused.
    disk.sync().await.unwrap();
    let big: Vec<u64> = (1024..1024 + 4 * 256).collect();
    let data: Vec<u8> = (0..4).flat_map(|m| vmib(m, 1)).collect();
    assert!(matches!(
        disk.write_block_parts_unsynced(2, &big, &[Bytes::from(data)])
            .await,
        Err(DiskError::Full { .. })
    ));
    drop(disk);
    let disk = open(dir.path(), b, 8 * MIB + 4096);
    check(disk.clone()).await;
    assert_eq!(disk.usage().used_bytes, 5 * MIB);
}

/// `len` bytes of `fill` starting on a 4 KiB boundary of a larger allocation.
fn aligned(fill: impl Fn(usize) -> u8, len: usize) -> Bytes {
    let v = Bytes::from((0..len + 4096).map(&fill).collect::<Vec<u8>>());
    let off = (4096 - v.as_ptr() as usize % 4096) % 4096;
    let b = v.slice(off..off + len);
    assert_eq!(b.as_ptr() as usize % 4096, 0);
    b
}

/// Parts that start on block boundaries are written from their own memory (io_uring), in
/// pieces where they are not adjacent; any other part makes the write copy them all. Either
/// way the blocks read back as written, also after reopening, and short of a full write
/// nothing lands.
async fn block_aligned_parts_are_written_in_place(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let disk = open(dir.path(), b, 64 * MIB);
    // One payload of 64 blocks, cut into slices that stay adjacent in memory.
    let payload = aligned(|i| (i / 4096 * 7 + i % 251) as u8, 64 * 4096);
    let contiguous: Vec<Bytes> = (0..8)
        .map(|i| payload.slice(i * 8 * 4096..(i + 1) * 8 * 4096))
        .collect();
    let blocks: Vec<u64> = (100..164).collect();
    disk.write_block_parts_unsynced(1, &blocks, &contiguous)
        .await
        .unwrap();
    // Aligned parts from separate allocations, written to scattered blocks.
    let separate: Vec<Bytes> = (0..5u8)
        .map(|i| aligned(move |j| i.wrapping_mul(31).wrapping_add(j as u8), 2 * 4096))
        .collect();
    let scattered: Vec<u64> = (0..10).map(|i| 1000 + 3 * i).collect();
    disk.write_block_parts(1, &scattered, &separate)
        .await
        .unwrap();
    // A part off the block grid: copied.
    let odd = {
        let v = Bytes::from(vec![0x5au8; 4 * 4096 + 1]);
        let off = if (v.as_ptr() as usize).is_multiple_of(4096) {
            1
        } else {
            0
        };
        v.slice(off..off + 4096)
    };
    disk.write_block_parts(1, &[2000, 2001], &[separate[0].slice(..4096), odd.clone()])
        .await
        .unwrap();
    let check = |disk: Arc<Disk>| {
        let payload = payload.clone();
        let separate = separate.clone();
        let odd = odd.clone();
        async move {
            let r = disk.read_blocks(1, 100, 64).await.unwrap();
            assert!(r.data[..] == payload[..], "the adjacent slices");
            for (i, part) in separate.iter().enumerate() {
                for k in 0..2 {
                    let block = 1000 + 3 * (2 * i as u64 + k);
                    let r = disk.read_blocks(1, block, 1).await.unwrap();
                    assert!(
                        r.data[..] == part[k as usize * 4096..(k as usize + 1) * 4096],
                        "block {block}"
                    );
                }
            }
            let r = disk.read_blocks(1, 2000, 2).await.unwrap();
            assert!(r.data[..4096] == separate[0][..4096] && r.data[4096..] == odd[..]);
        }
    };
    check(disk.clone()).await;
    disk.sync().await.unwrap();
    drop(disk);
    let disk = open(dir.path(), b, 64 * MIB);
    check(disk.clone()).await;
}

/// Blocks `first..first + n` as one buffer, each block distinct per `v`.
fn vblocks(first: u64, n: u64, v: u64) -> Bytes {
    Bytes::from(
        (first..first + n)
            .flat_map(|b| vblock(b, v))
            .collect::<Vec<u8>>(),
    )
}

/// A thread that runs one runtime after another (each with its own completion reaper) keeps
/// reading and writing: a thread's ring is tied to the runtime that collects its completions.
#[test]
fn one_thread_many_runtimes() {
    let dir = tempfile::tempdir().unwrap();
    let disk = open(dir.path(), Backend::Uring, 16 * MIB);
    for round in 0..4u64 {
        let rt = if round % 2 == 0 {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap()
        };
        rt.block_on(async {
            let io = async {
                disk.write_blocks(3, round * 8, vblocks(round * 8, 8, round))
                    .await
                    .unwrap();
                for r in 0..=round {
                    let got = disk.read_blocks(3, r * 8, 8).await.unwrap();
                    assert_eq!(
                        got.data,
                        vblocks(r * 8, 8, r),
                        "round {round}, blocks of {r}"
                    );
                }
            };
            tokio::time::timeout(std::time::Duration::from_secs(20), io)
                .await
                .expect("I/O stalled");
        });
    }
}

/// Reads and writes given up while in flight (their futures dropped) leave the disk
/// consistent and usable, from every runtime thread.
async fn abandoned_io_leaves_the_disk_usable(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let disk = open(dir.path(), b, 64 * MIB);
    disk.write_blocks(9, 0, vblocks(0, 256, 1)).await.unwrap();
    for round in 0..20u64 {
        let mut tasks = Vec::new();
        for i in 0..32u64 {
            let disk = disk.clone();
            tasks.push(tokio::spawn(async move {
                let first = (i * 7 + round * 13) % 248;
                if i % 4 == 0 {
                    disk.write_blocks(9, first, vblocks(first, 8, 1))
                        .await
                        .unwrap();
                } else {
                    let got = disk.read_blocks(9, first, 8).await.unwrap();
                    assert_eq!(got.data, vblocks(first, 8, 1));
                }
            }));
        }
        // Abandon every other one, wherever it is.
        tokio::task::yield_now().await;
        for (i, t) in tasks.iter().enumerate() {
            if i % 2 == 1 {
                t.abort();
            }
        }
        for t in tasks {
            match t.await {
                Ok(()) => {}
                Err(e) if e.is_cancelled() => {}
                Err(e) => panic!("I/O task failed: {e}"),
            }
        }
    }
    let got = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        disk.read_blocks(9, 0, 256),
    )
    .await
    .expect("I/O stalled")
    .unwrap();
    assert_eq!(got.data, vblocks(0, 256, 1));
}
