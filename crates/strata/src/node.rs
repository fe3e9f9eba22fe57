//! Wiring one node: disks, the meta group, the data plane, the rpc server and
//! the HTTP gateways.

use crate::config::NodeConfig;
use crate::ServeArgs;
use anyhow::Context;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use strata_data::{DataConfig, DataPlane, StorageService, Topology};
use strata_disk::{Disk, DiskConfig};
use strata_identity::{CatalogConfig, Identity};
use strata_meta::{Check, Meta, MetaConfig, MetaStore, Op, Txn};
use strata_placement::{Device, Ring, RingSpec};
use strata_swift::SwiftGateway;

/// Meta table holding the ring spec under [`RING_KEY`].
pub const CLUSTER_TABLE: &str = "cluster";
pub const RING_KEY: &str = "ring";
/// Meta table of node records, keyed by node id.
pub const NODES_TABLE: &str = "cluster.nodes";

/// What a node publishes about itself in the meta group.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NodeRecord {
    pub id: u64,
    pub rpc: String,
    pub zone: String,
    pub swift_url: String,
    pub keystone_url: String,
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let cfg = match &args.config {
        Some(path) => NodeConfig::load(path)?,
        None => NodeConfig::default(),
    };
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    let password = admin_password(&cfg, args.admin_password.clone())?;

    let disks = open_disks(&cfg)?;
    let members = cfg.members();
    let voters: BTreeMap<u64, String> = members.iter().map(|m| (m.id, m.rpc.clone())).collect();
    let meta = Meta::open(MetaConfig {
        node_id: cfg.node_id,
        dir: cfg.data_dir.join("meta"),
        voters,
        heartbeat_interval_ms: 150,
        election_timeout_min_ms: 600,
        election_timeout_max_ms: 1200,
    })
    .await
    .context("opening the meta group")?;

    let data = DataPlane::new(
        DataConfig {
            node_id: cfg.node_id,
            write_quorum: usize::from(cfg.cluster.write_quorum),
            rpc_timeout_ms: 10_000,
            hint_interval_ms: 1_000,
        },
        disks,
    );

    let rpc_addr = cfg.rpc_addr();
    let rpc_listener = tokio::net::TcpListener::bind(&rpc_addr)
        .await
        .with_context(|| format!("binding rpc {rpc_addr}"))?;
    let rpc = tonic::transport::Server::builder()
        .add_service(meta.raft_service())
        .add_service(StorageService::server(data.clone()))
        .add_service(crate::admin::AdminService::server(
            meta.clone(),
            data.clone(),
        ))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(rpc_listener));
    tokio::spawn(async move {
        if let Err(e) = rpc.await {
            tracing::error!(error = %e, "rpc server stopped");
        }
    });
    tracing::info!(node = cfg.node_id, %rpc_addr, "rpc listening");

    meta.bootstrap()
        .await
        .context("bootstrapping the meta group")?;
    let leader = wait_leader(&meta).await?;
    tracing::info!(leader, "meta group has a leader");

    let ring = ensure_ring(meta.as_ref(), &cfg).await?;
    let addrs: HashMap<u64, String> = members.iter().map(|m| (m.id, m.rpc.clone())).collect();
    data.set_topology(Topology {
        ring: Arc::new(ring),
        addrs: addrs.clone(),
    });
    spawn_ring_watcher(meta.clone(), data.clone(), addrs);
    data.spawn_hint_replayer();

    let nbd_addr = format!("{}:{}", cfg.bind, cfg.ports.nbd);
    let nbd_listener = tokio::net::TcpListener::bind(&nbd_addr)
        .await
        .with_context(|| format!("binding nbd {nbd_addr}"))?;
    let store: Arc<dyn MetaStore> = meta.clone();
    let exports = strata_nbd::Exports::new();
    let vhost_dir = cfg
        .vhost_user_dir
        .clone()
        .unwrap_or_else(|| cfg.data_dir.join("vhost-user"));
    let vhost = crate::vhost::VhostSockets::new(vhost_dir.clone())
        .with_context(|| format!("creating {}", vhost_dir.display()))?;
    let volumes = strata_volume::Registry::new(
        store.clone(),
        data.clone(),
        vec![Arc::new(exports.clone()), vhost],
    );
    volumes.spawn_follower(meta.subscribe_applied());
    strata_volume::resync::spawn_resyncer(
        store.clone(),
        data.clone(),
        volumes.insync().clone(),
        Duration::from_secs(5),
        Duration::from_secs(2),
    );
    strata_volume::gc::spawn_collector(store.clone(), data.clone(), Duration::from_secs(5));
    // The same exports on a Unix socket, for clients on this host (no TCP stack in the
    // way). A path too long for a socket address only costs that listener.
    let nbd_sock = cfg.data_dir.join("nbd.sock");
    let _ = std::fs::remove_file(&nbd_sock);
    match tokio::net::UnixListener::bind(&nbd_sock) {
        Ok(listener) => {
            let exports = exports.clone();
            tokio::spawn(async move {
                if let Err(e) = strata_nbd::serve_unix(listener, exports).await {
                    tracing::error!(error = %e, "nbd unix socket server stopped");
                }
            });
        }
        Err(e) => {
            tracing::warn!(path = %nbd_sock.display(), error = %e, "no NBD unix socket")
        }
    }
    tokio::spawn(async move {
        if let Err(e) = strata_nbd::serve_tcp(nbd_listener, exports).await {
            tracing::error!(error = %e, "nbd server stopped");
        }
    });
    tracing::info!(%nbd_addr, "nbd listening");

    let host = cfg.public_host().to_string();
    let swift_url = format!("http://{host}:{}", cfg.ports.swift);
    let keystone_url = format!("http://{host}:{}", cfg.ports.keystone);
    let cinder_url = format!("http://{host}:{}", cfg.ports.cinder);
    let compute_url = format!("http://{host}:{}", cfg.ports.compute);
    let image_url = format!("http://{host}:{}", cfg.ports.glance);
    publish_node(meta.as_ref(), &cfg, &swift_url, &keystone_url).await?;

    let identity = Identity::new(
        store.clone(),
        CatalogConfig {
            region: "RegionOne".into(),
            identity_url: keystone_url.clone(),
            object_store_url: swift_url.clone(),
            volume_url: cinder_url.clone(),
            // The compute port serves only Nova's os-volumes family so far: it stays out
            // of the catalog.
            compute_url: None,
            image_url: Some(image_url.clone()),
        },
    );
    identity
        .bootstrap(&password)
        .await
        .context("bootstrapping identity")?;

    let objects = strata_object::ObjectService::new(data.clone(), store.clone());
    let swift = strata_swift::router(Arc::new(SwiftGateway {
        objects: objects.clone(),
        identity: identity.clone(),
    }));
    let keystone = identity.router();
    // Scratch files of image conversions; whatever a crash left there is stale.
    let scratch = cfg.data_dir.join("scratch");
    let _ = std::fs::remove_dir_all(&scratch);
    let images = strata_image::data::ImageData {
        meta: store.clone(),
        data: data.clone(),
        insync: volumes.insync().clone(),
        scratch,
    };
    let glance = strata_glance::router(Arc::new(strata_glance::GlanceGateway {
        meta: store.clone(),
        images: images.clone(),
        auth: identity.clone(),
        public_url: image_url.clone(),
    }));
    let cinder_gw = Arc::new(strata_cinder::CinderGateway {
        meta: store,
        volumes,
        data: data.clone(),
        objects,
        images,
        auth: identity.clone(),
        public_url: cinder_url.clone(),
        nbd_host: host.clone(),
        nbd_port: cfg.ports.nbd,
        vhost_user_dir: Some(vhost_dir.clone()),
    });
    let cinder = strata_cinder::router(cinder_gw.clone());
    let compute = strata_cinder::nova::router(cinder_gw);

    let swift_addr = format!("{}:{}", cfg.bind, cfg.ports.swift);
    let keystone_addr = format!("{}:{}", cfg.bind, cfg.ports.keystone);
    let swift_listener = tokio::net::TcpListener::bind(&swift_addr)
        .await
        .with_context(|| format!("binding swift {swift_addr}"))?;
    let keystone_listener = tokio::net::TcpListener::bind(&keystone_addr)
        .await
        .with_context(|| format!("binding keystone {keystone_addr}"))?;
    let cinder_addr = format!("{}:{}", cfg.bind, cfg.ports.cinder);
    let cinder_listener = tokio::net::TcpListener::bind(&cinder_addr)
        .await
        .with_context(|| format!("binding cinder {cinder_addr}"))?;
    let compute_addr = format!("{}:{}", cfg.bind, cfg.ports.compute);
    let compute_listener = tokio::net::TcpListener::bind(&compute_addr)
        .await
        .with_context(|| format!("binding compute {compute_addr}"))?;
    let glance_addr = format!("{}:{}", cfg.bind, cfg.ports.glance);
    let glance_listener = tokio::net::TcpListener::bind(&glance_addr)
        .await
        .with_context(|| format!("binding glance {glance_addr}"))?;
    tracing::info!(%swift_url, %keystone_url, "gateways listening");
    println!("strata node {} ready", cfg.node_id);
    println!("  swift:    {swift_url}/v1/AUTH_<project_id>  (TempAuth: {swift_url}/auth/v1.0)");
    println!("  keystone: {keystone_url}/v3");
    println!("  cinder:   {cinder_url}/v3/<project_id>  (and /v2)");
    println!("  glance:   {image_url}/v2");
    println!("  nbd:      nbd://{host}:{}/<volume>", cfg.ports.nbd);
    println!(
        "            nbd+unix:///<volume>?socket={}",
        nbd_sock.display()
    );
    println!("  vhost:    {}/<volume>.sock", vhost_dir.display());
    println!("  compute:  {compute_url}/v2.1/<project_id>/os-volumes  (os-volumes family only)");
    println!("  admin:    user admin, project admin, domain Default");

    // Served through hyper's HTTP/1 builder (see `strata_api::http1`): TCP_NODELAY, the
    // peer address for TempURL's `temp_url_ip_range`, Swift's wire conventions.
    let swift_srv = strata_api::http1::serve(swift_listener, strata_api::with_request_id(swift));
    let keystone_srv =
        strata_api::http1::serve(keystone_listener, strata_api::with_request_id(keystone));
    let cinder_srv = strata_api::http1::serve(cinder_listener, strata_api::with_request_id(cinder));
    let compute_srv =
        strata_api::http1::serve(compute_listener, strata_api::with_request_id(compute));
    let glance_srv = strata_api::http1::serve(glance_listener, strata_api::with_request_id(glance));
    tokio::select! {
        r = glance_srv => r.context("glance gateway stopped")?,
        r = swift_srv => r.context("swift gateway stopped")?,
        r = keystone_srv => r.context("keystone gateway stopped")?,
        r = cinder_srv => r.context("cinder gateway stopped")?,
        r = compute_srv => r.context("compute gateway stopped")?,
        _ = shutdown_signal() => tracing::info!("shutting down"),
    }
    meta.shutdown().await.ok();
    Ok(())
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The admin password: flag or environment, else the config, else the one
/// generated at this node's first start (kept in `<data-dir>/admin-password`).
fn admin_password(cfg: &NodeConfig, given: Option<String>) -> anyhow::Result<String> {
    if let Some(p) = given.or_else(|| cfg.admin_password.clone()) {
        return Ok(p);
    }
    let path = cfg.data_dir.join("admin-password");
    if let Ok(p) = std::fs::read_to_string(&path) {
        let p = p.trim().to_string();
        println!("admin password (from {}): {p}", path.display());
        return Ok(p);
    }
    let p = hex::encode(rand::random::<[u8; 12]>());
    write_private(&path, &p)?;
    println!(
        "generated admin password: {p}  (saved in {})",
        path.display()
    );
    Ok(p)
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

fn open_disks(cfg: &NodeConfig) -> anyhow::Result<BTreeMap<u64, Arc<Disk>>> {
    let mut disks = BTreeMap::new();
    for (i, d) in cfg.disks.iter().enumerate() {
        let id = cfg.node_id * 1000 + i as u64;
        let disk = Disk::open(DiskConfig {
            dir: cfg.data_dir.join(&d.path),
            device: d.device.clone(),
            capacity_bytes: d.capacity_bytes,
            force_syscall_io: false,
            read_cache_bytes: d.read_cache_bytes,
            straighten_idle_ms: d.straighten_idle_ms,
        })
        .with_context(|| format!("opening disk {}", d.path.display()))?;
        tracing::info!(disk = id, backend = disk.usage().io_backend, "disk open");
        disks.insert(id, disk);
    }
    Ok(disks)
}

async fn wait_leader(meta: &Meta) -> anyhow::Result<u64> {
    // A restarted cluster may need a few election rounds while peers come back.
    for _ in 0..600 {
        if let Ok(l) = meta.wait_for_leader(1_000).await {
            return Ok(l);
        }
    }
    anyhow::bail!("no meta leader after 10 minutes")
}

/// The ring spec the configuration describes (version 1).
fn configured_ring(cfg: &NodeConfig) -> RingSpec {
    let devices = cfg
        .members()
        .iter()
        .flat_map(|m| {
            (0..m.disks).map(move |i| Device {
                id: m.id * 1000 + u64::from(i),
                node: m.id,
                zone: m.zone.clone(),
                weight: m.weight,
            })
        })
        .collect();
    RingSpec {
        version: 1,
        part_power: cfg.cluster.part_power,
        replicas: cfg.cluster.replicas,
        devices,
    }
}

/// Load the ring from the meta group, storing the configured one first if
/// the cluster has none yet.
async fn ensure_ring(meta: &dyn MetaStore, cfg: &NodeConfig) -> anyhow::Result<Ring> {
    let spec = configured_ring(cfg);
    let encoded = serde_json::to_vec(&spec)?;
    meta.write(Txn {
        checks: vec![Check::Absent {
            table: CLUSTER_TABLE.into(),
            key: RING_KEY.into(),
        }],
        ops: vec![Op::Put {
            table: CLUSTER_TABLE.into(),
            key: RING_KEY.into(),
            value: encoded,
        }],
    })
    .await
    .context("storing the ring")?;
    let stored = meta
        .get(CLUSTER_TABLE, RING_KEY)
        .await
        .context("reading the ring")?
        .context("ring missing after it was stored")?;
    let spec: RingSpec = serde_json::from_slice(&stored).context("decoding the ring")?;
    Ok(Ring::new(spec)?)
}

fn spawn_ring_watcher(meta: Arc<Meta>, data: Arc<DataPlane>, addrs: HashMap<u64, String>) {
    let mut applied = meta.subscribe_applied();
    tokio::spawn(async move {
        let mut version = data.topology().map(|t| t.ring.version()).unwrap_or(0);
        while applied.changed().await.is_ok() {
            let Some(raw) = meta.get_local(CLUSTER_TABLE, RING_KEY) else {
                continue;
            };
            let Ok(spec) = serde_json::from_slice::<RingSpec>(&raw) else {
                continue;
            };
            if spec.version == version {
                continue;
            }
            match Ring::new(spec) {
                Ok(ring) => {
                    version = ring.version();
                    tracing::info!(version, "ring updated");
                    data.set_topology(Topology {
                        ring: Arc::new(ring),
                        addrs: addrs.clone(),
                    });
                }
                Err(e) => tracing::error!(error = %e, "refusing an invalid ring"),
            }
        }
    });
}

async fn publish_node(
    meta: &dyn MetaStore,
    cfg: &NodeConfig,
    swift_url: &str,
    keystone_url: &str,
) -> anyhow::Result<()> {
    let rec = NodeRecord {
        id: cfg.node_id,
        rpc: cfg.rpc_addr(),
        zone: cfg.zone.clone(),
        swift_url: swift_url.into(),
        keystone_url: keystone_url.into(),
    };
    let value = serde_json::to_vec(&rec)?;
    let key = cfg.node_id.to_string();
    if meta.get_local(NODES_TABLE, &key).as_deref() == Some(value.as_slice()) {
        return Ok(());
    }
    meta.write(Txn {
        checks: vec![],
        ops: vec![Op::Put {
            table: NODES_TABLE.into(),
            key,
            value,
        }],
    })
    .await
    .context("publishing this node")?;
    Ok(())
}
