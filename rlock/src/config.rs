//! Client configuration.

use std::time::Duration;

/// How long a lock is held before Redis expires it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// Lease of [`LockConfig::watchdog_timeout`], renewed by the client's watchdog every
    /// third of it for as long as the lock is held (Redisson's `leaseTime = -1`).
    Watchdog,
    /// A fixed lease with no renewal: the lock expires after this long unless released.
    Fixed(Duration),
}

/// Acknowledgement from replicas required before an acquisition counts (Redis `WAIT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaSync {
    /// Number of replicas that must acknowledge the acquisition.
    pub replicas: usize,
    /// How long to wait for them.
    pub timeout: Duration,
}

/// Settings of a [`crate::LockClient`]. `Default` gives Redisson's defaults.
#[derive(Debug, Clone)]
pub struct LockConfig {
    /// Prefix of every key the library writes (default `rlock`).
    pub key_prefix: String,
    /// Lease of watchdog-renewed locks; renewal runs every third of it (default 30 s).
    pub watchdog_timeout: Duration,
    /// Locks renewed per renewal script call (default 100, as Redisson's
    /// `lockWatchdogBatchSize`).
    pub watchdog_batch_size: usize,
    /// How long to wait for a Redis reply before treating the outcome as unknown
    /// (default 3 s).
    pub response_timeout: Duration,
    /// How long to wait for a TCP connection to Redis (default 1 s).
    pub connection_timeout: Duration,
    /// Require replica acknowledgement of each new acquisition (default off).
    pub replica_sync: Option<ReplicaSync>,
    /// Replace the connection to a single server after this many response timeouts in a row
    /// (0: never); a silent failover otherwise leaves every call timing out on the old socket
    /// (default 3).
    pub rebuild_after_timeouts: u32,
    /// How often the pub/sub connection is pinged; an unanswered ping (within
    /// `response_timeout`) makes it reconnect and resubscribe, so a half-open socket cannot
    /// leave waiters deaf (default 5 s, as a shorter Redisson `pingConnectionInterval`).
    pub ping_interval: Duration,
    /// Fair locks: how many times in a row a release may pass the lock to another task of
    /// the same client without going through Redis, while other clients may be queued
    /// (bounded barging; 0 is strict FIFO across clients). See docs/locking.md.
    pub fair_local_handoffs: u32,
    /// Fair locks: a queued client that has not refreshed its place for this long is taken
    /// out of the queue (it died or is paused); waiting clients refresh every third of it.
    pub fair_waiter_timeout: Duration,
}

impl Default for LockConfig {
    fn default() -> Self {
        LockConfig {
            key_prefix: "rlock".to_owned(),
            watchdog_timeout: Duration::from_secs(30),
            watchdog_batch_size: 100,
            response_timeout: Duration::from_secs(3),
            connection_timeout: Duration::from_secs(1),
            replica_sync: None,
            rebuild_after_timeouts: 3,
            ping_interval: Duration::from_secs(5),
            fair_local_handoffs: 32,
            fair_waiter_timeout: Duration::from_secs(3),
        }
    }
}

impl LockConfig {
    /// Interval between watchdog renewals: a third of the watchdog timeout.
    pub fn renewal_interval(&self) -> Duration {
        self.watchdog_timeout / 3
    }

    pub(crate) fn validate(&self) -> Result<(), crate::LockError> {
        if self.watchdog_timeout < Duration::from_millis(30) {
            return Err(crate::LockError::InvalidArgument(
                "watchdog_timeout must be at least 30 ms".into(),
            ));
        }
        if self.fair_waiter_timeout < Duration::from_millis(30) {
            return Err(crate::LockError::InvalidArgument(
                "fair_waiter_timeout must be at least 30 ms".into(),
            ));
        }
        if self.fair_local_handoffs > 1 << 20 {
            return Err(crate::LockError::InvalidArgument(
                "fair_local_handoffs must be at most 2^20".into(),
            ));
        }
        if self.watchdog_batch_size == 0 {
            return Err(crate::LockError::InvalidArgument(
                "watchdog_batch_size must be at least 1".into(),
            ));
        }
        crate::keys::validate_name(&self.key_prefix)
    }
}

/// Milliseconds of a lease, refusing zero and leases that do not fit Redis' PEXPIRE.
pub(crate) fn lease_millis(lease: Duration) -> Result<u64, crate::LockError> {
    let ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 || ms > i64::MAX as u64 / 2 {
        return Err(crate::LockError::InvalidArgument(format!(
            "lease {lease:?} must be between 1 ms and ~146 million years"
        )));
    }
    Ok(ms)
}
