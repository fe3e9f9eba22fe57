//! Volume blocks: partial writes, holes, trims, reopen and corruption, on both I/O backends.

use bytes::Bytes;
use rand::{RngCore, SeedableRng};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;
use strata_disk::{Disk, DiskConfig, DiskError, BLOCK_BYTES};
use strata_types::ChunkId;

const MIB: u64 = 1 << 20;

fn open(dir: &Path, syscall: bool) -> Arc<Disk> {
    Disk::open(DiskConfig {
        dir: dir.to_path_buf(),
        device: None,
        capacity_bytes: 64 * MIB,
        force_syscall_io: syscall,
        read_cache_bytes: strata_disk::READ_CACHE_BYTES_DEFAULT,
        straighten_idle_ms: 0,
    })
    .expect("open")
}

fn pattern(seed: u64, blocks: usize) -> Vec<u8> {
    let mut v = vec![0u8; blocks * BLOCK_BYTES];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

fn for_both(body: impl Fn(&Path, bool)) {
    for syscall in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        body(dir.path(), syscall);
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn a_small_write_inside_a_large_one_changes_only_its_block() {
    for_both(|dir, syscall| {
        rt().block_on(async {
            let d = open(dir, syscall);
            let big = pattern(1, 256);
            d.write_blocks(7, 100, Bytes::from(big.clone()))
                .await
                .expect("1 MiB write");
            let used_before = d.usage().used_bytes;
            let small = pattern(2, 1);
            d.write_blocks(7, 200, Bytes::from(small.clone()))
                .await
                .expect("4 KiB write");
            // The overwritten block went back to the allocator: usage is unchanged.
            assert_eq!(d.usage().used_bytes, used_before);
            let read = d.read_blocks(7, 100, 256).await.expect("read");
            let mut want = big.clone();
            want[100 * BLOCK_BYTES..101 * BLOCK_BYTES].copy_from_slice(&small);
            assert_eq!(read.data.as_ref(), want.as_slice());
            assert!(read.present.iter().all(|p| *p));
        })
    });
}

#[test]
fn a_large_write_over_scattered_blocks_frees_each_of_them() {
    for_both(|dir, syscall| {
        rt().block_on(async {
            let d = open(dir, syscall);
            // Neighbouring volumes' blocks sort next to volume 7's in the index.
            d.write_blocks(6, 400, Bytes::from(pattern(9, 2)))
                .await
                .expect("volume 6");
            d.write_blocks(8, 0, Bytes::from(pattern(10, 2)))
                .await
                .expect("volume 8");
            for (i, b) in [100u64, 101, 150, 200, 201, 202, 203, 300]
                .iter()
                .enumerate()
            {
                d.write_blocks(7, *b, Bytes::from(pattern(20 + i as u64, 1)))
                    .await
                    .expect("scattered write");
            }
            let used_before = d.usage().used_bytes;
            let big = pattern(3, 200);
            d.write_blocks(7, 100, Bytes::from(big.clone()))
                .await
                .expect("large write");
            // 7 scattered blocks replaced and freed, 193 new ones; block 300 stays.
            assert_eq!(d.usage().used_bytes, used_before + 193 * BLOCK_BYTES as u64);
            let read = d.read_blocks(7, 100, 200).await.expect("read");
            assert_eq!(read.data.as_ref(), big.as_slice());
            let read = d.read_blocks(7, 300, 1).await.expect("read 300");
            assert_eq!(read.data.as_ref(), pattern(27, 1).as_slice());
            assert_eq!(
                d.read_blocks(6, 400, 2)
                    .await
                    .expect("read 6")
                    .data
                    .as_ref(),
                pattern(9, 2).as_slice()
            );
            assert_eq!(
                d.read_blocks(8, 0, 2).await.expect("read 8").data.as_ref(),
                pattern(10, 2).as_slice()
            );
        })
    });
}

#[test]
fn unwritten_blocks_are_zero_holes_and_take_no_space() {
    for_both(|dir, syscall| {
        rt().block_on(async {
            let d = open(dir, syscall);
            let used0 = d.usage().used_bytes;
            d.write_blocks(1, 10, Bytes::from(pattern(3, 2)))
                .await
                .expect("write");
            assert_eq!(d.usage().used_bytes - used0, 2 * BLOCK_BYTES as u64);
            let read = d.read_blocks(1, 8, 6).await.expect("read");
            assert_eq!(read.present, [false, false, true, true, false, false]);
            assert!(read.data[..2 * BLOCK_BYTES].iter().all(|b| *b == 0));
            assert!(read.data[4 * BLOCK_BYTES..].iter().all(|b| *b == 0));
            assert_eq!(d.block_map(1, 9, 3).expect("map"), [false, true, true]);
            // Another volume's blocks are separate.
            assert_eq!(d.block_map(2, 10, 2).expect("map"), [false, false]);
        })
    });
}

#[test]
fn trim_makes_holes_and_frees_space() {
    for_both(|dir, syscall| {
        rt().block_on(async {
            let d = open(dir, syscall);
            let used0 = d.usage().used_bytes;
            d.write_blocks(3, 0, Bytes::from(pattern(4, 64)))
                .await
                .expect("write");
            d.trim_blocks(3, 16, 32).await.expect("trim");
            assert_eq!(d.usage().used_bytes - used0, 32 * BLOCK_BYTES as u64);
            let map = d.block_map(3, 0, 64).expect("map");
            assert!(map[..16].iter().all(|p| *p));
            assert!(map[16..48].iter().all(|p| !*p));
            assert!(map[48..].iter().all(|p| *p));
            d.trim_blocks(3, 0, u64::MAX / 2)
                .await
                .expect("trim everything");
            assert_eq!(d.usage().used_bytes, used0);
        })
    });
}

#[test]
fn blocks_survive_reopen_and_are_not_handed_out_again() {
    for_both(|dir, syscall| {
        let data = pattern(5, 300);
        rt().block_on(async {
            let d = open(dir, syscall);
            d.write_blocks(9, 1000, Bytes::from(data.clone()))
                .await
                .expect("write");
        });
        rt().block_on(async {
            let d = open(dir, syscall);
            // Fill fresh space with chunks: none may land on the volume's blocks.
            for i in 0..8u64 {
                let mut id = [0u8; 32];
                id[..8].copy_from_slice(&i.to_be_bytes());
                d.put_chunk(ChunkId(id), Bytes::from(pattern(100 + i, 64)))
                    .await
                    .expect("chunk");
            }
            let read = d.read_blocks(9, 1000, 300).await.expect("read");
            assert_eq!(read.data.as_ref(), data.as_slice());
        });
    });
}

#[test]
fn a_flipped_byte_is_reported_as_corruption() {
    for_both(|dir, syscall| {
        rt().block_on(async {
            let d = open(dir, syscall);
            d.write_blocks(4, 50, Bytes::from(pattern(6, 4)))
                .await
                .expect("write");
            let at = d.block_location(4, 52).expect("lookup").expect("present");
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(d.data_path())
                .expect("data file");
            let mut b = [0u8; 1];
            f.seek(SeekFrom::Start(at + 17)).expect("seek");
            f.read_exact(&mut b).expect("read");
            f.seek(SeekFrom::Start(at + 17)).expect("seek");
            f.write_all(&[b[0] ^ 0x40]).expect("write");
            f.sync_all().expect("sync");
            match d.read_blocks(4, 50, 4).await {
                Err(DiskError::CorruptBlock {
                    volume: 4,
                    block: 52,
                    ..
                }) => {}
                other => panic!("expected corruption of block 52, got {other:?}"),
            }
            // The blocks around it still read.
            assert!(d.read_blocks(4, 50, 2).await.is_ok());
        })
    });
}

#[test]
fn malformed_requests_are_refused() {
    rt().block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = open(dir.path(), false);
        let odd = d.write_blocks(1, 0, Bytes::from(vec![1u8; 4095])).await;
        assert!(matches!(odd, Err(DiskError::BadBlockRange(_))));
        let empty = d.write_blocks(1, 0, Bytes::new()).await;
        assert!(matches!(empty, Err(DiskError::BadBlockRange(_))));
        let wrap = d
            .write_blocks(1, u64::MAX, Bytes::from(vec![0u8; 4096]))
            .await;
        assert!(matches!(wrap, Err(DiskError::BadBlockRange(_))));
        assert!(matches!(
            d.read_blocks(1, 0, 0).await,
            Err(DiskError::BadBlockRange(_))
        ));
        assert!(matches!(
            d.read_blocks(1, 0, 1 << 20).await,
            Err(DiskError::BadBlockRange(_))
        ));
    });
}

#[test]
fn scattered_blocks_land_in_one_extent_and_survive_reopen() {
    for_both(|dir, syscall| {
        let data = pattern(11, 4);
        let blocks = [3u64, 7, 8, 1000];
        rt().block_on(async {
            let d = open(dir, syscall);
            d.write_block_list(2, &blocks, Bytes::from(data.clone()))
                .await
                .expect("scattered write");
            // One I/O: the blocks sit side by side in the data area.
            let at: Vec<u64> = blocks
                .iter()
                .map(|&b| d.block_location(2, b).unwrap().expect("written"))
                .collect();
            assert!(at.windows(2).all(|w| w[1] == w[0] + BLOCK_BYTES as u64));
            // Malformed lists are refused.
            for bad in [&[5u64, 5][..], &[6, 5], &[1]] {
                let r = d.write_block_list(2, bad, Bytes::from(pattern(1, 2))).await;
                assert!(matches!(r, Err(DiskError::BadBlockRange(_))), "{bad:?}");
            }
            // The same data in parts lands the same; parts must be whole blocks.
            let parts = [
                Bytes::from(data[..BLOCK_BYTES].to_vec()),
                Bytes::from(data[BLOCK_BYTES..3 * BLOCK_BYTES].to_vec()),
                Bytes::from(data[3 * BLOCK_BYTES..].to_vec()),
            ];
            let moved = [13u64, 17, 18, 1010];
            d.write_block_parts(2, &moved, &parts)
                .await
                .expect("write in parts");
            let read = d.read_blocks(2, 0, 1011).await.expect("read");
            for (i, &b) in moved.iter().enumerate() {
                let want = &data[i * BLOCK_BYTES..(i + 1) * BLOCK_BYTES];
                assert_eq!(&read.data[b as usize * BLOCK_BYTES..][..BLOCK_BYTES], want);
            }
            d.trim_blocks(2, 13, 6).await.expect("trim them again");
            d.trim_blocks(2, 1010, 1).await.expect("trim them again");
            let torn = [
                Bytes::from(vec![1u8; 100]),
                Bytes::from(vec![1u8; 2 * BLOCK_BYTES - 100]),
            ];
            let r = d.write_block_parts(2, &[40, 41], &torn).await;
            assert!(matches!(r, Err(DiskError::BadBlockRange(_))));
            let r = d.write_block_parts(2, &[40], &[]).await;
            assert!(matches!(r, Err(DiskError::BadBlockRange(_))));
        });
        rt().block_on(async {
            let d = open(dir, syscall);
            let read = d.read_blocks(2, 0, 1001).await.expect("read");
            for (i, &b) in blocks.iter().enumerate() {
                let want = &data[i * BLOCK_BYTES..(i + 1) * BLOCK_BYTES];
                assert_eq!(&read.data[b as usize * BLOCK_BYTES..][..BLOCK_BYTES], want);
            }
            let present: Vec<u64> = (0..1001u64).filter(|&b| read.present[b as usize]).collect();
            assert_eq!(present, blocks);
        });
    });
}
