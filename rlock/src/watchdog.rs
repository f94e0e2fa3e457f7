//! Lease renewal for watchdog locks: one task per client renews every lock it holds, in
//! batches, every third of the watchdog timeout (Redisson's `LockTask`). Renewal is keyed by
//! owner and acquisition token, and a lock is taken off the list under the owner's state lock
//! right after its release script deleted it, so no renewal outlives an unlock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::client::ClientInner;
use crate::scripts;

/// What a guard knows about its lease: valid until `valid_until` unless `lost`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LeaseState {
    pub(crate) valid_until: Instant,
    pub(crate) lost: bool,
}

impl LeaseState {
    /// Lost: marked so by a renewal, or past its validity.
    pub(crate) fn is_lost(&self) -> bool {
        self.lost || Instant::now() >= self.valid_until
    }
}

/// Shared sender of one acquisition's lease state.
pub(crate) type LeaseSender = Arc<watch::Sender<LeaseState>>;

#[derive(Debug)]
struct RenewEntry {
    token: u64,
    lease: LeaseSender,
}

/// The locks this client renews, by (lock key, owner).
#[derive(Debug, Default)]
pub(crate) struct Watchdog {
    entries: Mutex<HashMap<(String, String), RenewEntry>>,
}

impl Watchdog {
    fn entries(&self) -> MutexGuard<'_, HashMap<(String, String), RenewEntry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn register(&self, key: &str, owner: &str, token: u64, lease: LeaseSender) {
        self.entries().insert(
            (key.to_owned(), owner.to_owned()),
            RenewEntry { token, lease },
        );
    }

    /// Stop renewing (key, owner) if it is still registered for `token`.
    pub(crate) fn deregister(&self, key: &str, owner: &str, token: u64) {
        let mut entries = self.entries();
        let k = (key.to_owned(), owner.to_owned());
        if entries.get(&k).is_some_and(|e| e.token == token) {
            entries.remove(&k);
        }
    }

    /// Whether (key, owner) is still renewed for `token`.
    fn is_registered(&self, key: &str, owner: &str, token: u64) -> bool {
        self.entries()
            .get(&(key.to_owned(), owner.to_owned()))
            .is_some_and(|e| e.token == token)
    }

    /// Number of locks being renewed (for tests and metrics).
    pub(crate) fn len(&self) -> usize {
        self.entries().len()
    }
}

/// Resolves when the lease behind `rx` is lost: marked lost, or past its validity without a
/// renewal (and never while it keeps being renewed).
pub(crate) async fn lost(mut rx: watch::Receiver<LeaseState>) {
    loop {
        let s = *rx.borrow_and_update();
        if s.is_lost() {
            return;
        }
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    // Sender gone: the acquisition ended; only the deadline is left.
                    tokio::time::sleep_until(s.valid_until).await;
                    return;
                }
            }
            () = tokio::time::sleep_until(s.valid_until) => {}
        }
    }
}

/// The renewal loop. Holds only a weak reference, so it ends when the client is dropped. A
/// batch that failed is tried again after a sixth of the interval rather than a whole one
/// (review defect 4): two missed renewals in a row would otherwise lose every lock.
pub(crate) async fn run(client: Weak<ClientInner>, interval: Duration) {
    let retry = (interval / 6).max(Duration::from_millis(20));
    let mut next = interval;
    loop {
        tokio::time::sleep(next).await;
        let Some(inner) = client.upgrade() else {
            return;
        };
        next = if renew_all(&inner).await {
            interval
        } else {
            retry
        };
    }
}

/// One lock to renew: (key, owner), token, the guard's lease.
type Renewal = ((String, String), u64, LeaseSender);

/// Renew every registered lock; false when a batch failed (Redis did not answer).
async fn renew_all(inner: &ClientInner) -> bool {
    let batch: Vec<Renewal> = inner
        .watchdog
        .entries()
        .iter()
        .map(|(k, e)| (k.clone(), e.token, Arc::clone(&e.lease)))
        .collect();
    let mut all_answered = true;
    for group in by_slot(batch, inner.conn.is_cluster()) {
        for chunk in group.chunks(inner.config.watchdog_batch_size) {
            all_answered &= renew_batch(inner, chunk).await;
        }
    }
    all_answered
}

/// On a cluster one script may only touch keys of one slot, so renewals are grouped by the
/// lock key's slot (each group is still batched); on one server they form one group.
fn by_slot(batch: Vec<Renewal>, cluster: bool) -> Vec<Vec<Renewal>> {
    if !cluster {
        return vec![batch];
    }
    let mut groups: HashMap<redis::cluster_routing::Slot, Vec<Renewal>> = HashMap::new();
    for renewal in batch {
        let slot = redis::cluster_routing::Slot::for_key(&renewal.0.0);
        groups.entry(slot).or_default().push(renewal);
    }
    groups.into_values().collect()
}

async fn renew_batch(inner: &ClientInner, chunk: &[Renewal]) -> bool {
    let lease = inner.config.watchdog_timeout;
    let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
    let mut invocation = scripts::RENEW.prepare_invoke();
    invocation.arg(lease_ms);
    for ((key, owner), token, _) in chunk {
        invocation.key(key).arg(owner).arg(token);
    }
    let sent = Instant::now();
    let mut conn = inner.conn.clone();
    match invocation.invoke_async::<Vec<i64>>(&mut conn).await {
        Ok(results) => {
            let mut renewed = 0;
            for (((key, owner), token, sender), result) in chunk.iter().zip(results) {
                if result == 1 {
                    renewed += 1;
                    sender.send_modify(|s| {
                        if !s.lost {
                            s.valid_until = sent + lease;
                        }
                    });
                } else if !inner.watchdog.is_registered(key, owner, *token) {
                    // Released while this batch was on its way: not a loss.
                } else {
                    tracing::warn!(lock = %key, %token, "lock lost: renewal found it gone");
                    inner.watchdog.deregister(key, owner, *token);
                    sender.send_modify(|s| s.lost = true);
                    inner.metrics.lost();
                    inner.metrics.renewed("lost", 1);
                }
            }
            inner.metrics.renewed("ok", renewed);
            true
        }
        Err(err) => {
            // Keep trying every interval; a guard's `lost()` fires on its own once
            // `valid_until` passes without a successful renewal.
            tracing::warn!(error = %err, locks = chunk.len(), "lease renewal failed");
            inner.metrics.renewed("error", chunk.len() as u64);
            false
        }
    }
}
