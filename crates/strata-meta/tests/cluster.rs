//! The meta group over real gRPC on localhost: elections, forwarding,
//! linearizable reads, failures of followers and leaders, restarts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use strata_meta::{Check, Meta, MetaConfig, MetaStore, Op, Txn};
use strata_types::NodeId;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;

const T: &str = "t";

fn put(key: &str, value: &str) -> Txn {
    Txn {
        checks: vec![],
        ops: vec![Op::Put {
            table: T.into(),
            key: key.into(),
            value: value.as_bytes().to_vec(),
        }],
    }
}

fn config(id: NodeId, dir: &Path, voters: &BTreeMap<NodeId, String>) -> MetaConfig {
    MetaConfig {
        node_id: id,
        dir: dir.to_path_buf(),
        voters: voters.clone(),
        heartbeat_interval_ms: 50,
        election_timeout_min_ms: 300,
        election_timeout_max_ms: 600,
    }
}

/// One running member: its Meta and the gRPC server in front of it.
struct Member {
    id: NodeId,
    addr: SocketAddr,
    dir: PathBuf,
    meta: Arc<Meta>,
    stop: oneshot::Sender<()>,
    server: JoinHandle<()>,
}

fn serve(meta: &Arc<Meta>, listener: TcpListener) -> (oneshot::Sender<()>, JoinHandle<()>) {
    let svc = meta.raft_service();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let incoming = TcpListenerStream::new(listener);
        let shutdown = async {
            let _ = stopped.await;
        };
        if let Err(e) = Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
        {
            eprintln!("server: {e}");
        }
    });
    (stop, server)
}

async fn start(
    id: NodeId,
    dir: &Path,
    listener: TcpListener,
    voters: &BTreeMap<NodeId, String>,
) -> Member {
    let addr = listener.local_addr().unwrap();
    let meta = Meta::open(config(id, dir, voters)).await.unwrap();
    let (stop, server) = serve(&meta, listener);
    meta.bootstrap().await.unwrap();
    Member {
        id,
        addr,
        dir: dir.to_path_buf(),
        meta,
        stop,
        server,
    }
}

/// Shut a member down and stop its server; returns its address and dir.
async fn stop(m: Member) -> (NodeId, SocketAddr, PathBuf) {
    m.meta.shutdown().await.unwrap();
    let _ = m.stop.send(());
    let mut server = m.server;
    if tokio::time::timeout(Duration::from_secs(3), &mut server)
        .await
        .is_err()
    {
        server.abort();
        let _ = server.await;
    }
    (m.id, m.addr, m.dir)
}

async fn rebind(addr: SocketAddr) -> TcpListener {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) if Instant::now() < deadline => {
                eprintln!("rebind {addr}: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("rebind {addr}: {e}"),
        }
    }
}

/// Wait until every member reports the same leader, one of them; return it.
async fn agreed_leader(members: &[&Member]) -> NodeId {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let leaders: Vec<_> = members.iter().map(|m| m.meta.status().leader).collect();
        if let Some(Some(l)) = leaders.first() {
            if leaders.iter().all(|x| *x == Some(*l)) && members.iter().any(|m| m.id == *l) {
                return *l;
            }
        }
        assert!(Instant::now() < deadline, "no agreed leader: {leaders:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn eventually_local(meta: &Meta, key: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while meta.get_local(T, key).as_deref() != Some(want.as_bytes()) {
        assert!(
            Instant::now() < deadline,
            "{key} never reached {want} locally"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn get(meta: &Meta, key: &str) -> Option<String> {
    meta.get(T, key)
        .await
        .unwrap()
        .map(|v| String::from_utf8(v).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_node_group_survives_failures_and_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let mut listeners = Vec::new();
    let mut voters = BTreeMap::new();
    for id in 1..=3u64 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        voters.insert(id, l.local_addr().unwrap().to_string());
        listeners.push((id, l));
    }
    let mut members = Vec::new();
    for (id, l) in listeners {
        let dir = tmp.path().join(format!("n{id}"));
        members.push(start(id, &dir, l, &voters).await);
    }
    for m in &members {
        m.meta.wait_for_leader(10_000).await.unwrap();
    }
    let leader = agreed_leader(&members.iter().collect::<Vec<_>>()).await;
    let status = members[0].meta.status();
    assert_eq!(status.voters, vec![1, 2, 3]);
    assert_eq!(status.node_id, 1);

    // A write through a follower is visible, linearizably, everywhere.
    let follower = members.iter().position(|m| m.id != leader).unwrap();
    let mut applied = members[follower].meta.subscribe_applied();
    let before = *applied.borrow_and_update();
    let out = members[follower].meta.write(put("k1", "v1")).await.unwrap();
    assert!(out.succeeded);
    assert!(out.log_index > before);
    assert!(
        *applied.borrow() >= out.log_index,
        "write returned before local apply"
    );
    assert_eq!(
        members[follower].meta.get_local(T, "k1").as_deref(),
        Some(&b"v1"[..])
    );
    for m in &members {
        assert_eq!(
            get(&m.meta, "k1").await.as_deref(),
            Some("v1"),
            "node {}",
            m.id
        );
        let scanned = m.meta.scan(T, "k", None, 10).await.unwrap();
        assert_eq!(scanned, vec![("k1".to_string(), b"v1".to_vec())]);
    }

    // A failed check applies nothing, wherever the txn is sent.
    for m in &members {
        let txn = Txn {
            checks: vec![Check::Absent {
                table: T.into(),
                key: "k1".into(),
            }],
            ops: vec![Op::Put {
                table: T.into(),
                key: "k2".into(),
                value: b"x".to_vec(),
            }],
        };
        let out = m.meta.write(txn).await.unwrap();
        assert!(!out.succeeded, "node {}", m.id);
    }
    for m in &members {
        assert_eq!(get(&m.meta, "k2").await, None);
    }
    let cas = Txn {
        checks: vec![Check::Equals {
            table: T.into(),
            key: "k1".into(),
            value: b"v1".to_vec(),
        }],
        ops: vec![Op::Delete {
            table: T.into(),
            key: "k1".into(),
        }],
    };
    assert!(members[follower].meta.write(cas).await.unwrap().succeeded);
    for m in &members {
        assert_eq!(get(&m.meta, "k1").await, None);
    }

    // One follower down: the other two keep serving.
    let down = members.remove(follower);
    let (down_id, down_addr, down_dir) = stop(down).await;
    for (i, m) in members.iter().enumerate() {
        let key = format!("f{i}");
        assert!(
            m.meta
                .write(put(&key, "while-follower-down"))
                .await
                .unwrap()
                .succeeded
        );
        assert_eq!(
            get(&m.meta, &key).await.as_deref(),
            Some("while-follower-down")
        );
    }
    // It comes back on its address and catches up.
    let l = rebind(down_addr).await;
    let back = start(down_id, &down_dir, l, &voters).await;
    for i in 0..members.len() {
        eventually_local(&back.meta, &format!("f{i}"), "while-follower-down").await;
    }
    assert_eq!(
        get(&back.meta, "f0").await.as_deref(),
        Some("while-follower-down")
    );
    members.push(back);
    let leader = agreed_leader(&members.iter().collect::<Vec<_>>()).await;

    // The leader down: the other two elect a new one and keep serving.
    let idx = members.iter().position(|m| m.id == leader).unwrap();
    let old = members.remove(idx);
    let (old_id, old_addr, old_dir) = stop(old).await;
    let new_leader = agreed_leader(&members.iter().collect::<Vec<_>>()).await;
    assert_ne!(new_leader, old_id);
    for (i, m) in members.iter().enumerate() {
        let key = format!("l{i}");
        assert!(
            m.meta
                .write(put(&key, "while-leader-down"))
                .await
                .unwrap()
                .succeeded
        );
    }
    for m in &members {
        for i in 0..2 {
            assert_eq!(
                get(&m.meta, &format!("l{i}")).await.as_deref(),
                Some("while-leader-down")
            );
        }
    }
    // The old leader comes back as a follower and catches up.
    let l = rebind(old_addr).await;
    let back = start(old_id, &old_dir, l, &voters).await;
    for i in 0..2 {
        eventually_local(&back.meta, &format!("l{i}"), "while-leader-down").await;
    }
    assert_eq!(back.meta.get_local(T, "k1"), None);
    members.push(back);
    agreed_leader(&members.iter().collect::<Vec<_>>()).await;
    assert!(
        members[2]
            .meta
            .write(put("end", "ok"))
            .await
            .unwrap()
            .succeeded
    );
    for m in &members {
        assert_eq!(get(&m.meta, "end").await.as_deref(), Some("ok"));
    }

    for m in members {
        stop(m).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_group_persists_across_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n1");
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let voters: BTreeMap<NodeId, String> = [(1, addr.to_string())].into();

    let m = start(1, &dir, l, &voters).await;
    assert_eq!(m.meta.wait_for_leader(10_000).await.unwrap(), 1);
    let first = m.meta.write(put("a", "1")).await.unwrap();
    assert!(first.succeeded);
    assert!(m.meta.write(put("b", "2")).await.unwrap().succeeded);
    stop(m).await;

    let l = rebind(addr).await;
    let m = start(1, &dir, l, &voters).await;
    // Bootstrapping again is a no-op on an initialized group.
    m.meta.bootstrap().await.unwrap();
    assert_eq!(m.meta.wait_for_leader(10_000).await.unwrap(), 1);
    assert_eq!(m.meta.get_local(T, "a").as_deref(), Some(&b"1"[..]));
    assert_eq!(get(&m.meta, "b").await.as_deref(), Some("2"));
    let next = m.meta.write(put("c", "3")).await.unwrap();
    assert!(next.succeeded);
    assert!(next.log_index > first.log_index);
    let all = m.meta.scan(T, "", None, 10).await.unwrap();
    let keys: Vec<_> = all.into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["a", "b", "c"]);
    let status = m.meta.status();
    assert_eq!(status.leader, Some(1));
    assert_eq!(status.voters, vec![1]);
    assert!(status.last_applied >= Some(next.log_index));
    stop(m).await;
}

#[tokio::test]
async fn non_lowest_node_does_not_bootstrap() {
    let tmp = tempfile::tempdir().unwrap();
    let voters: BTreeMap<NodeId, String> = [
        (1, "127.0.0.1:1".to_string()),
        (2, "127.0.0.1:2".to_string()),
    ]
    .into();
    let meta = Meta::open(config(2, tmp.path(), &voters)).await.unwrap();
    meta.bootstrap().await.unwrap();
    assert!(meta.wait_for_leader(300).await.is_err());
    assert_eq!(meta.status().voters, Vec::<NodeId>::new());
    meta.shutdown().await.unwrap();
}
