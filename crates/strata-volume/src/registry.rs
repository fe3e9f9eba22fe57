//! The volumes a node serves: one [`Volume`] per exported volume record, published to every
//! [`Frontend`] (the NBD export table, the vhost-user-blk sockets) under the volume's name and
//! kept equal to the records as the meta group changes.

use std::collections::HashMap;
use std::sync::Arc;
use strata_data::DataPlane;
use strata_meta::MetaStore;

use crate::{records, InSync, Volume};
use strata_nbd::BlockTarget;

/// How long withdrawing an export waits for its cache to be written back.
const WITHDRAW_FLUSH: std::time::Duration = std::time::Duration::from_secs(30);

/// Something that offers served volumes to clients under their names.
pub trait Frontend: Send + Sync + 'static {
    /// Start offering `volume` as `name` (it was not offered before).
    fn publish(&self, name: &str, volume: Arc<Volume>) -> Result<(), String>;
    /// Stop offering `name`; clients already connected may finish.
    fn withdraw(&self, name: &str);
}

impl Frontend for strata_nbd::Exports {
    fn publish(&self, name: &str, volume: Arc<Volume>) -> Result<(), String> {
        self.insert(name, volume)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn withdraw(&self, name: &str) {
        self.remove(name);
    }
}

/// Cheap to clone; clones share the registry.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    meta: Arc<dyn MetaStore>,
    data: Arc<DataPlane>,
    frontends: Vec<Arc<dyn Frontend>>,
    insync: InSync,
    /// Serialises syncs; the map of what is served.
    served: tokio::sync::Mutex<HashMap<String, Arc<Volume>>>,
}

impl Registry {
    pub fn new(
        meta: Arc<dyn MetaStore>,
        data: Arc<DataPlane>,
        frontends: Vec<Arc<dyn Frontend>>,
    ) -> Self {
        Registry {
            inner: Arc::new(Inner {
                insync: InSync::new(meta.clone()),
                meta,
                data,
                frontends,
                served: tokio::sync::Mutex::new(HashMap::new()),
            }),
        }
    }

    /// This node's view of the in-sync set, for volumes opened outside the registry.
    pub fn insync(&self) -> &InSync {
        &self.inner.insync
    }

    /// A served volume by name.
    pub async fn get(&self, name: &str) -> Option<Arc<Volume>> {
        self.inner.served.lock().await.get(name).cloned()
    }

    /// Make the served set equal to the exported records this node has applied: export new
    /// ones, swap changed records into served volumes (after their in-flight I/O), withdraw
    /// the rest. Callers that just changed a record call this before they answer, so their
    /// change is in force on this node when they do.
    pub async fn sync(&self) {
        let mut served = self.inner.served.lock().await;
        self.inner.insync.reload();
        let wanted: HashMap<String, records::VolumeSpec> =
            records::list_local(self.inner.meta.as_ref())
                .into_iter()
                .filter(|s| s.exported)
                .map(|s| (s.name.clone(), s))
                .collect();
        for (name, spec) in &wanted {
            match served.get(name) {
                Some(vol) => {
                    if &vol.spec().await != spec {
                        vol.update(spec.clone()).await;
                        tracing::info!(volume = %name, size = spec.size_bytes,
                            layers = spec.parents.len() + 1, "served volume updated");
                    }
                }
                None => {
                    let vol = Volume::new(
                        spec.clone(),
                        self.inner.data.clone(),
                        self.inner.insync.clone(),
                    );
                    for f in &self.inner.frontends {
                        if let Err(e) = f.publish(name, vol.clone()) {
                            tracing::error!(volume = %name, error = %e, "cannot offer volume");
                        }
                    }
                    tracing::info!(volume = %name, "volume exported");
                    served.insert(name.clone(), vol);
                }
            }
        }
        let gone: Vec<String> = served
            .keys()
            .filter(|n| !wanted.contains_key(*n))
            .cloned()
            .collect();
        for name in gone {
            let Some(vol) = served.remove(&name) else {
                continue;
            };
            for f in &self.inner.frontends {
                f.withdraw(&name);
            }
            // A deleted volume's blocks would land in layers the collector may already have
            // freed: drop them. An unexported one is written back before the change is
            // answered, so what reads the volume next (a backup, another node) sees every
            // write its last client made.
            if matches!(
                records::get_local(self.inner.meta.as_ref(), &name),
                Ok(None)
            ) {
                vol.discard().await;
            } else {
                match tokio::time::timeout(WITHDRAW_FLUSH, vol.flush()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!(volume = %name, error = %e,
                        "cannot write back a withdrawn volume's cache; still retrying"),
                    Err(_) => tracing::error!(volume = %name,
                        "writing back a withdrawn volume's cache is taking long; still retrying"),
                }
            }
            tracing::info!(volume = %name, "volume export withdrawn");
        }
    }

    /// Follow the meta group: sync after every applied change until `applied` closes.
    pub fn spawn_follower(&self, mut applied: tokio::sync::watch::Receiver<u64>) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                me.sync().await;
                if applied.changed().await.is_err() {
                    return;
                }
            }
        });
    }
}
