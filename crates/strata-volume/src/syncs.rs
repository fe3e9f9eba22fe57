//! Flushes that share disk syncs: the disks of this node that took a volume's unsynced writes
//! are synced by one flush at a time, and every flush that asks while a sync runs is covered
//! by the next one, which one of them starts. So concurrent flushes cost two syncs, not one
//! each.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Mutex, MutexGuard};
use strata_types::DiskId;
use tokio::sync::Notify;

#[derive(Default)]
pub(crate) struct SyncGroup {
    state: Mutex<State>,
    done: Notify,
}

#[derive(Default)]
struct State {
    /// Disks holding unsynced writes of the volume.
    disks: BTreeSet<DiskId>,
    /// Flushes that asked so far (the last one's number).
    asked: u64,
    /// Every flush up to this number is covered by a sync that succeeded.
    synced: u64,
    /// A sync runs.
    running: bool,
    /// The last sync that failed: the flushes up to this number get its error.
    failed: Option<(u64, String)>,
}

/// The running sync: if its future is dropped, the disks it had not synced go back to the
/// set and another flush may start a sync.
struct Running<'a> {
    group: &'a SyncGroup,
    upto: u64,
    left: Vec<DiskId>,
    outcome: Option<Result<(), String>>,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut s = self.group.lock();
        s.running = false;
        s.disks.extend(self.left.drain(..));
        match self.outcome.take() {
            Some(Ok(())) => s.synced = s.synced.max(self.upto),
            Some(Err(e)) => s.failed = Some((self.upto, e)),
            None => {}
        }
        drop(s);
        self.group.done.notify_waiters();
    }
}

impl SyncGroup {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A write of the volume went to `disk` unsynced.
    pub fn note(&self, disk: DiskId) {
        self.lock().disks.insert(disk);
    }

    /// Make every unsynced write noted before this call durable, with `sync_disk`.
    pub async fn sync<F, Fut>(&self, sync_disk: F) -> Result<(), String>
    where
        F: Fn(DiskId) -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let me = {
            let mut s = self.lock();
            s.asked += 1;
            s.asked
        };
        loop {
            let notified = self.done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let mut run = {
                let mut s = self.lock();
                if s.synced >= me {
                    return Ok(());
                }
                if let Some((upto, e)) = &s.failed {
                    if *upto >= me {
                        return Err(e.clone());
                    }
                }
                if s.running {
                    None
                } else {
                    s.running = true;
                    let left: Vec<DiskId> = std::mem::take(&mut s.disks).into_iter().collect();
                    Some(Running {
                        group: self,
                        upto: s.asked,
                        left,
                        outcome: None,
                    })
                }
            };
            match &mut run {
                None => notified.await,
                Some(r) => {
                    let mut outcome = Ok(());
                    while let Some(&disk) = r.left.first() {
                        if let Err(e) = sync_disk(disk).await {
                            outcome = Err(e);
                            break;
                        }
                        r.left.remove(0);
                    }
                    r.outcome = Some(outcome);
                    drop(run);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn flushes_that_ask_during_a_sync_share_the_next_one() {
        let g = Arc::new(SyncGroup::default());
        let syncs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (g, syncs) = (g.clone(), syncs.clone());
            tasks.push(tokio::spawn(async move {
                // Each flush follows a write of its own.
                g.note(1);
                g.sync(|_| {
                    let syncs = syncs.clone();
                    async move {
                        syncs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Ok(())
                    }
                })
                .await
            }));
        }
        for t in tasks {
            t.await.expect("task").expect("synced");
        }
        // The first flush's sync, then one for all who asked meanwhile.
        assert_eq!(syncs.load(Ordering::SeqCst), 2);
        assert!(g.lock().disks.is_empty());
    }

    #[tokio::test]
    async fn a_failed_sync_fails_its_flushes_and_keeps_the_disks_for_the_next() {
        let g = SyncGroup::default();
        g.note(3);
        g.note(4);
        let err = g
            .sync(|d| async move {
                if d == 4 {
                    Err("disk 4 failed".to_string())
                } else {
                    Ok(())
                }
            })
            .await;
        assert_eq!(err, Err("disk 4 failed".into()));
        assert_eq!(g.lock().disks.iter().copied().collect::<Vec<_>>(), vec![4]);
        let seen = Mutex::new(Vec::new());
        g.sync(|d| {
            seen.lock().unwrap().push(d);
            async { Ok(()) }
        })
        .await
        .expect("second sync");
        assert_eq!(*seen.lock().unwrap(), vec![4]);
    }

    #[tokio::test]
    async fn a_sync_whose_flush_goes_away_leaves_its_disks_for_the_next() {
        let g = SyncGroup::default();
        g.note(9);
        let slow = g.sync(|_| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(())
        });
        assert!(tokio::time::timeout(Duration::from_millis(20), slow)
            .await
            .is_err());
        let seen = Mutex::new(Vec::new());
        g.sync(|d| {
            seen.lock().unwrap().push(d);
            async { Ok(()) }
        })
        .await
        .expect("sync");
        assert_eq!(*seen.lock().unwrap(), vec![9]);
    }
}
