//! The volumes a node serves: one [`Volume`] per exported volume record, published as an NBD
//! export named after the volume and kept equal to the records as the meta group changes.

use std::collections::HashMap;
use std::sync::Arc;
use strata_data::DataPlane;
use strata_meta::MetaStore;

use crate::{records, Volume};

/// Cheap to clone; clones share the registry.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    meta: Arc<dyn MetaStore>,
    data: Arc<DataPlane>,
    exports: strata_nbd::Exports,
    /// Serialises syncs; the map of what is served.
    served: tokio::sync::Mutex<HashMap<String, Arc<Volume>>>,
}

impl Registry {
    pub fn new(
        meta: Arc<dyn MetaStore>,
        data: Arc<DataPlane>,
        exports: strata_nbd::Exports,
    ) -> Self {
        Registry {
            inner: Arc::new(Inner {
                meta,
                data,
                exports,
                served: tokio::sync::Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The NBD exports this registry maintains.
    pub fn exports(&self) -> &strata_nbd::Exports {
        &self.inner.exports
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
                    let vol = Volume::new(spec.clone(), self.inner.data.clone());
                    match self.inner.exports.insert(name.clone(), vol.clone()) {
                        Ok(_) => {
                            tracing::info!(volume = %name, "volume exported");
                            served.insert(name.clone(), vol);
                        }
                        Err(e) => {
                            tracing::error!(volume = %name, error = %e, "cannot export volume")
                        }
                    }
                }
            }
        }
        served.retain(|name, _| {
            let keep = wanted.contains_key(name);
            if !keep {
                self.inner.exports.remove(name);
                tracing::info!(volume = %name, "volume export withdrawn");
            }
            keep
        });
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
