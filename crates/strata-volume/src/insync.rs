//! The in-sync set: which replicas of each layer hold every acknowledged write.
//!
//! A replica disk that fails a block write leaves its layer's in-sync set before the write is
//! acknowledged: a meta record `block.stale/<layer>/<disk>` is committed, with a row
//! `block.stale_extents/<layer>/<disk>/<extent>` naming the extent the write was for, and
//! reads never ask the replica again until a resync has copied those extents back and
//! removed the records. Writes still go to stale replicas (best effort, not counted toward
//! the quorum) so a returning node catches up on new writes while its resync copies the
//! missed ones; a stale replica that fails a write during that time changes its record
//! (and adds the extent), which makes a running resync start over.
//!
//! The stale record's value is `e:<token>`; a bare `<token>` (records written before
//! extents were tracked) means the whole layer must be copied.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use strata_meta::{MetaError, MetaStore, Op, Txn};

use crate::records::{STALE_EXTENTS_TABLE, STALE_TABLE};

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
    /// Extents this node recorded as missed, per stale replica.
    recorded: Mutex<HashSet<(u64, u64, u64)>>,
}

pub fn stale_key(layer: u64, disk: u64) -> String {
    format!("{layer}/{disk}")
}

pub fn parse_stale_key(key: &str) -> Option<(u64, u64)> {
    let (l, d) = key.split_once('/')?;
    Some((l.parse().ok()?, d.parse().ok()?))
}

pub fn stale_extent_key(layer: u64, disk: u64, extent: u64) -> String {
    format!("{layer}/{disk}/{extent}")
}

/// Whether a stale record's value lists its extents in [`STALE_EXTENTS_TABLE`].
pub fn tracks_extents(value: &[u8]) -> bool {
    value.starts_with(b"e:")
}

impl InSync {
    pub fn new(meta: Arc<dyn MetaStore>) -> Self {
        let me = InSync {
            inner: Arc::new(Inner {
                meta,
                stale: RwLock::new(BTreeSet::new()),
                remarked: Mutex::new(HashMap::new()),
                recorded: Mutex::new(HashSet::new()),
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

    /// Record that `disk` missed a write of `extent` of `layer`: committed before the caller
    /// acknowledges the write. An already stale replica is re-marked for an extent already
    /// recorded at most once a second per node.
    pub async fn mark(&self, layer: u64, disk: u64, extent: u64) -> Result<(), MetaError> {
        let now = Instant::now();
        let was_stale = self.is_stale(layer, disk);
        let known = {
            let mut rec = self
                .inner
                .recorded
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if !was_stale {
                rec.retain(|&(l, d, _)| (l, d) != (layer, disk));
            }
            rec.contains(&(layer, disk, extent))
        };
        if was_stale && known {
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
                ops: vec![
                    Op::Put {
                        table: STALE_TABLE.into(),
                        key: stale_key(layer, disk),
                        value: format!("e:{token}").into_bytes(),
                    },
                    Op::Put {
                        table: STALE_EXTENTS_TABLE.into(),
                        key: stale_extent_key(layer, disk, extent),
                        value: Vec::new(),
                    },
                ],
            })
            .await?;
        self.inner
            .recorded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((layer, disk, extent));
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
        a.mark(1, 2, 5).await.unwrap();
        assert!(a.is_stale(1, 2));
        assert!(tracks_extents(&meta.get_local(STALE_TABLE, "1/2").unwrap()));
        assert!(meta.get_local(STALE_EXTENTS_TABLE, "1/2/5").is_some());
        // Another node's view picks the record up from the meta group.
        let b = InSync::new(meta.clone());
        assert!(b.is_stale(1, 2) && !b.is_stale(1, 3));
        // A re-mark of the same extent within a second is not written again; another extent
        // is, at once.
        let before = meta.get_local(STALE_TABLE, "1/2");
        a.mark(1, 2, 5).await.unwrap();
        assert_eq!(meta.get_local(STALE_TABLE, "1/2"), before);
        a.mark(1, 2, 9).await.unwrap();
        assert_ne!(meta.get_local(STALE_TABLE, "1/2"), before);
        assert!(meta.get_local(STALE_EXTENTS_TABLE, "1/2/9").is_some());
    }
}
