//! vhost-user-blk sockets for served volumes: one Unix socket per volume,
//! `<vhost-user dir>/<volume>.sock`, from the moment the registry publishes the volume
//! until it withdraws it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use strata_volume::{Frontend, Volume};
use tokio_util::sync::CancellationToken;

/// Longest path a Unix socket address holds (`sun_path` less its NUL).
const MAX_SOCKET_PATH: usize = 107;

pub struct VhostSockets {
    dir: PathBuf,
    running: Mutex<HashMap<String, CancellationToken>>,
}

impl VhostSockets {
    pub fn new(dir: PathBuf) -> std::io::Result<Arc<Self>> {
        std::fs::create_dir_all(&dir)?;
        Ok(Arc::new(VhostSockets {
            dir,
            running: Mutex::new(HashMap::new()),
        }))
    }

    /// Where a volume's socket is.
    pub fn socket_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.sock"))
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, CancellationToken>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Frontend for VhostSockets {
    fn publish(&self, name: &str, volume: Arc<Volume>) -> Result<(), String> {
        let path = self.socket_path(name);
        if path.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(format!(
                "vhost-user socket path {} is longer than {MAX_SOCKET_PATH} bytes",
                path.display()
            ));
        }
        let token = CancellationToken::new();
        if let Some(old) = self.running().insert(name.to_string(), token.clone()) {
            old.cancel();
        }
        let volume_name = name.to_string();
        tokio::spawn(async move {
            match strata_vhost::serve(&path, volume, token).await {
                Ok(()) => tracing::info!(volume = %volume_name, "vhost-user-blk socket closed"),
                Err(e) => tracing::error!(volume = %volume_name, socket = %path.display(),
                    error = %e, "vhost-user-blk socket failed"),
            }
        });
        Ok(())
    }

    fn withdraw(&self, name: &str) {
        if let Some(token) = self.running().remove(name) {
            token.cancel();
        }
    }
}
