//! RedLock: one lock over N independent Redis masters (antirez's algorithm, as Redisson's
//! deprecated `RedissonRedLock` and Go's redsync), with a fencing token.
//!
//! - An acquisition succeeds when a quorum (N/2+1) of masters granted it and some validity is
//!   left: `validity = lease - elapsed - drift`, `drift = lease * drift_factor + 2 ms`.
//! - On failure the lock is released on every master (also those that did not answer, since
//!   an unanswered command may still have run).
//! - Token: every master increments its own counter; the acquisition's token is the maximum
//!   over the quorum, written back (only while still held) to the quorum's counters in a
//!   second phase. Any two quorums share a master, so a later acquisition's token is higher,
//!   **as long as the masters keep their data**. A master restarted empty forgets its counter
//!   and its locks; see docs/locking.md for what that breaks and how to run the masters.
//!
//! Waiters are woken by pub/sub: after a failed attempt a waiter subscribes to the lock's
//! channel on every master it can reach and retries when any of them announces a release
//! (the release publishes on every master), with the random pause only as a fallback.
//!
//! Leases are fixed (no watchdog): the guard's [`RedGuard::valid_until`] is the end of the
//! validity window. RedLock guards are not reentrant: every acquisition uses a fresh owner.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::{join_all, select_all};
use rand::Rng;
use redis::aio::ConnectionManager;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::client::manager_config;
use crate::config::{LockConfig, lease_millis};
use crate::keys::{self, LockKeys};
use crate::pubsub::{PubSubHub, Subscription};
use crate::scripts;
use crate::{LockError, Result};

/// Settings of a [`RedLock`].
#[derive(Debug, Clone)]
pub struct RedLockConfig {
    /// Key prefix, reply and connect timeouts (the watchdog settings are unused).
    pub lock: LockConfig,
    /// How long to wait for one master in one attempt (default 50 ms); a master slower than
    /// this counts as not acquired.
    pub master_timeout: Duration,
    /// Clock drift allowance as a fraction of the lease (default 0.01).
    pub drift_factor: f64,
    /// Upper bound of the random pause between attempts (default 100 ms). A waiter subscribed
    /// to a release channel retries as soon as a release is announced; the pause then only
    /// bounds the wait when a message is lost or no master could be subscribed.
    pub retry_jitter: Duration,
}

impl Default for RedLockConfig {
    fn default() -> Self {
        RedLockConfig {
            lock: LockConfig::default(),
            master_timeout: Duration::from_millis(50),
            drift_factor: 0.01,
            retry_jitter: Duration::from_millis(100),
        }
    }
}

/// A client of N independent Redis masters.
#[derive(Debug, Clone)]
pub struct RedLock {
    inner: Arc<RedLockInner>,
}

#[derive(Debug)]
struct RedLockInner {
    id: String,
    masters: Vec<ConnectionManager>,
    /// Each master's pub/sub hub, connected when a waiter first needs it (`None`: that master
    /// could not be reached then; it is not tried again).
    hubs: Vec<(redis::Client, tokio::sync::OnceCell<Option<PubSubHub>>)>,
    config: RedLockConfig,
    seq: AtomicU64,
}

/// One master's answer in the first phase.
enum Grant {
    Acquired(u64),
    Held,
    Unreachable,
}

impl RedLock {
    /// Set up connections to `urls` (at least one). Connections are made lazily, so masters
    /// that are down now do not prevent creating the client.
    pub fn new<S: AsRef<str>>(urls: &[S], config: RedLockConfig) -> Result<Self> {
        config.lock.validate()?;
        if urls.is_empty() {
            return Err(LockError::InvalidArgument(
                "RedLock needs at least one master".into(),
            ));
        }
        if !(0.0..1.0).contains(&config.drift_factor) {
            return Err(LockError::InvalidArgument(
                "drift_factor must be in [0, 1)".into(),
            ));
        }
        let clients = urls
            .iter()
            .map(|url| redis::Client::open(url.as_ref()))
            .collect::<redis::RedisResult<Vec<_>>>()?;
        let masters = clients
            .iter()
            .map(|client| {
                ConnectionManager::new_lazy_with_config(
                    client.clone(),
                    manager_config(&config.lock),
                )
            })
            .collect::<redis::RedisResult<Vec<_>>>()?;
        Ok(RedLock {
            inner: Arc::new(RedLockInner {
                id: uuid::Uuid::new_v4().simple().to_string(),
                masters,
                hubs: clients
                    .into_iter()
                    .map(|c| (c, tokio::sync::OnceCell::new()))
                    .collect(),
                config,
                seq: AtomicU64::new(0),
            }),
        })
    }

    /// The settings this client runs with.
    pub fn config(&self) -> &RedLockConfig {
        &self.inner.config
    }

    /// Raise the fencing counter of `name` to at least `floor` on every reachable master (see
    /// [`crate::LockClient::raise_fence`]); returns how many masters answered.
    pub async fn raise_fence(&self, name: &str, floor: u64) -> Result<usize> {
        keys::validate_name(name)?;
        let keys = LockKeys::new(&self.inner.config.lock.key_prefix, name);
        let answered = join_all(self.inner.masters.iter().map(|m| {
            let mut conn = m.clone();
            let fence = keys.fence.clone();
            async move {
                let mut invocation = scripts::RAISE_FENCE.prepare_invoke();
                invocation.key(fence).arg(floor);
                let call = invocation.invoke_async::<u64>(&mut conn);
                matches!(
                    tokio::time::timeout(self.inner.config.lock.response_timeout, call).await,
                    Ok(Ok(_))
                )
            }
        }))
        .await;
        Ok(answered.into_iter().filter(|ok| *ok).count())
    }

    /// Number of masters.
    pub fn masters(&self) -> usize {
        self.inner.masters.len()
    }

    /// Masters that must grant an acquisition: N/2+1.
    pub fn quorum(&self) -> usize {
        self.inner.masters.len() / 2 + 1
    }

    /// Try to take `name` for `lease` within `wait`, retrying with jitter. `Ok(None)` when
    /// the lock is held elsewhere at the deadline; `Err(NoQuorum)` when too few masters
    /// answered in the last attempt.
    ///
    /// Cancellation-safe: an attempt whose caller went away is released on every master.
    pub async fn try_acquire(
        &self,
        name: &str,
        wait: Duration,
        lease: Duration,
    ) -> Result<Option<RedGuard>> {
        keys::validate_name(name)?;
        let lease_ms = lease_millis(lease)?;
        let keys = LockKeys::new(&self.inner.config.lock.key_prefix, name);
        let deadline = Instant::now() + wait;
        let mut subscriptions: Option<Vec<Subscription>> = None;
        loop {
            let (tx, rx) = oneshot::channel();
            let inner = Arc::clone(&self.inner);
            let attempt_keys = keys.clone();
            tokio::spawn(async move {
                let outcome = inner.attempt(&attempt_keys, lease, lease_ms).await;
                if let Err(Ok(AttemptOutcome::Acquired(guard))) = tx.send(outcome) {
                    drop(guard); // caller gone: the guard's drop releases on every master
                }
            });
            let outcome = rx.await.map_err(|_| LockError::Aborted)??;
            let reached = match outcome {
                AttemptOutcome::Acquired(guard) => return Ok(Some(guard)),
                AttemptOutcome::Failed { reached } => reached,
            };
            if Instant::now() >= deadline {
                return self.gave_up(reached);
            }
            let Some(subs) = subscriptions.as_ref() else {
                // Subscribe, then try again at once: a release announced before the
                // subscriptions were confirmed shows up as a free lock.
                subscriptions = Some(self.inner.subscribe_all(&keys.channel).await);
                continue;
            };
            let jitter = {
                let max = u64::try_from(self.inner.config.retry_jitter.as_millis()).unwrap_or(100);
                Duration::from_millis(rand::rng().random_range(0..=max.max(1)))
            };
            let until = deadline.min(Instant::now() + jitter);
            let _ = tokio::time::timeout_at(until, any_release(subs)).await;
            if Instant::now() >= deadline {
                return self.gave_up(reached);
            }
        }
    }

    /// The answer when the wait ran out: held elsewhere, or too few masters reached.
    fn gave_up(&self, reached: usize) -> Result<Option<RedGuard>> {
        if reached < self.quorum() {
            Err(LockError::NoQuorum {
                acquired: reached,
                masters: self.masters(),
                quorum: self.quorum(),
            })
        } else {
            Ok(None)
        }
    }
}

/// Resolves when any of `subs` announces a release (never, when there are none).
async fn any_release(subs: &[Subscription]) {
    if subs.is_empty() {
        std::future::pending::<()>().await;
    }
    let waits = subs.iter().map(|s| s.notified().boxed());
    select_all(waits).await;
}

impl RedLockInner {
    /// Subscribe to `channel` on every master whose pub/sub connection can be had now.
    async fn subscribe_all(&self, channel: &str) -> Vec<Subscription> {
        let lock = &self.config.lock;
        let mut subs = Vec::new();
        for (client, hub) in &self.hubs {
            let hub = hub
                .get_or_init(|| async {
                    let start = PubSubHub::start(
                        client.clone(),
                        &self.id,
                        lock.ping_interval,
                        lock.response_timeout,
                    );
                    match tokio::time::timeout(lock.connection_timeout, start).await {
                        Ok(Ok(hub)) => Some(hub),
                        _ => None,
                    }
                })
                .await;
            if let Some(hub) = hub
                && let Ok(sub) = hub.subscribe(channel).await
            {
                subs.push(sub);
            }
        }
        subs
    }
}

enum AttemptOutcome {
    Acquired(RedGuard),
    /// Not acquired; `reached` masters answered.
    Failed {
        reached: usize,
    },
}

impl RedLockInner {
    async fn attempt(
        self: &Arc<Self>,
        keys: &LockKeys,
        lease: Duration,
        lease_ms: u64,
    ) -> Result<AttemptOutcome> {
        let owner = format!("{}:{}", self.id, self.seq.fetch_add(1, Ordering::Relaxed));
        let quorum = self.masters.len() / 2 + 1;
        let start = Instant::now();
        let grants = join_all(
            self.masters
                .iter()
                .map(|m| self.grant(m, keys, &owner, lease_ms)),
        )
        .await;
        let reached = grants
            .iter()
            .filter(|g| !matches!(g, Grant::Unreachable))
            .count();
        let acquired: Vec<(usize, u64)> = grants
            .iter()
            .enumerate()
            .filter_map(|(i, g)| match g {
                Grant::Acquired(t) => Some((i, *t)),
                _ => None,
            })
            .collect();
        let mut guard = RedGuard {
            inner: Arc::clone(self),
            keys: keys.clone(),
            owner: owner.clone(),
            token: acquired.iter().map(|(_, t)| *t).max().unwrap_or(0),
            valid_until: start,
            released: false,
        };
        if acquired.len() < quorum {
            guard.release_all().await;
            return Ok(AttemptOutcome::Failed { reached });
        }
        // Second phase: raise the quorum's counters to the chosen token.
        let written = join_all(acquired.iter().map(|(i, local)| {
            self.fence_write_back(&self.masters[*i], keys, &owner, *local, guard.token)
        }))
        .await
        .into_iter()
        .filter(|ok| *ok)
        .count();
        let drift = lease.mul_f64(self.config.drift_factor) + Duration::from_millis(2);
        let validity = lease.saturating_sub(start.elapsed()).saturating_sub(drift);
        if written < quorum || validity.is_zero() {
            guard.release_all().await;
            return Ok(AttemptOutcome::Failed { reached });
        }
        // `validity` is what is left of the lease now; measured from `start` (before the
        // first command was sent) the lock holds until `start + lease - drift`: the time the
        // attempt took is counted once, by the clock that started at `start`.
        guard.valid_until = start + lease.saturating_sub(drift);
        Ok(AttemptOutcome::Acquired(guard))
    }

    async fn grant(
        &self,
        master: &ConnectionManager,
        keys: &LockKeys,
        owner: &str,
        lease_ms: u64,
    ) -> Grant {
        let mut conn = master.clone();
        let mut invocation = scripts::ACQUIRE.prepare_invoke();
        invocation
            .key(&keys.lock)
            .key(&keys.fence)
            .arg(lease_ms)
            .arg(owner);
        let call = invocation.invoke_async::<(i64, i64, i64)>(&mut conn);
        match tokio::time::timeout(self.config.master_timeout, call).await {
            Ok(Ok((1, token, _))) => u64::try_from(token).map_or(Grant::Held, Grant::Acquired),
            Ok(Ok(_)) => Grant::Held,
            Ok(Err(_)) | Err(_) => Grant::Unreachable,
        }
    }

    async fn fence_write_back(
        &self,
        master: &ConnectionManager,
        keys: &LockKeys,
        owner: &str,
        local: u64,
        token: u64,
    ) -> bool {
        let mut conn = master.clone();
        let mut invocation = scripts::REDLOCK_FENCE.prepare_invoke();
        invocation
            .key(&keys.lock)
            .key(&keys.fence)
            .arg(owner)
            .arg(local)
            .arg(token);
        let call = invocation.invoke_async::<i64>(&mut conn);
        matches!(
            tokio::time::timeout(self.config.master_timeout, call).await,
            Ok(Ok(1))
        )
    }
}

/// Proof of holding a RedLock on a quorum of masters, until [`RedGuard::valid_until`].
/// Dropping it releases on every master in the background.
#[derive(Debug)]
pub struct RedGuard {
    inner: Arc<RedLockInner>,
    keys: LockKeys,
    owner: String,
    token: u64,
    valid_until: Instant,
    released: bool,
}

impl RedGuard {
    /// The fencing token (see the module docs for when it is monotonic).
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.keys.name
    }

    /// End of the validity window (start of the attempt + lease - elapsed - drift).
    pub fn valid_until(&self) -> Instant {
        self.valid_until
    }

    /// True while the validity window is open.
    pub fn is_valid(&self) -> bool {
        Instant::now() < self.valid_until
    }

    /// Release on every master; returns how many masters deleted it.
    pub async fn release(mut self) -> usize {
        self.released = true;
        self.release_all().await
    }

    async fn release_all(&self) -> usize {
        let inner = &self.inner;
        join_all(inner.masters.iter().map(|m| {
            let mut conn = m.clone();
            async move {
                let mut invocation = scripts::publishing(false).force_release.prepare_invoke();
                invocation
                    .key(&self.keys.lock)
                    .key(&self.keys.channel)
                    .arg(&self.owner)
                    .arg(scripts::RELEASED_MESSAGE);
                let call = invocation.invoke_async::<i64>(&mut conn);
                matches!(
                    tokio::time::timeout(inner.config.lock.response_timeout, call).await,
                    Ok(Ok(1))
                )
            }
        }))
        .await
        .into_iter()
        .filter(|deleted| *deleted)
        .count()
    }
}

impl Drop for RedGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let guard = RedGuard {
            inner: Arc::clone(&self.inner),
            keys: self.keys.clone(),
            owner: std::mem::take(&mut self.owner),
            token: self.token,
            valid_until: self.valid_until,
            released: true,
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                guard.release_all().await;
            });
        }
    }
}
