use super::*;
use strata_nbd::BlockSizes;

fn geo() -> Geometry {
    // 1 GiB, target wants 4 KiB alignment and at most 1 MiB per call.
    Geometry::new(
        1 << 30,
        BlockSizes {
            min: 4096,
            preferred: 4096,
            max: 1 << 20,
        },
        false,
        None,
        2,
    )
    .unwrap()
}

fn header(t: u32, sector: u64) -> Header {
    Header {
        request_type: t,
        ioprio: 0,
        sector,
    }
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

#[test]
fn header_parses_little_endian() {
    let mut raw = [0u8; 16];
    raw[0..4].copy_from_slice(&1u32.to_le_bytes());
    raw[4..8].copy_from_slice(&7u32.to_le_bytes());
    raw[8..16].copy_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());
    assert_eq!(
        Header::parse(&raw),
        Header {
            request_type: VIRTIO_BLK_T_OUT,
            ioprio: 7,
            sector: 0x0102_0304_0506_0708
        }
    );
}

#[test]
fn status_bytes_and_error_mapping() {
    assert_eq!(Status::Ok.byte(), 0);
    assert_eq!(Status::IoErr.byte(), 1);
    assert_eq!(Status::Unsupported.byte(), 2);
    assert_eq!(Status::from_error(&NbdError::io("x")), Status::IoErr);
    assert_eq!(
        Status::from_error(&NbdError::NoSpace("x".into())),
        Status::IoErr
    );
    assert_eq!(
        Status::from_error(&NbdError::PermissionDenied("x".into())),
        Status::IoErr
    );
    assert_eq!(
        Status::from_error(&NbdError::NotSupported("x".into())),
        Status::Unsupported
    );
}

#[test]
fn geometry_rounds_size_and_raises_block_size() {
    let g = Geometry::new(
        10_000,
        BlockSizes {
            min: 8192,
            preferred: 8192,
            max: 1 << 20,
        },
        true,
        None,
        1,
    )
    .unwrap();
    assert_eq!(g.blk_size, 8192);
    assert_eq!(g.size_bytes, 8192);
    assert_eq!(g.capacity_sectors(), 16);
    assert!(g.read_only);
    // An explicit smaller block size is kept; the size still rounds to the
    // target's alignment.
    let sizes = BlockSizes {
        min: 4096,
        preferred: 4096,
        max: 1 << 20,
    };
    let g = Geometry::new(10_000, sizes, false, Some(512), 1).unwrap();
    assert_eq!(
        (g.blk_size, g.target_align, g.size_bytes),
        (512, 4096, 8192)
    );
    let g = Geometry::new(10_000, BlockSizes::default(), false, None, 1).unwrap();
    assert_eq!((g.blk_size, g.target_align, g.size_bytes), (4096, 1, 8192));
    assert!(Geometry::new(1 << 20, BlockSizes::default(), false, Some(1000), 1).is_err());
    assert!(Geometry::new(1 << 20, BlockSizes::default(), false, Some(256), 1).is_err());
    assert!(Geometry::new(1 << 20, BlockSizes::default(), false, None, 0).is_err());
    assert!(Geometry::new(1 << 20, BlockSizes::default(), false, None, 33).is_err());
    let bad = BlockSizes {
        min: 3,
        preferred: 4096,
        max: 1 << 20,
    };
    assert!(Geometry::new(1 << 20, bad, false, None, 1).is_err());
}

#[test]
fn config_space_layout() {
    let g = geo();
    let c = g.config_space();
    assert_eq!(u64::from_le_bytes(c[0..8].try_into().unwrap()), 1 << 21);
    assert_eq!(le32(&c, 8), SIZE_MAX);
    assert_eq!(le32(&c, 12), SEG_MAX);
    assert_eq!(le32(&c, 20), 4096);
    assert_eq!(u16::from_le_bytes(c[34..36].try_into().unwrap()), 2);
    assert_eq!(le32(&c, 36), MAX_DISCARD_SECTORS);
    assert_eq!(le32(&c, 40), MAX_DISCARD_SEG);
    assert_eq!(le32(&c, 44), 8); // discard alignment in sectors
    assert_eq!(le32(&c, 48), MAX_DISCARD_SECTORS);
    assert_eq!(le32(&c, 52), MAX_DISCARD_SEG);
    assert_eq!(c[56], 1);

    // Partial and over-long reads.
    assert_eq!(g.config_read(20, 4), 4096u32.to_le_bytes());
    let tail = g.config_read(56, 40);
    assert_eq!(tail.len(), 40);
    assert_eq!(tail[0], 1);
    assert!(tail[4..].iter().all(|&b| b == 0));
    assert_eq!(g.config_read(200, 8), vec![0; 8]);
}

#[test]
fn layout_of_a_typical_linux_read() {
    let segs = [
        Segment::readable(0x1000, 16),
        Segment::writable(0x2000, 4096),
        Segment::writable(0x4000, 4096),
        Segment::writable(0x3000, 1),
    ];
    let l = parse_layout(&segs).unwrap();
    assert_eq!(l.header, vec![Segment::readable(0x1000, 16)]);
    assert!(l.out_data.is_empty());
    assert_eq!(
        l.in_data,
        vec![
            Segment::writable(0x2000, 4096),
            Segment::writable(0x4000, 4096)
        ]
    );
    assert_eq!(l.in_len(), 8192);
    assert_eq!(l.status_addr, 0x3000);
}

#[test]
fn layout_with_header_and_status_sharing_descriptors() {
    // One readable descriptor holding header + payload, one writable holding
    // data + status (any layout is allowed with VIRTIO_F_VERSION_1).
    let segs = [
        Segment::readable(0x1000, 8),
        Segment::readable(0x5000, 16 + 512),
        Segment::writable(0x9000, 3),
    ];
    let l = parse_layout(&segs).unwrap();
    assert_eq!(
        l.header,
        vec![Segment::readable(0x1000, 8), Segment::readable(0x5000, 8)]
    );
    assert_eq!(l.out_data, vec![Segment::readable(0x5008, 520)]);
    assert_eq!(l.in_data, vec![Segment::writable(0x9000, 2)]);
    assert_eq!(l.status_addr, 0x9002);
}

#[test]
fn malformed_chains_are_rejected() {
    assert_eq!(parse_layout(&[]), Err(ChainError::Empty));
    // No writable byte: nowhere to put the status.
    let no_status = [
        Segment::readable(0x1000, 16),
        Segment::readable(0x2000, 512),
    ];
    assert_eq!(parse_layout(&no_status), Err(ChainError::NoStatus));
    assert_eq!(status_addr(&no_status), None);
    // Zero-length writable descriptors do not count.
    let empty_w = [Segment::readable(0x1000, 16), Segment::writable(0x2000, 0)];
    assert_eq!(parse_layout(&empty_w), Err(ChainError::NoStatus));
    // Short header, but a status byte to report the error in.
    let short = [Segment::readable(0x1000, 15), Segment::writable(0x2000, 1)];
    assert_eq!(parse_layout(&short), Err(ChainError::ShortHeader(15)));
    assert_eq!(status_addr(&short), Some(0x2000));
    // Readable after writable.
    let mixed = [
        Segment::readable(0x1000, 16),
        Segment::writable(0x2000, 512),
        Segment::readable(0x3000, 512),
        Segment::writable(0x4000, 1),
    ];
    assert_eq!(parse_layout(&mixed), Err(ChainError::ReadableAfterWritable));
    assert_eq!(status_addr(&mixed), Some(0x4000));
    // Address wrap-around.
    let wrap = [
        Segment::readable(u64::MAX - 4, 16),
        Segment::writable(0x2000, 1),
    ];
    assert_eq!(parse_layout(&wrap), Err(ChainError::AddressOverflow));
    // Too many descriptors.
    let long: Vec<Segment> = (0..=MAX_CHAIN_DESCRIPTORS as u64)
        .map(|i| Segment::writable(i * 0x1000, 1))
        .collect();
    assert_eq!(
        parse_layout(&long),
        Err(ChainError::TooLong(MAX_CHAIN_DESCRIPTORS + 1))
    );
}

#[test]
fn sub_range_clips_and_splits() {
    let segs = [Segment::readable(100, 10), Segment::readable(500, 10)];
    assert_eq!(
        sub_range(&segs, 5, 10),
        vec![Segment::readable(105, 5), Segment::readable(500, 5)]
    );
    assert_eq!(sub_range(&segs, 10, 100), vec![Segment::readable(500, 10)]);
    assert!(sub_range(&segs, 20, 5).is_empty());
    assert!(sub_range(&segs, 0, 0).is_empty());
}

#[test]
fn read_and_write_bounds() {
    let g = geo();
    let last = g.capacity_sectors() - 8;
    assert_eq!(
        plan(&g, &header(VIRTIO_BLK_T_IN, last), 0, 4096, None),
        Ok(Request::Read {
            offset: last * 512,
            len: 4096
        })
    );
    // One sector past the end.
    let r = plan(&g, &header(VIRTIO_BLK_T_IN, last + 1), 0, 4096, None).unwrap_err();
    assert_eq!(r.status, Status::IoErr);
    let r = plan(&g, &header(VIRTIO_BLK_T_OUT, last + 1), 4096, 0, None).unwrap_err();
    assert_eq!(r.status, Status::IoErr);
    // Sector numbers whose byte offset overflows.
    let r = plan(&g, &header(VIRTIO_BLK_T_IN, u64::MAX / 256), 0, 512, None).unwrap_err();
    assert_eq!(r.status, Status::IoErr);
    let r = plan(&g, &header(VIRTIO_BLK_T_IN, u64::MAX), 0, 512, None).unwrap_err();
    assert_eq!(r.status, Status::IoErr);
    // Not a whole number of sectors.
    let r = plan(&g, &header(VIRTIO_BLK_T_OUT, 0), 100, 0, None).unwrap_err();
    assert_eq!(r.status, Status::IoErr);
    // Larger than size_max * seg_max.
    let big = g.max_request_bytes + 512;
    let r = plan(&g, &header(VIRTIO_BLK_T_IN, 0), 0, big, None).unwrap_err();
    assert_eq!(r.status, Status::IoErr);
    // Unaligned (sector-sized) I/O is accepted; the backend does the RMW.
    assert_eq!(
        plan(&g, &header(VIRTIO_BLK_T_OUT, 1), 512, 0, None),
        Ok(Request::Write {
            offset: 512,
            len: 512
        })
    );
}

#[test]
fn read_only_refuses_writes() {
    let mut g = geo();
    g.read_only = true;
    let r = plan(&g, &header(VIRTIO_BLK_T_OUT, 0), 4096, 0, None).unwrap_err();
    assert_eq!(r.status, Status::IoErr);
    let seg = discard_seg(0, 8, 0);
    let r = plan(&g, &header(VIRTIO_BLK_T_DISCARD, 0), 16, 0, Some(&seg)).unwrap_err();
    assert_eq!(r.status, Status::IoErr);
    assert!(plan(&g, &header(VIRTIO_BLK_T_IN, 0), 0, 4096, None).is_ok());
    assert_eq!(
        plan(&g, &header(VIRTIO_BLK_T_FLUSH, 0), 0, 0, None),
        Ok(Request::Flush)
    );
}

#[test]
fn unknown_types_are_unsupported() {
    let g = geo();
    for t in [2, 3, 10, 14, 15, 16, 24, 0xffff_ffff] {
        let r = plan(&g, &header(t, 0), 0, 512, None).unwrap_err();
        assert_eq!(r.status, Status::Unsupported, "type {t}");
    }
    assert_eq!(
        plan(&g, &header(VIRTIO_BLK_T_GET_ID, 0), 0, 20, None),
        Ok(Request::GetId)
    );
}

fn discard_seg(sector: u64, n: u32, flags: u32) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&sector.to_le_bytes());
    v.extend_from_slice(&n.to_le_bytes());
    v.extend_from_slice(&flags.to_le_bytes());
    v
}

#[test]
fn discard_and_write_zeroes_segments() {
    let g = geo();
    let mut two = discard_seg(8, 16, 0);
    two.extend(discard_seg(1000, 8, 0));
    assert_eq!(
        plan(&g, &header(VIRTIO_BLK_T_DISCARD, 0), 32, 0, Some(&two)),
        Ok(Request::Discard(vec![
            ZeroRange {
                offset: 4096,
                len: 8192,
                unmap: false
            },
            ZeroRange {
                offset: 512_000,
                len: 4096,
                unmap: false
            },
        ]))
    );
    let wz = discard_seg(0, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
    assert_eq!(
        plan(&g, &header(VIRTIO_BLK_T_WRITE_ZEROES, 0), 16, 0, Some(&wz)),
        Ok(Request::WriteZeroes(vec![ZeroRange {
            offset: 0,
            len: 4096,
            unmap: true
        }]))
    );
    // Unmap on a discard, and unknown flags: unsupported.
    let r = plan(&g, &header(VIRTIO_BLK_T_DISCARD, 0), 16, 0, Some(&wz)).unwrap_err();
    assert_eq!(r.status, Status::Unsupported);
    let odd = discard_seg(0, 8, 2);
    let r = plan(&g, &header(VIRTIO_BLK_T_WRITE_ZEROES, 0), 16, 0, Some(&odd)).unwrap_err();
    assert_eq!(r.status, Status::Unsupported);
    // Payload not a multiple of 16, empty, too many segments, not read.
    let r = plan(&g, &header(VIRTIO_BLK_T_DISCARD, 0), 15, 0, Some(&wz[..15])).unwrap_err();
    assert_eq!(r.status, Status::IoErr);
    let r = plan(&g, &header(VIRTIO_BLK_T_DISCARD, 0), 0, 0, Some(&[])).unwrap_err();
    assert_eq!(r.status, Status::IoErr);
    let many = 16 * u64::from(MAX_DISCARD_SEG + 1);
    let r = plan(&g, &header(VIRTIO_BLK_T_DISCARD, 0), many, 0, None).unwrap_err();
    assert_eq!(r.status, Status::IoErr);
    let r = plan(&g, &header(VIRTIO_BLK_T_DISCARD, 0), 16, 0, None).unwrap_err();
    assert_eq!(r.status, Status::IoErr);
    // Beyond the capacity, and more sectors than max_discard_sectors.
    let past = discard_seg(g.capacity_sectors() - 8, 16, 0);
    let r = plan(&g, &header(VIRTIO_BLK_T_DISCARD, 0), 16, 0, Some(&past)).unwrap_err();
    assert_eq!(r.status, Status::IoErr);
    let huge = discard_seg(0, MAX_DISCARD_SECTORS + 8, 0);
    let r = plan(
        &g,
        &header(VIRTIO_BLK_T_WRITE_ZEROES, 0),
        16,
        0,
        Some(&huge),
    )
    .unwrap_err();
    assert_eq!(r.status, Status::IoErr);
}

#[test]
fn device_id_is_padded_or_cut() {
    let id = device_id("vol-1");
    assert_eq!(&id[..5], b"vol-1");
    assert!(id[5..].iter().all(|&b| b == 0));
    let id = device_id("a-very-long-volume-name-indeed");
    assert_eq!(&id, b"a-very-long-volume-n");
}

#[test]
fn alignment_helpers() {
    assert_eq!(align_out(4096, 4096, 4096), (4096, 4096));
    assert_eq!(align_out(512, 512, 4096), (0, 4096));
    assert_eq!(align_out(3584, 1024, 4096), (0, 8192));
    assert_eq!(align_in(512, 8192, 4096), Some((4096, 4096)));
    assert_eq!(align_in(512, 1024, 4096), None);
    assert_eq!(align_in(0, 4096, 4096), Some((0, 4096)));
    assert_eq!(
        chunks(0, 10 << 20, 4 << 20, 4096),
        vec![(0, 4 << 20), (4 << 20, 4 << 20), (8 << 20, 2 << 20)]
    );
    // A maximum that is not a multiple of the alignment is rounded down.
    assert_eq!(
        chunks(0, 12288, 5000, 4096),
        vec![(0, 4096), (4096, 4096), (8192, 4096)]
    );
    assert!(chunks(0, 0, 4096, 4096).is_empty());
}
