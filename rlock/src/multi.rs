//! Several locks held together (Redisson's `RedissonMultiLock`): acquired one after another
//! in one canonical order (sorted by key), all or nothing, within one wait budget. Because
//! every MultiLock takes overlapping locks in the same order, two of them cannot deadlock.

use std::time::Duration;

use tokio::time::Instant;

use crate::Result;
use crate::config::Lease;
use crate::lock::{LockGuard, RLock};

/// A set of locks taken together. Build it with [`crate::LockClient::multi_lock`].
#[derive(Debug)]
pub struct MultiLock {
    locks: Vec<RLock>,
}

impl MultiLock {
    pub(crate) fn new(locks: Vec<RLock>) -> Self {
        MultiLock { locks }
    }

    /// The lock names in acquisition order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.locks.iter().map(RLock::name)
    }

    /// Take every lock, waiting as long as it takes, with watchdog leases.
    pub async fn acquire(&self) -> Result<MultiGuard> {
        let mut guards = Vec::with_capacity(self.locks.len());
        for lock in &self.locks {
            match lock.acquire().await {
                Ok(g) => guards.push(g),
                Err(e) => {
                    release_all(guards).await;
                    return Err(e);
                }
            }
        }
        Ok(MultiGuard { guards })
    }

    /// Take every lock within `wait` in total, or none: `Ok(None)` (with everything already
    /// taken released again) when one of them is still held by someone else at the deadline.
    ///
    /// With a fixed lease shorter than the wait, a lock taken early can expire while a later
    /// one is awaited; a set with a lost member is never handed out: it is released and taken
    /// again, within the same wait.
    pub async fn try_acquire(&self, wait: Duration, lease: Lease) -> Result<Option<MultiGuard>> {
        let deadline = Instant::now() + wait;
        loop {
            let Some(set) = self.try_acquire_once(deadline, lease).await? else {
                return Ok(None);
            };
            if !set.is_lost() {
                return Ok(Some(set));
            }
            release_all(set.guards).await;
            if Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    /// One pass over the locks in order, within `deadline`.
    async fn try_acquire_once(
        &self,
        deadline: Instant,
        lease: Lease,
    ) -> Result<Option<MultiGuard>> {
        let mut guards = Vec::with_capacity(self.locks.len());
        for lock in &self.locks {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match lock.try_acquire(remaining, lease).await {
                Ok(Some(g)) => guards.push(g),
                Ok(None) => {
                    release_all(guards).await;
                    return Ok(None);
                }
                Err(e) => {
                    release_all(guards).await;
                    return Err(e);
                }
            }
        }
        Ok(Some(MultiGuard { guards }))
    }
}

async fn release_all(guards: Vec<LockGuard>) {
    for guard in guards.into_iter().rev() {
        if let Err(err) = guard.release().await {
            tracing::debug!(error = %err, "multi-lock rollback release failed");
        }
    }
}

/// Proof of holding every lock of a [`MultiLock`].
#[derive(Debug)]
pub struct MultiGuard {
    guards: Vec<LockGuard>,
}

impl MultiGuard {
    /// The guards, in acquisition order.
    pub fn guards(&self) -> &[LockGuard] {
        &self.guards
    }

    /// The fencing token of the lock `name`, if it is part of this set.
    pub fn token(&self, name: &str) -> Option<u64> {
        self.guards
            .iter()
            .find(|g| g.name() == name)
            .map(LockGuard::token)
    }

    /// True when any of the locks is lost.
    pub fn is_lost(&self) -> bool {
        self.guards.iter().any(LockGuard::is_lost)
    }

    /// Release every lock (in reverse order); the first error, if any, is returned after all
    /// releases were tried.
    pub async fn release(self) -> Result<()> {
        let mut first_err = None;
        for guard in self.guards.into_iter().rev() {
            if let Err(e) = guard.release().await {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}
