//! Protocol tests driving the server over an in-memory duplex pipe.

use super::*;
use crate::MemTarget;
use futures::future::BoxFuture;
use tokio::io::DuplexStream;
use tokio::task::JoinHandle;

const SIZE: u64 = 1 << 20;

struct Client<S = DuplexStream> {
    s: S,
}

fn start(exports: Exports) -> (Client, JoinHandle<Result<(), ConnError>>) {
    start_with(Server::new(exports))
}

fn start_with(server: Server) -> (Client, JoinHandle<Result<(), ConnError>>) {
    let (c, s) = tokio::io::duplex(1 << 20);
    let h = tokio::spawn(async move { server.serve_connection(s).await });
    (Client { s: c }, h)
}

fn mem_exports() -> Exports {
    let e = Exports::new();
    e.add(
        "disk",
        Arc::new(MemTarget::new(SIZE).with_description("test disk")),
    )
    .unwrap();
    e.add("ro", Arc::new(MemTarget::new(SIZE).with_read_only(true)))
        .unwrap();
    e
}

struct OptReply {
    opt: u32,
    typ: u32,
    data: Vec<u8>,
}

struct Chunk {
    flags: u16,
    typ: u16,
    cookie: u64,
    payload: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    async fn greet(&mut self, client_flags: u32) {
        assert_eq!(self.s.read_u64().await.unwrap(), NBD_MAGIC);
        assert_eq!(self.s.read_u64().await.unwrap(), IHAVEOPT);
        assert_eq!(
            self.s.read_u16().await.unwrap(),
            FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES
        );
        self.s.write_u32(client_flags).await.unwrap();
    }

    async fn send_opt(&mut self, opt: u32, data: &[u8]) {
        let mut b = BytesMut::new();
        b.put_u64(IHAVEOPT);
        b.put_u32(opt);
        b.put_u32(data.len() as u32);
        b.put_slice(data);
        self.s.write_all(&b).await.unwrap();
    }

    async fn opt_reply(&mut self) -> OptReply {
        assert_eq!(self.s.read_u64().await.unwrap(), OPT_REPLY_MAGIC);
        let opt = self.s.read_u32().await.unwrap();
        let typ = self.s.read_u32().await.unwrap();
        let len = self.s.read_u32().await.unwrap();
        let mut data = vec![0; len as usize];
        self.s.read_exact(&mut data).await.unwrap();
        OptReply { opt, typ, data }
    }

    /// Sends an option and collects replies up to the final one.
    async fn opt(&mut self, opt: u32, data: &[u8]) -> Vec<OptReply> {
        self.send_opt(opt, data).await;
        let mut out = Vec::new();
        loop {
            let r = self.opt_reply().await;
            assert_eq!(r.opt, opt);
            let fin = r.typ == REP_ACK || r.typ & (1 << 31) != 0;
            out.push(r);
            if fin {
                return out;
            }
        }
    }

    async fn structured(&mut self) {
        let r = self.opt(OPT_STRUCTURED_REPLY, &[]).await;
        assert_eq!(r.last().unwrap().typ, REP_ACK);
    }

    async fn set_meta(&mut self, export: &str, queries: &[&str]) -> Vec<OptReply> {
        self.opt(OPT_SET_META_CONTEXT, &meta_data(export, queries))
            .await
    }

    /// NBD_OPT_GO; returns (size, transmission flags, all replies).
    async fn go(&mut self, name: &str, infos: &[u16]) -> (u64, u16, Vec<OptReply>) {
        let replies = self.opt(OPT_GO, &info_data(name, infos)).await;
        assert_eq!(replies.last().unwrap().typ, REP_ACK, "GO failed");
        let exp = replies
            .iter()
            .find(|r| r.typ == REP_INFO && r.data[..2] == INFO_EXPORT.to_be_bytes())
            .expect("NBD_INFO_EXPORT");
        assert_eq!(exp.data.len(), 12);
        let size = u64::from_be_bytes(exp.data[2..10].try_into().unwrap());
        let flags = u16::from_be_bytes(exp.data[10..12].try_into().unwrap());
        (size, flags, replies)
    }

    async fn request(&mut self, flags: u16, typ: u16, cookie: u64, offset: u64, len: u32) {
        let mut b = BytesMut::new();
        b.put_u32(REQUEST_MAGIC);
        b.put_u16(flags);
        b.put_u16(typ);
        b.put_u64(cookie);
        b.put_u64(offset);
        b.put_u32(len);
        self.s.write_all(&b).await.unwrap();
    }

    async fn write(&mut self, cookie: u64, offset: u64, data: &[u8]) {
        self.request(0, CMD_WRITE, cookie, offset, data.len() as u32)
            .await;
        self.s.write_all(data).await.unwrap();
    }

    /// Simple reply header: (errno, cookie).
    async fn simple(&mut self) -> (u32, u64) {
        assert_eq!(self.s.read_u32().await.unwrap(), SIMPLE_REPLY_MAGIC);
        let errno = self.s.read_u32().await.unwrap();
        let cookie = self.s.read_u64().await.unwrap();
        (errno, cookie)
    }

    /// A read answered with a simple reply that must succeed: its data.
    async fn read_ok(&mut self, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
        self.request(0, CMD_READ, cookie, offset, len).await;
        assert_eq!(self.simple().await, (0, cookie));
        let mut d = vec![0u8; len as usize];
        self.s.read_exact(&mut d).await.unwrap();
        d
    }

    async fn chunk(&mut self) -> Chunk {
        assert_eq!(self.s.read_u32().await.unwrap(), STRUCTURED_REPLY_MAGIC);
        let flags = self.s.read_u16().await.unwrap();
        let typ = self.s.read_u16().await.unwrap();
        let cookie = self.s.read_u64().await.unwrap();
        let len = self.s.read_u32().await.unwrap();
        let mut payload = vec![0; len as usize];
        self.s.read_exact(&mut payload).await.unwrap();
        Chunk {
            flags,
            typ,
            cookie,
            payload,
        }
    }

    /// Reads one reply (simple or structured, up to DONE): (errno, data).
    /// Structured read content is reassembled relative to `offset`.
    async fn any_reply(&mut self, cookie: u64, offset: u64, len: usize) -> (u32, Vec<u8>) {
        let magic = self.s.read_u32().await.unwrap();
        if magic == SIMPLE_REPLY_MAGIC {
            let errno = self.s.read_u32().await.unwrap();
            assert_eq!(self.s.read_u64().await.unwrap(), cookie);
            return (errno, Vec::new());
        }
        assert_eq!(magic, STRUCTURED_REPLY_MAGIC);
        let mut buf = vec![0xEEu8; len];
        let mut errno = 0;
        let mut first = true;
        loop {
            let c = if first {
                first = false;
                let flags = self.s.read_u16().await.unwrap();
                let typ = self.s.read_u16().await.unwrap();
                let ck = self.s.read_u64().await.unwrap();
                let l = self.s.read_u32().await.unwrap();
                let mut payload = vec![0; l as usize];
                self.s.read_exact(&mut payload).await.unwrap();
                Chunk {
                    flags,
                    typ,
                    cookie: ck,
                    payload,
                }
            } else {
                self.chunk().await
            };
            assert_eq!(c.cookie, cookie);
            match c.typ {
                REPLY_TYPE_OFFSET_DATA => {
                    let at = u64::from_be_bytes(c.payload[..8].try_into().unwrap());
                    let rel = (at - offset) as usize;
                    buf[rel..rel + c.payload.len() - 8].copy_from_slice(&c.payload[8..]);
                }
                REPLY_TYPE_OFFSET_HOLE => {
                    let at = u64::from_be_bytes(c.payload[..8].try_into().unwrap());
                    let n = u32::from_be_bytes(c.payload[8..12].try_into().unwrap());
                    let rel = (at - offset) as usize;
                    buf[rel..rel + n as usize].fill(0);
                }
                REPLY_TYPE_ERROR => {
                    errno = u32::from_be_bytes(c.payload[..4].try_into().unwrap());
                    let mlen = u16::from_be_bytes(c.payload[4..6].try_into().unwrap());
                    assert_eq!(c.payload.len(), 6 + mlen as usize);
                }
                REPLY_TYPE_NONE => assert!(c.payload.is_empty()),
                t => panic!("unexpected chunk type {t}"),
            }
            if c.flags & REPLY_FLAG_DONE != 0 {
                return (errno, buf);
            }
        }
    }

    async fn expect_closed(&mut self) {
        let mut b = [0u8; 1];
        let n = self.s.read(&mut b).await.unwrap_or(0);
        assert_eq!(n, 0, "connection should be closed");
    }
}

fn info_data(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u32(name.len() as u32);
    b.put_slice(name.as_bytes());
    b.put_u16(infos.len() as u16);
    for i in infos {
        b.put_u16(*i);
    }
    b.to_vec()
}

fn meta_data(export: &str, queries: &[&str]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u32(export.len() as u32);
    b.put_slice(export.as_bytes());
    b.put_u32(queries.len() as u32);
    for q in queries {
        b.put_u32(q.len() as u32);
        b.put_slice(q.as_bytes());
    }
    b.to_vec()
}

const CFLAGS: u32 = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES;

#[tokio::test]
async fn go_simple_read_write_disc() {
    let (mut c, h) = start(mem_exports());
    c.greet(CFLAGS).await;
    let (size, flags, replies) = c
        .go("disk", &[INFO_BLOCK_SIZE, INFO_NAME, INFO_DESCRIPTION])
        .await;
    assert_eq!(size, SIZE);
    for f in [
        FLAG_HAS_FLAGS,
        FLAG_SEND_FLUSH,
        FLAG_SEND_FUA,
        FLAG_SEND_TRIM,
        FLAG_SEND_WRITE_ZEROES,
        FLAG_CAN_MULTI_CONN,
    ] {
        assert_ne!(flags & f, 0, "flag {f:#x} missing");
    }
    assert_eq!(flags & (FLAG_READ_ONLY | FLAG_SEND_DF), 0);
    let info = |t: u16| {
        replies
            .iter()
            .find(|r| r.typ == REP_INFO && r.data[..2] == t.to_be_bytes())
            .map(|r| r.data[2..].to_vec())
    };
    let bs = info(INFO_BLOCK_SIZE).unwrap();
    assert_eq!(bs.len(), 12);
    assert_eq!(&bs[0..4], &1u32.to_be_bytes());
    assert_eq!(&bs[4..8], &4096u32.to_be_bytes());
    assert_eq!(&bs[8..12], &(32u32 << 20).to_be_bytes());
    assert_eq!(info(INFO_NAME).unwrap(), b"disk");
    assert_eq!(info(INFO_DESCRIPTION).unwrap(), b"test disk");

    // Unaligned write across a page boundary, then read it back.
    let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + 3) as u8).collect();
    c.write(1, 4000, &data).await;
    assert_eq!(c.simple().await, (0, 1));
    let got = c.read_ok(2, 3990, 10_020).await;
    assert_eq!(&got[..10], &[0u8; 10]);
    assert_eq!(&got[10..10_010], &data[..]);
    assert_eq!(&got[10_010..], &[0u8; 10]);

    c.request(0, CMD_FLUSH, 3, 0, 0).await;
    assert_eq!(c.simple().await, (0, 3));
    c.request(CMD_FLAG_FUA, CMD_WRITE_ZEROES, 4, 4000, 100)
        .await;
    assert_eq!(c.simple().await, (0, 4));
    c.request(0, CMD_TRIM, 5, 0, 8192).await;
    assert_eq!(c.simple().await, (0, 5));
    c.request(0, CMD_CACHE, 6, 0, 4096).await;
    assert_eq!(c.simple().await, (0, 6));

    c.request(0, CMD_DISC, 7, 0, 0).await;
    c.expect_closed().await;
    h.await.unwrap().unwrap();
}

#[tokio::test]
async fn export_name_with_and_without_zeroes() {
    for client_flags in [FLAG_C_FIXED_NEWSTYLE, CFLAGS] {
        let (mut c, h) = start(mem_exports());
        c.greet(client_flags).await;
        c.send_opt(OPT_EXPORT_NAME, b"disk").await;
        assert_eq!(c.s.read_u64().await.unwrap(), SIZE);
        let flags = c.s.read_u16().await.unwrap();
        assert_ne!(flags & FLAG_HAS_FLAGS, 0);
        if client_flags & FLAG_C_NO_ZEROES == 0 {
            let mut z = [1u8; 124];
            c.s.read_exact(&mut z).await.unwrap();
            assert_eq!(z, [0u8; 124]);
        }
        // Transmission works right after.
        assert_eq!(c.read_ok(9, 0, 16).await, [0u8; 16]);
        c.request(0, CMD_DISC, 0, 0, 0).await;
        c.expect_closed().await;
        h.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn export_name_unknown_hangs_up() {
    let (mut c, h) = start(mem_exports());
    c.greet(CFLAGS).await;
    c.send_opt(OPT_EXPORT_NAME, b"nope").await;
    c.expect_closed().await;
    assert!(matches!(h.await.unwrap(), Err(ConnError::Protocol(_))));
}

#[tokio::test]
async fn option_negotiation() {
    let (mut c, h) = start(mem_exports());
    c.greet(CFLAGS).await;

    let list = c.opt(OPT_LIST, &[]).await;
    assert_eq!(list.len(), 3);
    let names: Vec<String> = list[..2]
        .iter()
        .map(|r| {
            assert_eq!(r.typ, REP_SERVER);
            let n = u32::from_be_bytes(r.data[..4].try_into().unwrap()) as usize;
            String::from_utf8(r.data[4..4 + n].to_vec()).unwrap()
        })
        .collect();
    assert_eq!(names, ["disk", "ro"]);
    assert_eq!(&list[0].data[8..], b"test disk");
    assert_eq!(list[2].typ, REP_ACK);

    assert_eq!(c.opt(OPT_LIST, b"x").await[0].typ, REP_ERR_INVALID);
    assert_eq!(c.opt(999, b"whatever").await[0].typ, REP_ERR_UNSUP);
    assert_eq!(c.opt(OPT_STARTTLS, &[]).await[0].typ, REP_ERR_UNSUP);
    assert_eq!(
        c.opt(OPT_INFO, &info_data("nope", &[])).await[0].typ,
        REP_ERR_UNKNOWN
    );
    // Name length pointing past the data.
    let mut bad = info_data("disk", &[]);
    bad[3] = 200;
    assert_eq!(c.opt(OPT_INFO, &bad).await[0].typ, REP_ERR_INVALID);
    // Meta contexts need structured replies first.
    assert_eq!(
        c.set_meta("disk", &[BASE_ALLOCATION]).await[0].typ,
        REP_ERR_INVALID
    );
    assert_eq!(
        c.opt(OPT_STRUCTURED_REPLY, b"x").await[0].typ,
        REP_ERR_INVALID
    );
    c.structured().await;
    assert_eq!(
        c.opt(OPT_STRUCTURED_REPLY, &[]).await[0].typ,
        REP_ERR_INVALID
    );

    for queries in [&[][..], &["base:"][..], &[BASE_ALLOCATION][..]] {
        let r = c
            .opt(OPT_LIST_META_CONTEXT, &meta_data("disk", queries))
            .await;
        assert_eq!(r.len(), 2, "queries {queries:?}");
        assert_eq!(r[0].typ, REP_META_CONTEXT);
        assert_eq!(&r[0].data[4..], BASE_ALLOCATION.as_bytes());
        assert_eq!(r[1].typ, REP_ACK);
    }
    let r = c
        .opt(
            OPT_LIST_META_CONTEXT,
            &meta_data("disk", &["qemu:dirty-bitmap:x"]),
        )
        .await;
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].typ, REP_ACK);
    // `base:` selects nothing in SET.
    assert_eq!(c.set_meta("disk", &["base:"]).await.len(), 1);
    let mut bad = meta_data("disk", &[BASE_ALLOCATION]);
    bad.truncate(bad.len() - 1);
    assert_eq!(
        c.opt(OPT_SET_META_CONTEXT, &bad).await[0].typ,
        REP_ERR_INVALID
    );

    let (_, _, info) = c.go("disk", &[]).await;
    assert!(info.iter().any(|r| r.typ == REP_INFO));
    c.request(0, CMD_DISC, 0, 0, 0).await;
    c.expect_closed().await;
    h.await.unwrap().unwrap();
}

#[tokio::test]
async fn info_then_abort() {
    let (mut c, h) = start(mem_exports());
    c.greet(CFLAGS).await;
    let r = c.opt(OPT_INFO, &info_data("ro", &[])).await;
    let exp = &r[0];
    assert_eq!(exp.typ, REP_INFO);
    let flags = u16::from_be_bytes(exp.data[10..12].try_into().unwrap());
    assert_ne!(flags & FLAG_READ_ONLY, 0);
    assert_eq!(flags & FLAG_SEND_WRITE_ZEROES, 0);
    assert_eq!(r.last().unwrap().typ, REP_ACK);
    let r = c.opt(OPT_ABORT, &[]).await;
    assert_eq!(r[0].typ, REP_ACK);
    c.expect_closed().await;
    h.await.unwrap().unwrap();
}

#[tokio::test]
async fn structured_reads_and_block_status() {
    let (mut c, h) = start(mem_exports());
    c.greet(CFLAGS).await;
    c.structured().await;
    let r = c.set_meta("disk", &[BASE_ALLOCATION]).await;
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].typ, REP_META_CONTEXT);
    let ctx = u32::from_be_bytes(r[0].data[..4].try_into().unwrap());
    let (_, flags, _) = c.go("disk", &[]).await;
    assert_ne!(flags & FLAG_SEND_DF, 0);

    // Data at [8192, 12288): reading [0, 16384) gives hole, data, hole.
    c.write(1, 8192, &[0xab; 4096]).await;
    assert_eq!(c.simple().await, (0, 1));
    c.request(0, CMD_READ, 2, 0, 16384).await;
    let chunks = [c.chunk().await, c.chunk().await, c.chunk().await];
    let types: Vec<u16> = chunks.iter().map(|c| c.typ).collect();
    assert_eq!(
        types,
        [
            REPLY_TYPE_OFFSET_HOLE,
            REPLY_TYPE_OFFSET_DATA,
            REPLY_TYPE_OFFSET_HOLE
        ]
    );
    assert_eq!(
        chunks.iter().map(|c| c.flags).collect::<Vec<_>>(),
        [0, 0, REPLY_FLAG_DONE]
    );
    assert!(chunks.iter().all(|c| c.cookie == 2));
    assert_eq!(
        chunks[0].payload,
        [&0u64.to_be_bytes()[..], &8192u32.to_be_bytes()[..]].concat()
    );
    assert_eq!(&chunks[1].payload[..8], &8192u64.to_be_bytes());
    assert_eq!(&chunks[1].payload[8..], &[0xab; 4096][..]);

    // Don't-fragment: one data chunk with the zeroes included.
    c.request(CMD_FLAG_DF, CMD_READ, 3, 4096, 8192).await;
    let (errno, data) = c.any_reply(3, 4096, 8192).await;
    assert_eq!(errno, 0);
    assert_eq!(&data[..4096], &[0u8; 4096][..]);
    assert_eq!(&data[4096..], &[0xab; 4096][..]);

    // Reassembled unaligned read.
    c.request(0, CMD_READ, 4, 8000, 5000).await;
    let (errno, data) = c.any_reply(4, 8000, 5000).await;
    assert_eq!(errno, 0);
    assert_eq!(&data[..192], &[0u8; 192][..]);
    assert_eq!(&data[192..4288], &[0xab; 4096][..]);
    assert_eq!(&data[4288..], &[0u8; 712][..]);

    c.request(0, CMD_BLOCK_STATUS, 5, 0, SIZE as u32).await;
    let bs = c.chunk().await;
    assert_eq!(bs.typ, REPLY_TYPE_BLOCK_STATUS);
    assert_eq!(bs.flags, REPLY_FLAG_DONE);
    let words: Vec<u32> = bs
        .payload
        .chunks(4)
        .map(|w| u32::from_be_bytes(w.try_into().unwrap()))
        .collect();
    assert_eq!(
        words,
        [
            ctx,
            8192,
            STATE_HOLE | STATE_ZERO,
            4096,
            0,
            SIZE as u32 - 12288,
            STATE_HOLE | STATE_ZERO
        ]
    );
    c.request(CMD_FLAG_REQ_ONE, CMD_BLOCK_STATUS, 6, 100, 20000)
        .await;
    let bs = c.chunk().await;
    assert_eq!(bs.payload.len(), 12);
    assert_eq!(&bs.payload[4..8], &8092u32.to_be_bytes());

    // Zero-length read: a lone NONE chunk.
    c.request(0, CMD_READ, 7, 0, 0).await;
    let ch = c.chunk().await;
    assert_eq!((ch.typ, ch.flags), (REPLY_TYPE_NONE, REPLY_FLAG_DONE));

    // Errors arrive as structured error chunks.
    c.request(0, CMD_READ, 8, SIZE - 1, 2).await;
    assert_eq!(c.any_reply(8, SIZE - 1, 2).await.0, EINVAL);

    c.request(0, CMD_DISC, 0, 0, 0).await;
    c.expect_closed().await;
    h.await.unwrap().unwrap();
}

#[tokio::test]
async fn error_replies_keep_connection() {
    let (mut c, h) = start(mem_exports());
    c.greet(CFLAGS).await;
    c.go("disk", &[]).await;

    c.request(0, CMD_READ, 1, SIZE - 10, 20).await;
    assert_eq!(c.simple().await, (EINVAL, 1));
    c.request(0, CMD_READ, 2, u64::MAX - 5, 10).await;
    assert_eq!(c.simple().await, (EINVAL, 2));
    c.write(3, SIZE - 2, b"abcd").await;
    assert_eq!(c.simple().await, (ENOSPC, 3));
    c.request(0, CMD_WRITE_ZEROES, 4, SIZE, 1).await;
    assert_eq!(c.simple().await, (ENOSPC, 4));
    c.request(0, CMD_TRIM, 5, SIZE, 4096).await;
    assert_eq!(c.simple().await, (EINVAL, 5));
    c.request(0, 42, 6, 0, 0).await;
    assert_eq!(c.simple().await, (EINVAL, 6));
    c.request(CMD_FLAG_REQ_ONE, CMD_READ, 7, 0, 1).await;
    assert_eq!(c.simple().await, (EINVAL, 7));
    c.request(CMD_FLAG_DF, CMD_READ, 8, 0, 1).await;
    assert_eq!(c.simple().await, (EINVAL, 8));
    c.request(0, CMD_BLOCK_STATUS, 9, 0, 4096).await;
    assert_eq!(c.simple().await, (EINVAL, 9));
    c.request(0, CMD_READ, 10, 0, (32 << 20) + 1).await;
    assert_eq!(c.simple().await, (EINVAL, 10));

    // Still usable.
    assert_eq!(c.read_ok(11, 0, 4).await, [0; 4]);
    c.request(0, CMD_DISC, 0, 0, 0).await;
    c.expect_closed().await;
    h.await.unwrap().unwrap();
}

#[tokio::test]
async fn read_only_export_refuses_writes() {
    let (mut c, h) = start(mem_exports());
    c.greet(CFLAGS).await;
    let (_, flags, _) = c.go("ro", &[]).await;
    assert_ne!(flags & FLAG_READ_ONLY, 0);
    c.write(1, 0, b"hello").await;
    assert_eq!(c.simple().await, (EPERM, 1));
    c.request(0, CMD_TRIM, 2, 0, 4096).await;
    assert_eq!(c.simple().await, (EPERM, 2));
    c.request(0, CMD_WRITE_ZEROES, 3, 0, 4096).await;
    assert_eq!(c.simple().await, (EPERM, 3));
    c.request(0, CMD_FLUSH, 4, 0, 0).await;
    assert_eq!(c.simple().await, (0, 4));
    c.request(0, CMD_DISC, 0, 0, 0).await;
    c.expect_closed().await;
    h.await.unwrap().unwrap();
}

#[tokio::test]
async fn alignment_enforced_for_large_min_block() {
    let e = Exports::new();
    e.add(
        "aligned",
        Arc::new(MemTarget::new(SIZE).with_block_sizes(BlockSizes {
            min: 512,
            preferred: 4096,
            max: 1 << 20,
        })),
    )
    .unwrap();
    let (mut c, h) = start(e);
    c.greet(CFLAGS).await;
    let (_, _, replies) = c.go("aligned", &[INFO_BLOCK_SIZE]).await;
    let bs = replies
        .iter()
        .find(|r| r.data[..2] == INFO_BLOCK_SIZE.to_be_bytes())
        .unwrap();
    assert_eq!(&bs.data[2..6], &512u32.to_be_bytes());
    assert_eq!(&bs.data[10..14], &(1u32 << 20).to_be_bytes());
    c.request(0, CMD_READ, 1, 100, 512).await;
    assert_eq!(c.simple().await, (EINVAL, 1));
    c.request(0, CMD_READ, 2, 512, 1000).await;
    assert_eq!(c.simple().await, (EINVAL, 2));
    c.read_ok(3, 512, 1024).await;
    c.request(0, CMD_DISC, 0, 0, 0).await;
    c.expect_closed().await;
    h.await.unwrap().unwrap();
}

#[tokio::test]
async fn pipelined_requests_all_answered() {
    let (mut c, h) = start(mem_exports());
    c.greet(CFLAGS).await;
    c.go("disk", &[]).await;
    // Queue 200 writes (more than the in-flight limit) before reading any reply.
    let n = 200u64;
    let (mut rd, mut wr) = tokio::io::split(c.s);
    let sender = tokio::spawn(async move {
        for i in 0..n {
            let mut b = BytesMut::new();
            b.put_u32(REQUEST_MAGIC);
            b.put_u16(0);
            b.put_u16(CMD_WRITE);
            b.put_u64(1000 + i);
            b.put_u64(i * 4096);
            b.put_u32(4096);
            b.put_bytes(i as u8, 4096);
            wr.write_all(&b).await.unwrap();
        }
        wr
    });
    let mut seen = std::collections::HashSet::new();
    for _ in 0..n {
        assert_eq!(rd.read_u32().await.unwrap(), SIMPLE_REPLY_MAGIC);
        assert_eq!(rd.read_u32().await.unwrap(), 0);
        assert!(seen.insert(rd.read_u64().await.unwrap()));
    }
    assert_eq!(seen.len() as u64, n);
    let wr = sender.await.unwrap();
    let mut c = Client { s: rd.unsplit(wr) };
    let d = c.read_ok(1, 199 * 4096, 4096).await;
    assert!(d.iter().all(|b| *b == 199));
    c.request(0, CMD_DISC, 0, 0, 0).await;
    c.expect_closed().await;
    h.await.unwrap().unwrap();
}

#[tokio::test]
async fn malformed_frames_close_connection() {
    // Bad request magic.
    let (mut c, h) = start(mem_exports());
    c.greet(CFLAGS).await;
    c.go("disk", &[]).await;
    c.s.write_all(&[0x12; 28]).await.unwrap();
    c.expect_closed().await;
    assert!(matches!(h.await.unwrap(), Err(ConnError::Protocol(_))));

    // Oversized write: an EINVAL reply, then the connection closes.
    let (mut c, h) = start(mem_exports());
    c.greet(CFLAGS).await;
    c.go("disk", &[]).await;
    c.request(0, CMD_WRITE, 5, 0, 64 << 20).await;
    assert_eq!(c.simple().await, (EINVAL, 5));
    c.expect_closed().await;
    assert!(matches!(h.await.unwrap(), Err(ConnError::Protocol(_))));

    // Unknown client flags.
    let (mut c, h) = start(mem_exports());
    c.greet(0x80).await;
    c.expect_closed().await;
    assert!(matches!(h.await.unwrap(), Err(ConnError::Protocol(_))));

    // Bad option magic.
    let (mut c, h) = start(mem_exports());
    c.greet(CFLAGS).await;
    c.s.write_all(&[0u8; 16]).await.unwrap();
    c.expect_closed().await;
    assert!(matches!(h.await.unwrap(), Err(ConnError::Protocol(_))));

    // Oversized option: NBD_REP_ERR_TOO_BIG, then closed.
    let (mut c, h) = start(mem_exports());
    c.greet(CFLAGS).await;
    let mut b = BytesMut::new();
    b.put_u64(IHAVEOPT);
    b.put_u32(OPT_GO);
    b.put_u32(u32::MAX);
    c.s.write_all(&b).await.unwrap();
    let r = c.opt_reply().await;
    assert_eq!(r.typ, REP_ERR_TOO_BIG);
    c.expect_closed().await;
    assert!(matches!(h.await.unwrap(), Err(ConnError::Protocol(_))));

    // Truncated request header then EOF: clean close, no panic.
    let (mut c, h) = start(mem_exports());
    c.greet(CFLAGS).await;
    c.go("disk", &[]).await;
    c.s.write_all(&REQUEST_MAGIC.to_be_bytes()).await.unwrap();
    c.s.shutdown().await.unwrap();
    drop(c);
    h.await.unwrap().unwrap();
}

#[tokio::test]
async fn too_many_options_hang_up() {
    let cfg = ServerConfig {
        max_options: 3,
        ..ServerConfig::default()
    };
    let (mut c, h) = start_with(Server::with_config(mem_exports(), cfg));
    c.greet(CFLAGS).await;
    for _ in 0..3 {
        c.opt(OPT_LIST, &[]).await;
    }
    c.expect_closed().await;
    assert!(matches!(h.await.unwrap(), Err(ConnError::Protocol(_))));
}

/// A target whose reads panic and whose block status lies.
struct Broken;

impl BlockTarget for Broken {
    fn size_bytes(&self) -> u64 {
        SIZE
    }
    fn read(&self, _: u64, _: usize) -> BoxFuture<'_, crate::NbdResult<Bytes>> {
        Box::pin(async { panic!("boom") })
    }
    fn write(&self, _: u64, _: Bytes, _: bool) -> BoxFuture<'_, crate::NbdResult<()>> {
        Box::pin(async { Err(NbdError::io("disk on fire")) })
    }
    fn flush(&self) -> BoxFuture<'_, crate::NbdResult<()>> {
        Box::pin(async { Ok(()) })
    }
    fn trim(&self, _: u64, _: u64, _: bool) -> BoxFuture<'_, crate::NbdResult<()>> {
        Box::pin(async { Ok(()) })
    }
    fn write_zeroes(
        &self,
        _: u64,
        _: u64,
        _: bool,
        _: bool,
    ) -> BoxFuture<'_, crate::NbdResult<()>> {
        Box::pin(async { Ok(()) })
    }
    fn block_status(&self, _: u64, _: u64) -> BoxFuture<'_, crate::NbdResult<Vec<Extent>>> {
        Box::pin(async { Ok(vec![Extent::data(0)]) })
    }
}

#[tokio::test]
async fn target_failures_become_errors() {
    let e = Exports::new();
    e.add("broken", Arc::new(Broken)).unwrap();
    let (mut c, h) = start(e);
    c.greet(CFLAGS).await;
    c.structured().await;
    c.set_meta("broken", &[BASE_ALLOCATION]).await;
    c.go("broken", &[]).await;
    c.request(0, CMD_READ, 1, 0, 512).await;
    assert_eq!(c.any_reply(1, 0, 512).await.0, EIO);
    c.write(2, 0, b"x").await;
    assert_eq!(c.any_reply(2, 0, 0).await.0, EIO);
    c.request(0, CMD_BLOCK_STATUS, 3, 0, 512).await;
    assert_eq!(c.any_reply(3, 0, 0).await.0, EIO);
    // Fast zero on a target that cannot do it quickly.
    c.request(CMD_FLAG_FAST_ZERO, CMD_WRITE_ZEROES, 4, 0, 512)
        .await;
    assert_eq!(c.any_reply(4, 0, 0).await.0, ENOTSUP);
    c.request(0, CMD_DISC, 0, 0, 0).await;
    c.expect_closed().await;
    h.await.unwrap().unwrap();
}

#[test]
fn extent_normalization() {
    let h = Extent::hole(100);
    let d = Extent::data(50);
    assert_eq!(
        normalize_extents(&[h, h, d, h], 1000, false).unwrap(),
        [(200, 3), (50, 0), (100, 3)]
    );
    assert_eq!(
        normalize_extents(&[h, d], 120, false).unwrap(),
        [(100, 3), (20, 0)]
    );
    assert_eq!(normalize_extents(&[h, d], 1000, true).unwrap(), [(100, 3)]);
    assert!(normalize_extents(&[], 10, false).is_none());
    assert!(normalize_extents(&[Extent::data(0)], 10, false).is_none());
}

/// Random garbage at every protocol stage must end in an error or a clean
/// close, never a panic or a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_never_panics() {
    use rand::{Rng, SeedableRng};
    let mut reached_transmission = 0;
    for seed in 0..300u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut input = BytesMut::new();
        let stage = seed % 3;
        if stage > 0 {
            input.put_u32(CFLAGS);
            // A few options with random numbers and payloads.
            let n_opts = if stage == 1 { rng.gen_range(0..6) } else { 0 };
            for _ in 0..n_opts {
                let data: Vec<u8> = (0..rng.gen_range(0..64)).map(|_| rng.gen()).collect();
                input.put_u64(IHAVEOPT);
                input.put_u32(rng.gen_range(0..14));
                input.put_u32(data.len() as u32);
                input.put_slice(&data);
            }
        }
        if stage == 2 {
            input.put_u64(IHAVEOPT);
            input.put_u32(OPT_STRUCTURED_REPLY);
            input.put_u32(0);
            let meta = meta_data("disk", &[BASE_ALLOCATION]);
            input.put_u64(IHAVEOPT);
            input.put_u32(OPT_SET_META_CONTEXT);
            input.put_u32(meta.len() as u32);
            input.put_slice(&meta);
            let go = info_data("disk", &[]);
            input.put_u64(IHAVEOPT);
            input.put_u32(OPT_GO);
            input.put_u32(go.len() as u32);
            input.put_slice(&go);
            // Well-framed requests with random fields.
            for _ in 0..rng.gen_range(1..20) {
                let typ = rng.gen_range(0..10u16);
                let len = match rng.gen_range(0..3) {
                    0 => rng.gen_range(0..8192),
                    1 => rng.gen(),
                    _ => rng.gen_range(0..(2 * SIZE as u32)),
                };
                input.put_u32(REQUEST_MAGIC);
                input.put_u16(rng.gen_range(0..64));
                input.put_u16(typ);
                input.put_u64(rng.gen());
                input.put_u64(if rng.gen() {
                    rng.gen()
                } else {
                    rng.gen_range(0..SIZE)
                });
                input.put_u32(len);
                if typ == CMD_WRITE && len < 8192 {
                    input.put_bytes(0x5a, len as usize);
                }
            }
        }
        let tail: Vec<u8> = (0..rng.gen_range(0..256)).map(|_| rng.gen()).collect();
        input.put_slice(&tail);

        let (c, h) = start(mem_exports());
        let (mut rd, mut wr) = tokio::io::split(c.s);
        let drain = tokio::spawn(async move {
            let mut out = Vec::new();
            let _ = rd.read_to_end(&mut out).await;
            out
        });
        let _ = wr.write_all(&input).await;
        let _ = wr.shutdown().await;
        let res = tokio::time::timeout(Duration::from_secs(10), h)
            .await
            .unwrap_or_else(|_| panic!("seed {seed}: server hung"));
        assert!(res.is_ok(), "seed {seed}: server task panicked");
        drop(wr);
        let out = drain.await.unwrap();
        let magics = [SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC].map(u32::to_be_bytes);
        if stage == 2 && out.windows(4).any(|w| magics.iter().any(|m| w == m)) {
            reached_transmission += 1;
        }
    }
    assert!(
        reached_transmission > 50,
        "only {reached_transmission} runs got replies to requests"
    );
}

/// Over TCP each client is served on a thread of its own; dropping the server's future
/// closes the connections it accepted.
#[tokio::test]
async fn tcp_clients_are_served_and_closed_with_the_server() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let server = tokio::spawn(async move { Server::new(mem_exports()).serve_tcp(l).await });
    let mut c = Client {
        s: TcpStream::connect(addr).await.unwrap(),
    };
    c.greet(CFLAGS).await;
    let (size, _, _) = c.go("disk", &[]).await;
    assert_eq!(size, SIZE);
    let data: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 251) as u8).collect();
    c.write(1, 4096, &data).await;
    assert_eq!(c.simple().await, (0, 1));
    assert_eq!(c.read_ok(2, 4096, 8192).await, data);

    server.abort();
    let _ = server.await;
    tokio::time::timeout(Duration::from_secs(10), c.expect_closed())
        .await
        .expect("the connection outlived the server");
}
