//! Two data planes in one process, each with a real disk, talking over real gRPC on loopback.

use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use strata_data::{DataConfig, DataPlane, Replica, StorageService, Topology};
use strata_disk::{Disk, DiskConfig};
use strata_placement::{Device, Ring, RingSpec};
use strata_types::ChunkId;

struct Node {
    data: Arc<DataPlane>,
    _dir: tempfile::TempDir,
}

async fn start(node_id: u64, write_quorum: usize) -> (Node, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = Disk::open(DiskConfig {
        dir: dir.path().join("disk0"),
        device: None,
        capacity_bytes: 64 << 20,
        force_syscall_io: false,
        read_cache_bytes: strata_disk::READ_CACHE_BYTES_DEFAULT,
        straighten_idle_ms: strata_disk::STRAIGHTEN_IDLE_MS_DEFAULT,
    })
    .expect("disk");
    let data = DataPlane::new(
        DataConfig {
            node_id,
            write_quorum,
            rpc_timeout_ms: 5_000,
            hint_interval_ms: 1_000,
        },
        BTreeMap::from([(node_id * 1000, disk)]),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let server = tonic::transport::Server::builder()
        .add_service(StorageService::server(data.clone()))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);
    (Node { data, _dir: dir }, addr)
}

fn topology(addrs: &HashMap<u64, String>) -> Topology {
    let devices = addrs
        .keys()
        .map(|n| Device {
            id: n * 1000,
            node: *n,
            zone: format!("z{n}"),
            weight: 1.0,
        })
        .collect();
    let ring = Ring::new(RingSpec {
        version: 1,
        part_power: 4,
        replicas: 2,
        devices,
    })
    .expect("ring");
    Topology {
        ring: Arc::new(ring),
        addrs: addrs.clone(),
    }
}

async fn pair() -> (Node, Node) {
    let (a, a_addr) = start(1, 2).await;
    let (b, b_addr) = start(2, 2).await;
    let addrs = HashMap::from([(1, a_addr), (2, b_addr)]);
    a.data.set_topology(topology(&addrs));
    b.data.set_topology(topology(&addrs));
    (a, b)
}

#[tokio::test]
async fn chunks_and_records_are_written_to_both_replicas() {
    let (a, b) = pair().await;
    let id = ChunkId([7; 32]);
    let body = Bytes::from(vec![0x5a; 300_000]);
    a.data
        .put_chunk(b"pk", id, body.clone())
        .await
        .expect("quorum write");
    // Both disks hold it: read each replica's local copy through the other node.
    assert_eq!(b.data.get_chunk(b"pk", id).await.expect("read via b"), body);
    for (_, disk) in a.data.local_disks().iter().chain(b.data.local_disks()) {
        assert!(
            disk.has_chunk(id).expect("index"),
            "a replica is missing the chunk"
        );
    }
    let rec = strata_disk::Record {
        timestamp: 5,
        value: Some(b"v".to_vec()),
        tally: None,
    };
    a.data
        .put_record(b"pk", b"key", rec.clone())
        .await
        .expect("record");
    assert_eq!(
        b.data.get_record(b"pk", b"key").await.expect("read"),
        Some(rec)
    );
}

#[tokio::test]
async fn volume_blocks_cross_the_wire_verified() {
    let (a, _b) = pair().await;
    let remote = Replica {
        disk: 2000,
        node: 2,
    };
    let data: Vec<u8> = (0..3 * 4096u32).map(|i| (i * 7 + 3) as u8).collect();
    a.data
        .replica_write_blocks(remote, 9, &[10, 11, 12], Bytes::from(data.clone()))
        .await
        .expect("remote write");
    let read = a
        .data
        .replica_read_blocks(remote, 9, 9, 5)
        .await
        .expect("remote read");
    assert_eq!(read.present, [false, true, true, true, false]);
    assert_eq!(&read.data[4096..4 * 4096], data.as_slice());
    assert!(read.data[..4096].iter().all(|b| *b == 0));
    a.data
        .replica_trim_blocks(remote, 9, 11, 1)
        .await
        .expect("remote trim");
    let read = a
        .data
        .replica_read_blocks(remote, 9, 10, 3)
        .await
        .expect("read");
    assert_eq!(read.present, [true, false, true]);
    // Scattered blocks in one request land where their numbers say.
    let two: Vec<u8> = (0..2 * 4096u32).map(|i| (i % 251) as u8).collect();
    a.data
        .replica_write_blocks(remote, 9, &[20, 30], Bytes::from(two.clone()))
        .await
        .expect("scattered write");
    let read = a
        .data
        .replica_read_blocks(remote, 9, 20, 11)
        .await
        .expect("read");
    assert_eq!(read.present.iter().filter(|p| **p).count(), 2);
    assert!(read.present[0] && read.present[10]);
    assert_eq!(&read.data[..4096], &two[..4096]);
    assert_eq!(&read.data[10 * 4096..], &two[4096..]);
    // Malformed requests are refused by the remote disk, not a crash.
    let odd = a
        .data
        .replica_write_blocks(remote, 9, &[0], Bytes::from(vec![1u8; 100]))
        .await;
    assert!(odd.is_err());
    let unordered = a
        .data
        .replica_write_blocks(remote, 9, &[5, 4], Bytes::from(two))
        .await;
    assert!(unordered.is_err());
}

#[tokio::test]
async fn a_write_fails_without_its_quorum_and_leaves_a_hint() {
    let (a, b) = pair().await;
    drop(b); // node 2's server task keeps running; stop it by pointing at a dead address
    let mut addrs = HashMap::new();
    addrs.insert(1, "127.0.0.1:1".to_string());
    addrs.insert(2, "127.0.0.1:1".to_string());
    a.data.set_topology(topology(&addrs));
    let err = a
        .data
        .put_chunk(b"pk", ChunkId([9; 32]), Bytes::from_static(b"x"))
        .await;
    assert!(
        err.is_err(),
        "a write reached only one of the two copies it needs"
    );
    assert!(
        a.data.pending_hints() >= 1,
        "the missed replica was not remembered"
    );
}
