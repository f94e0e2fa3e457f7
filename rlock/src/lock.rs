//! The reentrant, fenced lock ([`RLock`]) and the guard that proves holding it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedMutexGuard, oneshot, watch};
use tokio::time::Instant;

use crate::client::ClientInner;
use crate::config::{Lease, lease_millis};
use crate::error::outcome_known;
use crate::keys::LockKeys;
use crate::metrics::AcquireOutcome;
use crate::pubsub::Subscription;
use crate::scripts;
use crate::watchdog::{LeaseSender, LeaseState};
use crate::{LockError, Result};

/// The least time one acquisition attempt of a `try_acquire` gets, whatever its wait: a zero
/// wait still means "try once" (one script round trip); a stalled Redis does not hold the
/// caller longer than this or its wait, whichever is later.
const ATTEMPT_GRACE: Duration = Duration::from_millis(250);

/// A reentrant distributed lock with one owner identity (Redisson's `RLock`, where the owner
/// is a handle instead of a thread).
///
/// Every acquisition through the same `RLock` re-enters (the hold count goes up and the
/// fencing token stays the same); each [`LockGuard`] releases one hold. Operations of one
/// `RLock` are serialized, so share it (`Arc<RLock>`) only where re-entry is what you mean.
#[derive(Debug)]
pub struct RLock {
    shared: Arc<LockShared>,
}

#[derive(Debug)]
pub(crate) struct LockShared {
    client: Arc<ClientInner>,
    keys: LockKeys,
    owner: String,
    /// The owner's view of its holds; locked for the whole of every Redis operation of this
    /// owner, so the view matches Redis and compensations never overlap a new attempt.
    state: Arc<tokio::sync::Mutex<OwnerState>>,
}

/// The owner's current acquisition, if any.
#[derive(Debug, Default)]
struct OwnerState {
    holds: u32,
    token: Option<u64>,
    lease: Option<LeaseSender>,
    acquired_at: Option<Instant>,
    watchdog: bool,
}

impl OwnerState {
    fn clear(&mut self) {
        *self = OwnerState::default();
    }
}

/// Result of one run of the acquire script.
enum Attempt {
    Acquired {
        token: u64,
        count: u32,
        sent: Instant,
    },
    Held {
        pttl: i64,
    },
}

impl RLock {
    pub(crate) fn new(client: Arc<ClientInner>, keys: LockKeys, owner: String) -> Self {
        RLock {
            shared: Arc::new(LockShared {
                client,
                keys,
                owner,
                state: Arc::default(),
            }),
        }
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.shared.keys.name
    }

    /// This handle's owner id (`<client id>:<n>`), the field it writes in the lock hash.
    pub fn owner(&self) -> &str {
        &self.shared.owner
    }

    /// The Redis keys of this lock.
    pub fn keys(&self) -> &LockKeys {
        &self.shared.keys
    }

    /// Wait as long as it takes, then hold the lock with a watchdog-renewed lease.
    pub async fn acquire(&self) -> Result<LockGuard> {
        self.acquire_with(Lease::Watchdog).await
    }

    /// Wait as long as it takes, then hold the lock with `lease`.
    pub async fn acquire_with(&self, lease: Lease) -> Result<LockGuard> {
        match self.acquire_inner(None, lease).await? {
            Some(guard) => Ok(guard),
            None => Err(LockError::Aborted),
        }
    }

    /// Try to take the lock within `wait` (zero: one attempt, no waiting). `Ok(None)` when
    /// another owner still holds it after `wait`.
    ///
    /// Cancellation-safe: if this future is dropped or timed out, an acquisition that Redis
    /// granted meanwhile is released again in the background, and nothing stays held.
    pub async fn try_acquire(&self, wait: Duration, lease: Lease) -> Result<Option<LockGuard>> {
        let deadline = Instant::now().checked_add(wait);
        self.acquire_inner(deadline, lease).await
    }

    async fn acquire_inner(
        &self,
        deadline: Option<Instant>,
        lease: Lease,
    ) -> Result<Option<LockGuard>> {
        let started = Instant::now();
        let client = &self.shared.client;
        let lease_dur = match lease {
            Lease::Watchdog => client.config.watchdog_timeout,
            Lease::Fixed(d) => d,
        };
        let lease_ms = lease_millis(lease_dur)?;
        let timed_out = || {
            client
                .metrics
                .acquire("rlock", AcquireOutcome::TimedOut, started.elapsed());
            Ok(None)
        };
        let lock_state = Arc::clone(&self.shared.state).lock_owned();
        let mut state = match deadline {
            Some(d) => match tokio::time::timeout_at(d, lock_state).await {
                Ok(state) => state,
                Err(_) => return timed_out(),
            },
            None => lock_state.await,
        };
        let mut subscription: Option<Subscription> = None;
        loop {
            let Some(attempted) = self.attempt_within(deadline, state, lease_ms).await else {
                return timed_out();
            };
            let (returned, attempt) = attempted.inspect_err(|_| {
                client
                    .metrics
                    .acquire("rlock", AcquireOutcome::Failed, started.elapsed());
            })?;
            state = returned;
            let pttl = match attempt {
                Attempt::Acquired { token, count, sent } => {
                    let guard = self.on_acquired(&mut state, token, sent, lease, lease_dur);
                    let outcome = if count == 1 {
                        AcquireOutcome::Acquired
                    } else {
                        AcquireOutcome::Reentered
                    };
                    client.metrics.acquire("rlock", outcome, started.elapsed());
                    return Ok(Some(guard));
                }
                Attempt::Held { pttl } => pttl,
            };
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return timed_out();
            }
            let Some(sub) = subscription.as_ref() else {
                // Subscribe, then try again at once: a release published after the
                // subscription is confirmed wakes us, one published before it we see as a
                // free lock on the next attempt.
                match self.subscribe_within(deadline).await? {
                    Some(sub) => subscription = Some(sub),
                    None => return timed_out(),
                }
                continue;
            };
            // Wait for a release message, but never longer than the holder's lease: if the
            // message is lost, the lock has expired by then.
            let ttl = Duration::from_millis(u64::try_from(pttl).unwrap_or(1).max(1));
            let until = deadline.map_or(now + ttl, |d| d.min(now + ttl));
            let _ = tokio::time::timeout_at(until, sub.notified()).await;
        }
    }

    /// Subscribe to the lock's channel, unless `deadline` passes first (`None`).
    async fn subscribe_within(&self, deadline: Option<Instant>) -> Result<Option<Subscription>> {
        let subscribe = self
            .shared
            .client
            .pubsub
            .subscribe(&self.shared.keys.channel);
        Ok(match deadline {
            Some(d) => match tokio::time::timeout_at(d, subscribe).await {
                Ok(sub) => Some(sub?),
                Err(_) => None,
            },
            None => Some(subscribe.await?),
        })
    }

    /// [`RLock::attempt`], bounded by `deadline`: a stalled Redis must not hold a
    /// `try_acquire` past its wait. One attempt always gets [`ATTEMPT_GRACE`], so that a zero
    /// wait still means "try once". `None` when the bound passed: giving up drops the
    /// attempt's receiver, and the attempt's own task still reads Redis's answer and gives back
    /// a hold granted too late.
    async fn attempt_within(
        &self,
        deadline: Option<Instant>,
        state: OwnedMutexGuard<OwnerState>,
        lease_ms: u64,
    ) -> Option<Result<(OwnedMutexGuard<OwnerState>, Attempt)>> {
        let Some(d) = deadline else {
            return Some(self.attempt(state, lease_ms).await);
        };
        let bound = d.max(Instant::now() + ATTEMPT_GRACE);
        tokio::time::timeout_at(bound, self.attempt(state, lease_ms))
            .await
            .ok()
    }

    /// One run of the acquire script in its own task, owning the state lock. If the caller
    /// goes away, the task releases what Redis granted; if the reply is lost, it takes back
    /// whatever the attempt may have added. Either way it holds the state lock until Redis
    /// matches the owner's view again.
    async fn attempt(
        &self,
        state: OwnedMutexGuard<OwnerState>,
        lease_ms: u64,
    ) -> Result<(OwnedMutexGuard<OwnerState>, Attempt)> {
        let (tx, rx) = oneshot::channel();
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            let outcome = shared.run_acquire(&state, lease_ms).await;
            if let Err((state, Ok(Attempt::Acquired { token, .. }))) = tx.send((state, outcome)) {
                // The caller was cancelled after Redis granted the hold: give it back.
                if let Err(err) = shared.release_script(token, false).await {
                    tracing::warn!(lock = %shared.keys.name, error = %err,
                        "could not release an abandoned acquisition; it expires with its lease");
                }
                drop(state);
            }
        });
        let (state, outcome) = rx.await.map_err(|_| LockError::Aborted)?;
        Ok((state, outcome?))
    }

    /// Record a successful acquisition in the owner's state and hand out a guard.
    fn on_acquired(
        &self,
        state: &mut OwnerState,
        token: u64,
        sent: Instant,
        lease: Lease,
        lease_dur: Duration,
    ) -> LockGuard {
        let client = &self.shared.client;
        let valid_until = sent + lease_dur;
        let sender = match (&state.lease, state.token == Some(token)) {
            (Some(sender), true) if state.holds > 0 => {
                sender.send_modify(|s| s.valid_until = s.valid_until.max(valid_until));
                Arc::clone(sender)
            }
            _ => {
                // A new acquisition (possibly after losing the previous one).
                if state.watchdog
                    && let Some(old) = state.token
                {
                    client
                        .watchdog
                        .deregister(&self.shared.keys.lock, &self.shared.owner, old);
                }
                state.clear();
                state.token = Some(token);
                state.acquired_at = Some(Instant::now());
                let sender = Arc::new(
                    watch::channel(LeaseState {
                        valid_until,
                        lost: false,
                    })
                    .0,
                );
                state.lease = Some(Arc::clone(&sender));
                sender
            }
        };
        // The owner's own count, not Redis's: a hold Redis kept from a lost reply must not
        // become one the owner thinks it has to release (the last release clears it).
        state.holds += 1;
        if lease == Lease::Watchdog && !state.watchdog {
            client.watchdog.register(
                &self.shared.keys.lock,
                &self.shared.owner,
                token,
                Arc::clone(&sender),
            );
            state.watchdog = true;
        }
        LockGuard {
            shared: Arc::clone(&self.shared),
            token,
            lease: sender.subscribe(),
            released: false,
        }
    }

    /// Release one hold of this owner's acquisition `token` without a guard (Redisson's
    /// `unlock()`), for callers that turned their guard into a token with
    /// [`LockGuard::into_token`]. `NotHeld` when this owner does not hold that acquisition;
    /// the lock is then left exactly as it was.
    pub async fn unlock(&self, token: u64) -> Result<()> {
        self.shared.release_hold(token).await
    }

    /// This owner's hold count as Redis sees it (0 when not held by this owner).
    pub async fn hold_count(&self) -> Result<u32> {
        let mut conn = self.shared.client.conn.clone();
        let count: Option<u32> = redis::cmd("HGET")
            .arg(&self.shared.keys.lock)
            .arg(&self.shared.owner)
            .query_async(&mut conn)
            .await?;
        Ok(count.unwrap_or(0))
    }

    /// Whether anyone holds the lock.
    pub async fn is_locked(&self) -> Result<bool> {
        let mut conn = self.shared.client.conn.clone();
        let exists: bool = redis::cmd("EXISTS")
            .arg(&self.shared.keys.lock)
            .query_async(&mut conn)
            .await?;
        Ok(exists)
    }

    /// Delete the lock whoever holds it and wake waiters (an administrative escape hatch:
    /// the holder's guard reports the loss at its next renewal). True if a lock was deleted.
    pub async fn force_unlock(&self) -> Result<bool> {
        let mut conn = self.shared.client.conn.clone();
        let deleted: i64 = self
            .shared
            .client
            .scripts
            .force_release
            .key(&self.shared.keys.lock)
            .key(&self.shared.keys.channel)
            .arg("")
            .arg(scripts::RELEASED_MESSAGE)
            .invoke_async(&mut conn)
            .await?;
        Ok(deleted == 1)
    }
}

impl LockShared {
    /// Run the acquire script (and replica sync), compensating when the outcome is unknown.
    async fn run_acquire(&self, state: &OwnerState, lease_ms: u64) -> Result<Attempt> {
        let mut conn = self.client.conn.clone();
        let sent = Instant::now();
        let reply: redis::RedisResult<(i64, i64, i64)> = scripts::ACQUIRE
            .key(&self.keys.lock)
            .key(&self.keys.fence)
            .arg(lease_ms)
            .arg(&self.owner)
            .invoke_async(&mut conn)
            .await;
        let (acquired, value, count) = match reply {
            Ok(r) => r,
            Err(err) if outcome_known(&err) => return Err(LockError::Redis(err)),
            Err(err) => {
                self.undo_acquire(state, lease_ms).await;
                return Err(LockError::OutcomeUnknown {
                    operation: "acquire",
                    source: err,
                });
            }
        };
        if acquired != 1 {
            return Ok(Attempt::Held { pttl: value });
        }
        let (Ok(token), Ok(count)) = (u64::try_from(value), u32::try_from(count)) else {
            return Err(LockError::UnexpectedReply {
                script: "acquire",
                detail: format!("token {value}, count {count}"),
            });
        };
        if count == 1
            && let Some(sync) = self.client.config.replica_sync
        {
            self.wait_for_replicas(sync, token).await?;
        }
        Ok(Attempt::Acquired { token, count, sent })
    }

    /// `WAIT` for replicas after a new acquisition; release again if too few acknowledge.
    async fn wait_for_replicas(&self, sync: crate::ReplicaSync, token: u64) -> Result<()> {
        let mut conn = self.client.conn.clone();
        let acked = match conn.wait_for_replicas(&self.keys.lock, sync).await {
            Ok(n) if n >= sync.replicas => return Ok(()),
            Ok(n) => n,
            Err(err) => {
                tracing::warn!(lock = %self.keys.name, error = %err, "WAIT failed");
                0
            }
        };
        if let Err(err) = self.release_script(token, true).await {
            tracing::warn!(lock = %self.keys.name, error = %err,
                "could not release an unsynced acquisition; it expires with its lease");
        }
        Err(LockError::ReplicaSync {
            acked,
            wanted: sync.replicas,
        })
    }

    /// Take back the hold a lost acquire may have added, retrying until Redis answers or the
    /// lease would have expired anyway.
    async fn undo_acquire(&self, state: &OwnerState, lease_ms: u64) {
        let give_up = Instant::now() + Duration::from_millis(lease_ms);
        let token = state.token.filter(|_| state.holds > 0);
        let undo = || {
            let mut conn = self.client.conn.clone();
            let mut invocation = self.client.scripts.undo_acquire.prepare_invoke();
            invocation
                .key(&self.keys.lock)
                .key(&self.keys.channel)
                .arg(&self.owner)
                .arg(if token.is_some() { state.holds } else { 0 })
                .arg(token.map(|t| t.to_string()).unwrap_or_default())
                .arg(scripts::RELEASED_MESSAGE);
            async move { invocation.invoke_async::<i64>(&mut conn).await }
        };
        // Any error is retried: a loading or busy Redis answers with one, and gets better.
        match crate::retry::until_answered(give_up, |_| true, undo).await {
            Ok(undone) => {
                tracing::debug!(lock = %self.keys.name, undone, "compensated an unknown acquire");
            }
            Err(err) => tracing::warn!(lock = %self.keys.name, error = %err,
                "could not compensate an unknown acquire; it expires with its lease"),
        }
    }

    /// Run the release script for `token`: -1 not held, 0 deleted, n remaining holds. With
    /// `last`, the acquisition ends whatever hold count Redis has.
    async fn release_script(&self, token: u64, last: bool) -> Result<i64> {
        let mut conn = self.client.conn.clone();
        self.client
            .scripts
            .release
            .key(&self.keys.lock)
            .key(&self.keys.channel)
            .arg(&self.owner)
            .arg(token)
            .arg(scripts::RELEASED_MESSAGE)
            .arg(if last { "1" } else { "0" })
            .invoke_async(&mut conn)
            .await
            .map_err(|e| LockError::from_redis("release", e))
    }

    /// Release one hold of acquisition `token` and update the owner's state. The owner's
    /// count is the authority: its last hold ends the acquisition in Redis whatever count
    /// Redis has, the watchdog lets go of it before the script is sent (so a renewal can no
    /// longer report it lost), and an unanswered last release is retried in the background.
    async fn release_hold(self: &Arc<Self>, token: u64) -> Result<()> {
        let mut state = self.state.lock().await;
        let current = state.token == Some(token) && state.holds > 0;
        let last = current && state.holds == 1;
        if last && state.watchdog {
            self.client
                .watchdog
                .deregister(&self.keys.lock, &self.owner, token);
            state.watchdog = false;
        }
        let reply = self.release_script(token, last).await;
        if !current {
            // A guard of an acquisition that was lost and replaced; Redis refused it.
            return match reply {
                Ok(-1) | Err(_) => Err(LockError::NotHeld {
                    name: self.keys.name.clone(),
                }),
                Ok(_) => Ok(()),
            };
        }
        if last {
            if let Some(at) = state.acquired_at {
                self.client.metrics.held("rlock", at.elapsed());
            }
            state.clear();
            if matches!(reply, Err(LockError::OutcomeUnknown { .. })) {
                tokio::spawn(Arc::clone(self).end_acquisition(token));
            }
        } else {
            // One of several holds: ours less one, whatever Redis counted (the last
            // release settles any difference).
            match reply {
                Ok(n) if n > 0 => state.holds -= 1,
                Err(_) => state.holds -= 1,
                Ok(_) => {
                    // Redis deleted it (or had lost it): nothing is held any more.
                    if state.watchdog {
                        self.client
                            .watchdog
                            .deregister(&self.keys.lock, &self.owner, token);
                    }
                    state.clear();
                }
            }
        }
        match reply {
            Ok(-1) => Err(LockError::NotHeld {
                name: self.keys.name.clone(),
            }),
            Ok(_) => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// End acquisition `token` after its last release went unanswered: the release is
    /// idempotent, so retry it until Redis answers or the lease would have run out anyway.
    async fn end_acquisition(self: Arc<Self>, token: u64) {
        let give_up = Instant::now() + self.client.config.watchdog_timeout;
        let unanswered = |e: &LockError| matches!(e, LockError::OutcomeUnknown { .. });
        let end = || self.release_script(token, true);
        if let Err(err) = crate::retry::until_answered(give_up, unanswered, end).await {
            tracing::warn!(lock = %self.keys.name, error = %err,
                "could not end an acquisition after a lost release; it expires with its lease");
        }
    }
}

/// Proof of holding a lock. Releases one hold when dropped (in the background) or when
/// [`LockGuard::release`] is called (and awaited).
#[derive(Debug)]
pub struct LockGuard {
    shared: Arc<LockShared>,
    token: u64,
    lease: watch::Receiver<LeaseState>,
    released: bool,
}

impl LockGuard {
    /// The fencing token of this acquisition: strictly greater than every token issued for
    /// this lock before it, and unchanged by re-entry. Pass it to the resource, which must
    /// refuse writes carrying a token lower than one it has seen.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.shared.keys.name
    }

    /// Until when the lease is known to be valid (measured from before the command that set
    /// it was sent, so it errs early).
    pub fn valid_until(&self) -> Instant {
        self.lease.borrow().valid_until
    }

    /// True once the lock is known lost: a renewal found it gone, or its lease ran out
    /// without a successful renewal.
    pub fn is_lost(&self) -> bool {
        self.lease.borrow().is_lost()
    }

    /// Resolves when the lock is lost (see [`LockGuard::is_lost`]). Never resolves while the
    /// lease keeps being renewed.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        crate::watchdog::lost(self.lease.clone())
    }

    /// Give up the guard but keep the hold: the watchdog (if any) keeps renewing it, and
    /// [`RLock::unlock`] with the returned token releases it.
    pub fn into_token(mut self) -> u64 {
        self.released = true;
        self.token
    }

    /// Release this hold now and report the outcome. `NotHeld` when the lock had already
    /// been lost; nothing else is changed then.
    pub async fn release(mut self) -> Result<()> {
        self.released = true;
        self.shared.release_hold(self.token).await
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let shared = Arc::clone(&self.shared);
        let token = self.token;
        // Outside a runtime (a guard moved to a plain thread), the release runs on the
        // client's own runtime. (If that runtime is gone, so is its watchdog: the lock then
        // expires with its lease.)
        let rt =
            tokio::runtime::Handle::try_current().unwrap_or_else(|_| shared.client.runtime.clone());
        rt.spawn(async move {
            if let Err(err) = shared.release_hold(token).await {
                tracing::debug!(lock = %shared.keys.name, error = %err, "release on drop failed");
            }
        });
    }
}
