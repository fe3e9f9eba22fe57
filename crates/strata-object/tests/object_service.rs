//! The object service on one real disk (io_uring, rocksdb) and an in-memory
//! meta store: Swift semantics end to end below HTTP.

use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use strata_data::{DataConfig, DataPlane, Topology};
use strata_disk::{Disk, DiskConfig};
use strata_meta::{MemMeta, MetaStore, Op, Txn};
use strata_object::{ObjectError, ObjectService, PutOptions};
use strata_placement::{Device, Ring, RingSpec};

fn service(dir: &std::path::Path) -> Arc<ObjectService> {
    service_on(dir, Arc::new(MemMeta::new()))
}

fn service_on(dir: &std::path::Path, meta: Arc<MemMeta>) -> Arc<ObjectService> {
    let disk = Disk::open(DiskConfig {
        dir: dir.join("disk0"),
        device: None,
        capacity_bytes: 256 << 20,
        force_syscall_io: false,
        read_cache_bytes: strata_disk::READ_CACHE_BYTES_DEFAULT,
        straighten_idle_ms: strata_disk::STRAIGHTEN_IDLE_MS_DEFAULT,
    })
    .expect("disk opens");
    let data = DataPlane::new(
        DataConfig {
            node_id: 1,
            write_quorum: 1,
            rpc_timeout_ms: 1000,
            hint_interval_ms: 1000,
        },
        BTreeMap::from([(1000, disk)]),
    );
    let ring = Ring::new(RingSpec {
        version: 1,
        part_power: 4,
        replicas: 1,
        devices: vec![Device {
            id: 1000,
            node: 1,
            zone: "z".into(),
            weight: 1.0,
        }],
    })
    .expect("ring");
    data.set_topology(Topology {
        ring: Arc::new(ring),
        addrs: HashMap::new(),
    });
    ObjectService::new(data, meta)
}

fn body(parts: Vec<Vec<u8>>) -> impl futures::Stream<Item = Result<Bytes, String>> + Unpin {
    futures::stream::iter(parts.into_iter().map(|p| Ok(Bytes::from(p))))
}

async fn read_all(svc: &ObjectService, c: &str, o: &str) -> Vec<u8> {
    use futures::StreamExt;
    let info = svc.head_object("AUTH_t", c, o).await.expect("head");
    let mut s = Box::pin(svc.read_range("AUTH_t", c, o, &info, 0, info.size));
    let mut out = Vec::new();
    while let Some(piece) = s.next().await {
        out.extend_from_slice(&piece.expect("chunk reads"));
    }
    out
}

#[tokio::test]
async fn multi_chunk_object_round_trips_with_md5_etag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let svc = service(dir.path());
    assert!(svc
        .put_container("AUTH_t", "c", BTreeMap::new(), BTreeMap::new())
        .await
        .expect("put container"));
    // Odd piece sizes cross the 1 MiB chunk boundary inside a piece.
    let data: Vec<u8> = (0..2_500_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let parts = data.chunks(333_333).map(|p| p.to_vec()).collect();
    let info = svc
        .put_object("AUTH_t", "c", "big", body(parts), PutOptions::default())
        .await
        .expect("put");
    assert_eq!(info.size, data.len() as u64);
    assert_eq!(info.chunks.len(), 3);
    let expected = {
        use md5::{Digest, Md5};
        hex::encode(Md5::digest(&data))
    };
    assert_eq!(info.etag, expected);
    assert_eq!(read_all(&svc, "c", "big").await, data);
}

#[tokio::test]
async fn listing_and_counts_see_put_and_delete_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let svc = service(dir.path());
    svc.put_container("AUTH_t", "c", BTreeMap::new(), BTreeMap::new())
        .await
        .expect("container");
    for name in ["a", "b/1", "b/2", "c"] {
        svc.put_object(
            "AUTH_t",
            "c",
            name,
            body(vec![name.as_bytes().to_vec()]),
            PutOptions::default(),
        )
        .await
        .expect("put");
    }
    let names = |rows: Vec<(String, strata_object::ListingEntry)>| {
        rows.into_iter().map(|(n, _)| n).collect::<Vec<_>>()
    };
    assert_eq!(
        names(
            svc.list_objects("AUTH_t", "c", "", None, None, 100)
                .await
                .expect("list")
        ),
        ["a", "b/1", "b/2", "c"]
    );
    assert_eq!(
        names(
            svc.list_objects("AUTH_t", "c", "b/", None, None, 100)
                .await
                .expect("list")
        ),
        ["b/1", "b/2"]
    );
    assert_eq!(
        names(
            svc.list_objects("AUTH_t", "c", "", Some("a"), None, 2)
                .await
                .expect("list")
        ),
        ["b/1", "b/2"]
    );
    assert_eq!(
        names(
            svc.list_objects("AUTH_t", "c", "", None, Some("b/2"), 100)
                .await
                .expect("list")
        ),
        ["a", "b/1"]
    );
    assert_eq!(
        svc.container_usage("AUTH_t", "c").await.expect("usage"),
        (4, 8)
    );
    svc.delete_object("AUTH_t", "c", "b/1")
        .await
        .expect("delete");
    assert_eq!(
        names(
            svc.list_objects("AUTH_t", "c", "", None, None, 100)
                .await
                .expect("list")
        ),
        ["a", "b/2", "c"]
    );
    assert_eq!(
        svc.container_usage("AUTH_t", "c").await.expect("usage"),
        (3, 5)
    );
    assert!(matches!(
        svc.head_object("AUTH_t", "c", "b/1").await,
        Err(ObjectError::NoObject)
    ));
    assert!(matches!(
        svc.delete_container("AUTH_t", "c").await,
        Err(ObjectError::ContainerNotEmpty { .. })
    ));
}

#[tokio::test]
async fn counts_follow_overwrites_and_containers_from_before_tallies_are_scanned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let meta = Arc::new(MemMeta::new());
    // A container record written before listing rows were tallied: no `tallied` flag.
    let old = br#"{"created":1000000,"meta":{}}"#.to_vec();
    meta.write(Txn {
        checks: vec![],
        ops: vec![Op::Put {
            table: "swift.containers".into(),
            key: "AUTH_t/old".into(),
            value: old,
        }],
    })
    .await
    .expect("old container record");
    let svc = service_on(dir.path(), meta);
    svc.put_container("AUTH_t", "new", BTreeMap::new(), BTreeMap::new())
        .await
        .expect("container");
    for c in ["old", "new"] {
        for (name, len) in [("a", 10), ("b", 3), ("a", 4)] {
            svc.put_object(
                "AUTH_t",
                c,
                name,
                body(vec![vec![1; len]]),
                PutOptions::default(),
            )
            .await
            .expect("put");
        }
        assert_eq!(
            svc.container_usage("AUTH_t", c).await.expect("usage"),
            (2, 7),
            "{c}: an overwrite counts once, with its new size"
        );
        svc.delete_object("AUTH_t", c, "b").await.expect("delete");
        assert_eq!(
            svc.container_usage("AUTH_t", c).await.expect("usage"),
            (1, 4)
        );
    }
    assert_eq!(svc.account_usage("AUTH_t").await.expect("usage"), (2, 2, 8));
    let info = svc.container("AUTH_t", "new").await.expect("record");
    assert!(info.tallied, "new containers are tallied");
    assert!(
        !svc.container("AUTH_t", "old")
            .await
            .expect("record")
            .tallied
    );
    // Deleted and created again: counting starts from the empty container.
    svc.delete_object("AUTH_t", "new", "a")
        .await
        .expect("delete");
    svc.delete_container("AUTH_t", "new").await.expect("delete");
    svc.put_container("AUTH_t", "new", BTreeMap::new(), BTreeMap::new())
        .await
        .expect("container again");
    assert_eq!(
        svc.container_usage("AUTH_t", "new").await.expect("usage"),
        (0, 0)
    );
}

#[tokio::test]
async fn overwrite_serves_the_new_bytes_and_a_bad_etag_stores_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let svc = service(dir.path());
    svc.put_container("AUTH_t", "c", BTreeMap::new(), BTreeMap::new())
        .await
        .expect("container");
    svc.put_object(
        "AUTH_t",
        "c",
        "o",
        body(vec![b"first".to_vec()]),
        PutOptions::default(),
    )
    .await
    .expect("put");
    svc.put_object(
        "AUTH_t",
        "c",
        "o",
        body(vec![b"second!".to_vec()]),
        PutOptions::default(),
    )
    .await
    .expect("overwrite");
    assert_eq!(read_all(&svc, "c", "o").await, b"second!");
    let bad = PutOptions {
        expected_etag: Some("0".repeat(32)),
        ..PutOptions::default()
    };
    let err = svc
        .put_object("AUTH_t", "c", "o", body(vec![b"third".to_vec()]), bad)
        .await;
    assert!(matches!(err, Err(ObjectError::EtagMismatch { .. })));
    assert_eq!(read_all(&svc, "c", "o").await, b"second!");
}

#[tokio::test]
async fn objects_need_their_container() {
    let dir = tempfile::tempdir().expect("tempdir");
    let svc = service(dir.path());
    let err = svc
        .put_object("AUTH_t", "nope", "o", body(vec![]), PutOptions::default())
        .await;
    assert!(matches!(err, Err(ObjectError::NoContainer { .. })));
}

#[tokio::test]
async fn empty_objects_are_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let svc = service(dir.path());
    svc.put_container("AUTH_t", "c", BTreeMap::new(), BTreeMap::new())
        .await
        .expect("container");
    let info = svc
        .put_object("AUTH_t", "c", "e", body(vec![]), PutOptions::default())
        .await
        .expect("put");
    assert_eq!(info.size, 0);
    assert_eq!(info.etag, "d41d8cd98f00b204e9800998ecf8427e");
    assert!(read_all(&svc, "c", "e").await.is_empty());
}

#[tokio::test]
async fn expired_objects_vanish_at_once_and_the_expirer_deletes_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let svc = service(dir.path());
    svc.put_container("AUTH_t", "c", BTreeMap::new(), BTreeMap::new())
        .await
        .expect("container");
    let at = strata_object::unix_now() + 1;
    let opts = PutOptions {
        headers: BTreeMap::from([("x-delete-at".to_string(), at.to_string())]),
        ..PutOptions::default()
    };
    svc.put_object("AUTH_t", "c", "soon", body(vec![b"x".to_vec()]), opts)
        .await
        .expect("put");
    svc.put_object(
        "AUTH_t",
        "c",
        "kept",
        body(vec![b"y".to_vec()]),
        PutOptions::default(),
    )
    .await
    .expect("put");
    assert!(svc.head_object("AUTH_t", "c", "soon").await.is_ok());
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    // Past its time the object is gone for readers even before the expirer runs.
    assert!(matches!(
        svc.head_object("AUTH_t", "c", "soon").await,
        Err(ObjectError::NoObject)
    ));
    assert!(svc.expire_due().await.expect("expirer pass") <= 1);
    let names: Vec<String> = svc
        .list_objects("AUTH_t", "c", "", None, None, 100)
        .await
        .expect("list")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, vec!["kept".to_string()]);
}
