//! The in-sync set: which replicas of each layer hold every acknowledged write.
//!
//! A replica disk that fails a block write leaves its layer's in-sync set before the write is
//! acknowledged: a meta record `block.stale/<layer>/<disk>` is committed, and reads never ask
//! it again until a resync has copied the layer back and removed the record. Writes still go
//! to stale replicas (best effort, not counted toward the quorum) so a returning node catches
//! up on new writes while its resync copies the old ones; a stale replica that fails a write
//! during that time changes its record, which makes a running resync start over.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use strata_meta::{MetaError, MetaStore, Op, Txn};

use crate::records::STALE_TABLE;

/// How often one node may re-mark a replica that is already stale.
const REMARK_EVERY: Duration = Duration::from_secs(1);

/// This node's view of the stale replicas. Cheap to clone; clones share it.
#[derive(Clone)]
pub struct InSync {
    inner: Arc<Inner>,
}

struct Inner {
    meta: Arc<dyn MetaStore>,
    stale: RwLock<BTreeSet<(u64, u64)>>,
    remarked: Mutex<HashMap<(u64, u64), Instant>>,
}

pub fn stale_key(layer: u64, disk: u64) -> String {
    format!("{layer}/{disk}")
}

pub fn parse_stale_key(key: &str) -> Option<(u64, u64)> {
    let (l, d) = key.split_once('/')?;
    Some((l.parse().ok()?, d.parse().ok()?))
}

impl InSync {
    pub fn new(meta: Arc<dyn MetaStore>) -> Self {
        let me = InSync {
            inner: Arc::new(Inner {
                meta,
                stale: RwLock::new(BTreeSet::new()),
                remarked: Mutex::new(HashMap::new()),
            }),
        };
        me.reload();
        me
    }

    /// Whether `disk`'s copy of `layer` may lack acknowledged writes.
    pub fn is_stale(&self, layer: u64, disk: u64) -> bool {
        self.inner
            .stale
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&(layer, disk))
    }

    /// Rebuild the view from the records this node has applied.
    pub fn reload(&self) {
        let set: BTreeSet<(u64, u64)> = self
            .inner
            .meta
            .scan_local(STALE_TABLE, "", None, usize::MAX)
            .iter()
            .filter_map(|(k, _)| parse_stale_key(k))
            .collect();
        *self.inner.stale.write().unwrap_or_else(|e| e.into_inner()) = set;
    }

    /// Record that `disk` missed a write of `layer`: committed before the caller acknowledges
    /// the write. An already stale replica is re-marked at most once a second per node.
    pub async fn mark(&self, layer: u64, disk: u64) -> Result<(), MetaError> {
        let now = Instant::now();
        let was_stale = self.is_stale(layer, disk);
        if was_stale {
            let mut remarked = self
                .inner
                .remarked
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if remarked
                .get(&(layer, disk))
                .is_some_and(|t| now.duration_since(*t) < REMARK_EVERY)
            {
                return Ok(());
            }
            remarked.insert((layer, disk), now);
        }
        let token: u64 = rand::random();
        self.inner
            .meta
            .write(Txn {
                checks: vec![],
                ops: vec![Op::Put {
                    table: STALE_TABLE.into(),
                    key: stale_key(layer, disk),
                    value: token.to_string().into_bytes(),
                }],
            })
            .await?;
        self.inner
            .remarked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((layer, disk), now);
        // The registry may already have reloaded the record; what counts is that this call
        // moved the replica out.
        self.inner
            .stale
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert((layer, disk));
        if !was_stale {
            tracing::warn!(
                layer,
                disk,
                "replica left the in-sync set of a volume layer"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_meta::MemMeta;

    #[test]
    fn stale_keys_round_trip() {
        assert_eq!(parse_stale_key(&stale_key(7, 3000)), Some((7, 3000)));
        assert_eq!(parse_stale_key("7"), None);
        assert_eq!(parse_stale_key("x/1"), None);
    }

    #[tokio::test]
    async fn marking_is_recorded_and_seen_by_a_reload() {
        let meta: Arc<dyn MetaStore> = Arc::new(MemMeta::new());
        let a = InSync::new(meta.clone());
        assert!(!a.is_stale(1, 2));
        a.mark(1, 2).await.unwrap();
        assert!(a.is_stale(1, 2));
        // Another node's view picks the record up from the meta group.
        let b = InSync::new(meta.clone());
        assert!(b.is_stale(1, 2) && !b.is_stale(1, 3));
        // A re-mark within a second is not written again.
        let before = meta.get_local(STALE_TABLE, "1/2");
        a.mark(1, 2).await.unwrap();
        assert_eq!(meta.get_local(STALE_TABLE, "1/2"), before);
    }
}
