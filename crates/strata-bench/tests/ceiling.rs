//! The generator against the in-memory endpoint for about a second.

use std::sync::Arc;
use std::time::Duration;
use strata_bench::load::{self, Op, Workload};
use strata_bench::{client, memserver};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generator_drives_the_memory_endpoint() {
    let mem = memserver::MemServer::start().await.unwrap();
    let ep = client::tempauth(&mem.auth_url(), memserver::USER, memserver::KEY)
        .await
        .unwrap();
    assert!(ep.storage.path.ends_with("/v1/AUTH_mem"));
    client::ensure_container(&ep, "c").await.unwrap();
    let me = std::process::id();
    let mut w = Workload {
        op: Op::Put,
        size: 4096,
        concurrency: 4,
        duration: Duration::from_millis(500),
        max_ops: 1_000_000,
        container: "c".into(),
        prefix: "o".into(),
        names: Arc::new(Vec::new()),
    };
    let (put, names) = load::run("mem", &ep, &w, &[me]).await.unwrap();
    assert_eq!(put.errors, 0, "{:?}", put.error_kinds);
    assert!(put.ops > 100, "only {} PUTs", put.ops);
    assert_eq!(names.len() as u64, put.ops);
    assert!(put.lat_p50_ms <= put.lat_p99_ms && put.lat_p99_ms <= put.lat_p999_ms);
    assert!(put.server_cpu_ms_per_op.unwrap() >= 0.0);

    w.op = Op::Get;
    w.names = Arc::new(names);
    let (get, _) = load::run("mem", &ep, &w, &[]).await.unwrap();
    assert_eq!(get.errors, 0, "{:?}", get.error_kinds);
    assert!(get.ops > 100);
    assert!(
        (get.mib_per_s - get.ops_per_s * 4096.0 / 1048576.0).abs() < 1e-6 * get.mib_per_s.max(1.0)
    );

    w.op = Op::Head;
    w.max_ops = 50;
    let (head, _) = load::run("mem", &ep, &w, &[]).await.unwrap();
    assert_eq!((head.ops, head.errors), (50, 0));

    w.op = Op::Delete;
    w.max_ops = 1_000_000;
    let n = w.names.len() as u64;
    let (del, _) = load::run("mem", &ep, &w, &[]).await.unwrap();
    assert_eq!(del.ops + del.errors, n.min(del.ops + del.errors));
    assert_eq!(del.errors, 0);

    w.op = Op::List;
    w.max_ops = 20;
    let (list, _) = load::run("mem", &ep, &w, &[]).await.unwrap();
    assert_eq!(list.ops, 20);
}
