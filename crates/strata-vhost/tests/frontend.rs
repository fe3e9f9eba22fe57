//! The backend driven by an in-process vhost-user frontend (the `vhost`
//! crate's, as a stand-in for QEMU) and a minimal virtio driver that builds
//! split-ring descriptor chains in a file-backed "guest memory" shared with
//! the backend — no VM needed.

use std::path::Path;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use strata_nbd::{BlockSizes, BlockTarget, Extent, MemTarget, NbdResult};
use strata_vhost::VhostBlkOptions;
use tokio_util::sync::CancellationToken;
use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const MEM_SIZE: usize = 4 << 20;
const QSIZE: u16 = 16;
const DESC_TABLE: u64 = 0x1000;
const AVAIL_RING: u64 = 0x2000;
const USED_RING: u64 = 0x3000;
/// Buffers of request slot k start at DATA + k * SLOT: header, then the OUT
/// payload at +OUT_OFF, the IN buffer at +IN_OFF, the status in the last byte.
const DATA: u64 = 0x10000;
const SLOT: u64 = 0x60000;
const OUT_OFF: u64 = 0x1000;
const IN_OFF: u64 = 0x30000;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const T_DISCARD: u32 = 11;
const T_WRITE_ZEROES: u32 = 13;

const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

/// One descriptor the driver puts in a chain.
#[derive(Clone, Copy)]
struct Desc {
    addr: u64,
    len: u32,
    writable: bool,
}

/// A virtio driver for one split virtqueue in the shared memory.
struct Driver {
    mem: GuestMemoryMmap,
    hva_base: u64,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
    kick: EventFd,
    call: EventFd,
}

/// Outcome of one request as the driver sees it.
#[derive(Debug)]
struct Done {
    status: u8,
    used_len: u32,
    data: Vec<u8>,
}

impl Driver {
    fn new() -> Driver {
        let file = tempfile::tempfile().unwrap();
        file.set_len(MEM_SIZE as u64).unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges_with_files([(
            GuestAddress(0),
            MEM_SIZE,
            Some(FileOffset::new(file, 0)),
        )])
        .unwrap();
        let hva_base = mem.iter().next().unwrap().as_ptr() as u64;
        Driver {
            mem,
            hva_base,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
            kick: EventFd::new(EFD_NONBLOCK).unwrap(),
            call: EventFd::new(EFD_NONBLOCK).unwrap(),
        }
    }

    fn region(&self) -> VhostUserMemoryRegionInfo {
        VhostUserMemoryRegionInfo::from_guest_region(self.mem.iter().next().unwrap()).unwrap()
    }

    /// Negotiates like QEMU does and starts queue 0.
    fn connect(&mut self, socket: &Path) -> Frontend {
        let mut fe = connect_retry(socket);
        fe.set_owner().unwrap();
        let features = fe.get_features().unwrap();
        assert_ne!(features & (1 << 32), 0, "VIRTIO_F_VERSION_1");
        assert_ne!(features & (1 << 28), 0, "VIRTIO_RING_F_INDIRECT_DESC");
        // No EVENT_IDX: every completion signals the call eventfd.
        fe.set_features(features & !(1 << 29)).unwrap();
        let pf = fe.get_protocol_features().unwrap();
        assert!(pf.contains(VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ));
        fe.set_protocol_features(pf).unwrap();
        assert_eq!(fe.get_queue_num().unwrap(), 4);
        fe.set_mem_table(&[self.region()]).unwrap();
        fe.set_vring_num(0, QSIZE).unwrap();
        fe.set_vring_addr(
            0,
            &VringConfigData {
                queue_max_size: QSIZE,
                queue_size: QSIZE,
                flags: 0,
                desc_table_addr: self.hva_base + DESC_TABLE,
                used_ring_addr: self.hva_base + USED_RING,
                avail_ring_addr: self.hva_base + AVAIL_RING,
                log_addr: None,
            },
        )
        .unwrap();
        fe.set_vring_base(0, self.avail_idx).unwrap();
        fe.set_vring_call(0, &self.call).unwrap();
        fe.set_vring_kick(0, &self.kick).unwrap();
        fe.set_vring_enable(0, true).unwrap();
        fe
    }

    /// Writes a chain and makes it available (without kicking).
    fn push(&mut self, chain: &[Desc]) {
        let head = self.next_desc;
        for (i, d) in chain.iter().enumerate() {
            let idx = (head + i as u16) % QSIZE;
            let mut flags = if d.writable { F_WRITE } else { 0 };
            let next = (idx + 1) % QSIZE;
            if i + 1 < chain.len() {
                flags |= F_NEXT;
            }
            let at = GuestAddress(DESC_TABLE + 16 * u64::from(idx));
            let mut raw = [0u8; 16];
            raw[0..8].copy_from_slice(&d.addr.to_le_bytes());
            raw[8..12].copy_from_slice(&d.len.to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..16].copy_from_slice(&next.to_le_bytes());
            self.mem.write_slice(&raw, at).unwrap();
        }
        self.next_desc = (head + chain.len() as u16) % QSIZE;
        let slot = AVAIL_RING + 4 + 2 * u64::from(self.avail_idx % QSIZE);
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        fence(Ordering::SeqCst);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx, GuestAddress(AVAIL_RING + 2))
            .unwrap();
        fence(Ordering::SeqCst);
    }

    fn kick(&self) {
        self.kick.write(1).unwrap();
    }

    /// Waits for the next used-ring entry: (descriptor id, length).
    fn wait_used(&mut self) -> (u32, u32) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            fence(Ordering::SeqCst);
            let idx: u16 = self.mem.read_obj(GuestAddress(USED_RING + 2)).unwrap();
            if idx != self.used_seen {
                let at = USED_RING + 4 + 8 * u64::from(self.used_seen % QSIZE);
                let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
                let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
                self.used_seen = self.used_seen.wrapping_add(1);
                return (id, len);
            }
            assert!(Instant::now() < deadline, "no completion within 20 s");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The standard chain for slot `k`: header, OUT payload, IN buffer, status.
    fn request_chain(&self, k: u64, t: u32, sector: u64, out: &[u8], in_len: u32) -> Vec<Desc> {
        let base = DATA + k * SLOT;
        let mut hdr = [0u8; 16];
        hdr[0..4].copy_from_slice(&t.to_le_bytes());
        hdr[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&hdr, GuestAddress(base)).unwrap();
        self.mem
            .write_slice(&[0xff], GuestAddress(base + SLOT - 1))
            .unwrap();
        let mut chain = vec![Desc {
            addr: base,
            len: 16,
            writable: false,
        }];
        if !out.is_empty() {
            self.mem
                .write_slice(out, GuestAddress(base + OUT_OFF))
                .unwrap();
            chain.push(Desc {
                addr: base + OUT_OFF,
                len: out.len() as u32,
                writable: false,
            });
        }
        if in_len > 0 {
            chain.push(Desc {
                addr: base + IN_OFF,
                len: in_len,
                writable: true,
            });
        }
        chain.push(Desc {
            addr: base + SLOT - 1,
            len: 1,
            writable: true,
        });
        chain
    }

    fn result(&self, k: u64, used_len: u32, in_len: u32) -> Done {
        let base = DATA + k * SLOT;
        let mut data = vec![0u8; in_len as usize];
        self.mem
            .read_slice(&mut data, GuestAddress(base + IN_OFF))
            .unwrap();
        let status: u8 = self.mem.read_obj(GuestAddress(base + SLOT - 1)).unwrap();
        Done {
            status,
            used_len,
            data,
        }
    }

    /// Runs one request in slot 0 and waits for it.
    fn request(&mut self, t: u32, sector: u64, out: &[u8], in_len: u32) -> Done {
        let chain = self.request_chain(0, t, sector, out, in_len);
        self.push(&chain);
        self.kick();
        let (_, used_len) = self.wait_used();
        self.result(0, used_len, in_len)
    }
}

fn connect_retry(socket: &Path) -> Frontend {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Frontend::connect(socket, 4) {
            Ok(fe) => return fe,
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot connect: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn discard_seg(sector: u64, n: u32, flags: u32) -> Vec<u8> {
    let mut v = sector.to_le_bytes().to_vec();
    v.extend_from_slice(&n.to_le_bytes());
    v.extend_from_slice(&flags.to_le_bytes());
    v
}

/// A 16 MiB in-memory target that wants 4 KiB-aligned I/O, like a volume.
fn target() -> Arc<MemTarget> {
    Arc::new(MemTarget::new(16 << 20).with_block_sizes(BlockSizes {
        min: 4096,
        preferred: 4096,
        max: 64 << 10,
    }))
}

fn options(blk_size: Option<u32>) -> VhostBlkOptions {
    VhostBlkOptions {
        blk_size,
        num_queues: 4,
        serial: Some("frontend-test".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_through_a_vhost_user_connection() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("blk.sock");
    let target = target();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn({
        let (socket, target, shutdown) = (socket.clone(), target.clone(), shutdown.clone());
        async move { strata_vhost::serve_with_options(&socket, target, options(None), shutdown).await }
    });

    let target2 = target.clone();
    let socket2 = socket.clone();
    tokio::task::spawn_blocking(move || {
        let mut d = Driver::new();
        let mut fe = d.connect(&socket2);

        // Config space: 16 MiB = 32768 sectors, blk_size 4096.
        let (_, cfg) = fe
            .get_config(0, 60, VhostUserConfigFlags::WRITABLE, &[0u8; 60])
            .unwrap();
        assert_eq!(u64::from_le_bytes(cfg[0..8].try_into().unwrap()), 32768);
        assert_eq!(u32::from_le_bytes(cfg[20..24].try_into().unwrap()), 4096);

        // Write 8 KiB at sector 8, read it back, flush.
        let data = pattern(8192, 1);
        let w = d.request(T_OUT, 8, &data, 0);
        assert_eq!((w.status, w.used_len), (S_OK, 1));
        let r = d.request(T_IN, 8, &[], 8192);
        assert_eq!((r.status, r.used_len), (S_OK, 8193));
        assert!(r.data == data);
        assert_eq!(d.request(T_FLUSH, 0, &[], 0).status, S_OK);

        // A 128 KiB request is split into 64 KiB target calls.
        let big = pattern(128 << 10, 7);
        assert_eq!(d.request(T_OUT, 1024, &big, 0).status, S_OK);
        assert!(d.request(T_IN, 1024, &[], 128 << 10).data == big);

        // Sector-sized I/O on the 4 KiB target: read-modify-write.
        let small = pattern(512, 9);
        assert_eq!(d.request(T_OUT, 9, &small, 0).status, S_OK);
        let r = d.request(T_IN, 8, &[], 8192);
        let mut expect = data.clone();
        expect[512..1024].copy_from_slice(&small);
        assert!(r.data == expect);
        assert_eq!(d.request(T_IN, 9, &[], 512).data, small);

        // GET_ID.
        let id = d.request(T_GET_ID, 0, &[], 20);
        assert_eq!(id.status, S_OK);
        assert_eq!(&id.data[..13], b"frontend-test");

        // WRITE_ZEROES (unaligned, with unmap) and DISCARD.
        let wz = d.request(T_WRITE_ZEROES, 0, &discard_seg(9, 2, 1), 0);
        assert_eq!(wz.status, S_OK);
        let r = d.request(T_IN, 8, &[], 8192);
        expect[512..1536].fill(0);
        assert!(r.data == expect);
        assert_eq!(
            d.request(T_DISCARD, 0, &discard_seg(1024, 256, 0), 0)
                .status,
            S_OK
        );
        // Unmap flag on a discard: unsupported.
        assert_eq!(
            d.request(T_DISCARD, 0, &discard_seg(0, 8, 1), 0).status,
            S_UNSUPP
        );

        // Bad requests: past the end, not whole sectors, unknown type.
        assert_eq!(d.request(T_IN, 32768 - 4, &[], 4096).status, S_IOERR);
        assert_eq!(d.request(T_OUT, 32768, &data[..512], 0).status, S_IOERR);
        assert_eq!(d.request(T_IN, u64::MAX, &[], 512).status, S_IOERR);
        assert_eq!(d.request(T_OUT, 0, &data[..100], 0).status, S_IOERR);
        assert_eq!(d.request(99, 0, &[], 512).status, S_UNSUPP);

        // Malformed chains: a buffer outside guest memory, a short header,
        // no status byte (returned with length 0), readable after writable.
        let mut chain = d.request_chain(0, T_IN, 0, &[], 4096);
        chain[1].addr = 1 << 40;
        d.push(&chain);
        d.kick();
        let (_, len) = d.wait_used();
        assert_eq!(d.result(0, len, 0).status, S_IOERR);

        let mut chain = d.request_chain(0, T_IN, 0, &[], 512);
        chain[0].len = 8;
        d.push(&chain);
        d.kick();
        let (_, len) = d.wait_used();
        assert_eq!(d.result(0, len, 0).status, S_IOERR);

        let chain = vec![Desc {
            addr: DATA,
            len: 16,
            writable: false,
        }];
        d.push(&chain);
        d.kick();
        assert_eq!(d.wait_used().1, 0);

        let mut chain = d.request_chain(0, T_OUT, 0, &data[..512], 0);
        chain.swap(1, 2); // status (writable) before the payload (readable)
        d.push(&chain);
        d.kick();
        let (_, len) = d.wait_used();
        assert_eq!(len, 1);

        // Several requests in flight at once, completed in any order.
        for k in 0..4u64 {
            let chain = d.request_chain(k, T_OUT, 4096 + 64 * k, &pattern(4096, k as u8), 0);
            d.push(&chain);
        }
        d.kick();
        for _ in 0..4 {
            d.wait_used();
        }
        for k in 0..4u64 {
            assert_eq!(d.result(k, 1, 0).status, S_OK);
        }
        // The call eventfd was signalled.
        assert!(d.call.read().unwrap() > 0);

        // The target holds what the guest wrote.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let got = rt.block_on(target2.read(8 * 512, 4096)).unwrap();
        assert_eq!(&got[..512], &data[..512]);
        assert!(got[512..1536].iter().all(|&b| b == 0));
        let got = rt.block_on(target2.read((4096 + 192) * 512, 4096)).unwrap();
        assert_eq!(&got[..], &pattern(4096, 3)[..]);

        // Disconnect; a new frontend is accepted and sees the same data.
        drop(fe);
        let mut d = Driver::new();
        let _fe = d.connect(&socket2);
        assert!(d.request(T_IN, 8, &[], 512).data == data[..512]);
    })
    .await
    .unwrap();

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("serve returns after shutdown")
        .unwrap()
        .unwrap();
    assert!(!socket.exists(), "socket file removed on shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_socket_is_replaced_but_live_sockets_and_files_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("blk.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let shutdown = CancellationToken::new();
    let server = tokio::spawn({
        let (socket, shutdown) = (socket.clone(), shutdown.clone());
        async move {
            let target: Arc<dyn BlockTarget> = target();
            strata_vhost::serve(&socket, target, shutdown).await
        }
    });
    let s2 = socket.clone();
    tokio::task::spawn_blocking(move || {
        let fe = connect_retry(&s2);
        fe.set_owner().unwrap();
        assert_ne!(fe.get_features().unwrap(), 0);
    })
    .await
    .unwrap();
    shutdown.cancel();
    server.await.unwrap().unwrap();
    assert!(!socket.exists());

    // A socket someone listens on is left alone.
    let live = dir.path().join("live.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&live).unwrap();
    let err = strata_vhost::serve(&live, target(), CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    assert!(live.exists());

    let file = dir.path().join("regular");
    std::fs::write(&file, b"keep me").unwrap();
    let err = strata_vhost::serve(&file, target(), CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
}

/// A target whose writes take a while, to catch requests in flight.
struct SlowTarget(Arc<MemTarget>);

impl BlockTarget for SlowTarget {
    fn size_bytes(&self) -> u64 {
        self.0.size_bytes()
    }

    fn block_sizes(&self) -> BlockSizes {
        self.0.block_sizes()
    }

    fn read(&self, offset: u64, len: usize) -> BoxFuture<'_, NbdResult<bytes::Bytes>> {
        self.0.read(offset, len)
    }

    fn write(&self, offset: u64, data: bytes::Bytes, fua: bool) -> BoxFuture<'_, NbdResult<()>> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            self.0.write(offset, data, fua).await
        })
    }

    fn flush(&self) -> BoxFuture<'_, NbdResult<()>> {
        self.0.flush()
    }

    fn trim(&self, offset: u64, len: u64, fua: bool) -> BoxFuture<'_, NbdResult<()>> {
        self.0.trim(offset, len, fua)
    }

    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        fua: bool,
        no_hole: bool,
    ) -> BoxFuture<'_, NbdResult<()>> {
        self.0.write_zeroes(offset, len, fua, no_hole)
    }

    fn block_status(&self, offset: u64, len: u64) -> BoxFuture<'_, NbdResult<Vec<Extent>>> {
        self.0.block_status(offset, len)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_a_queue_waits_for_its_requests() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("blk.sock");
    let shutdown = CancellationToken::new();
    let server = tokio::spawn({
        let (socket, shutdown) = (socket.clone(), shutdown.clone());
        async move {
            let target: Arc<dyn BlockTarget> = Arc::new(SlowTarget(target()));
            strata_vhost::serve_with_options(&socket, target, options(None), shutdown).await
        }
    });
    let s2 = socket.clone();
    tokio::task::spawn_blocking(move || {
        let mut d = Driver::new();
        let fe = d.connect(&s2);
        for k in 0..3u64 {
            let chain = d.request_chain(k, T_OUT, 8 * k, &pattern(4096, k as u8), 0);
            d.push(&chain);
        }
        d.kick();
        // Give the worker time to pop the chains, then stop the queue as QEMU
        // does on reset: GET_VRING_BASE answers only once they completed.
        std::thread::sleep(Duration::from_millis(50));
        let started = Instant::now();
        assert_eq!(fe.get_vring_base(0).unwrap(), 3);
        assert!(started.elapsed() >= Duration::from_millis(200));
        let used: u16 = d.mem.read_obj(GuestAddress(USED_RING + 2)).unwrap();
        assert_eq!(used, 3, "all three requests completed before the reply");
        for k in 0..3u64 {
            assert_eq!(d.result(k, 1, 0).status, S_OK);
        }
    })
    .await
    .unwrap();
    shutdown.cancel();
    server.await.unwrap().unwrap();
}
