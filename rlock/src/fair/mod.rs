//! The fair lock ([`FairLock`]): waiters are served in arrival order across processes, and a
//! release hands the lock straight to the next waiter.
//!
//! In Redis, each client (process) that wants the lock has one place in a queue (a list, with
//! a sorted set of deadlines so dead waiters drop out). The release script makes the head the
//! owner — a fresh block of fencing tokens, its lease — and publishes a grant that wakes only
//! that client: no herd of failed attempts, one hop per hand-off. Inside a client, tasks queue
//! locally in arrival order ([`cohort`]); only one of them at a time stands in Redis's queue,
//! and a release may pass the lock to the next local task without Redis up to
//! [`crate::LockConfig::fair_local_handoffs`] times in a row (bounded barging: each pass gets
//! the next token of the block, so tokens stay strictly increasing).

mod cohort;
mod commands;
mod driver;
mod keys;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

pub(crate) use cohort::Cohorts;
use cohort::{Cohort, Entry};
pub use keys::FairKeys;

use crate::client::ClientInner;
use crate::metrics::AcquireOutcome;
use crate::watchdog::LeaseState;
use crate::{LockError, Result};

/// A fair, fenced distributed lock with one local owner identity. Leases are always
/// watchdog leases ([`crate::LockConfig::watchdog_timeout`], renewed while held).
///
/// Acquisitions through the same `FairLock` re-enter (locally: no Redis call); other
/// `FairLock`s of the same name, here or in other processes, queue behind it in arrival order.
#[derive(Debug)]
pub struct FairLock {
    cohort: Arc<Cohort>,
    handle: u64,
}

impl FairLock {
    pub(crate) fn new(client: &Arc<ClientInner>, name: &str) -> Result<Self> {
        let cohort = client.cohorts.get_or_create(client, name)?;
        let handle = cohort.new_handle();
        Ok(FairLock { cohort, handle })
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.cohort.keys().name
    }

    /// The Redis keys of this lock.
    pub fn keys(&self) -> &FairKeys {
        self.cohort.keys()
    }

    /// Wait as long as it takes, then hold the lock.
    pub async fn acquire(&self) -> Result<FairGuard> {
        self.acquire_inner(None).await?.ok_or(LockError::Aborted)
    }

    /// Try to take the lock within `wait` (zero: one attempt, without queueing). `Ok(None)`
    /// when it was not this owner's turn by then; its place in the queue is given up.
    ///
    /// Cancellation-safe: a grant that arrives for a dropped call passes to the next waiter.
    pub async fn try_acquire(&self, wait: Duration) -> Result<Option<FairGuard>> {
        let deadline = Instant::now().checked_add(wait);
        self.acquire_inner(Some(deadline.unwrap_or_else(far_future)))
            .await
    }

    async fn acquire_inner(&self, deadline: Option<Instant>) -> Result<Option<FairGuard>> {
        let started = Instant::now();
        let metrics = &self.cohort.client().metrics;
        let (tx, rx) = oneshot::channel();
        let waited = match self.cohort.enter(self.handle, tx) {
            Entry::Reentered(guard) => {
                metrics.acquire("fair", AcquireOutcome::Reentered, started.elapsed());
                return Ok(Some(guard));
            }
            Entry::Queued(rx) => wait_for(rx, deadline).await,
            Entry::ToRedis(tx) => {
                let queue = deadline.is_none_or(|d| d > Instant::now());
                match self.cohort.take_inline(self.handle, queue, tx).await {
                    Ok(Ok(guard)) => Ok(Some(guard)),
                    Ok(Err(())) if !queue => Ok(None),
                    Ok(Err(())) => wait_for(rx, deadline).await,
                    Err(err) => Err(err),
                }
            }
        };
        let outcome = match &waited {
            Ok(Some(_)) => AcquireOutcome::Acquired,
            Ok(None) => {
                self.cohort.gave_up();
                AcquireOutcome::TimedOut
            }
            Err(_) => AcquireOutcome::Failed,
        };
        metrics.acquire("fair", outcome, started.elapsed());
        waited
    }
}

/// Wait for the local queue to hand this owner the lock, until `deadline`. A guard that
/// arrives after the deadline is dropped with the receiver, which releases it again.
async fn wait_for(
    rx: oneshot::Receiver<Result<FairGuard>>,
    deadline: Option<Instant>,
) -> Result<Option<FairGuard>> {
    let got = match deadline {
        Some(d) => match tokio::time::timeout_at(d, rx).await {
            Ok(got) => got,
            Err(_) => return Ok(None),
        },
        None => rx.await,
    };
    match got {
        Ok(Ok(guard)) => Ok(Some(guard)),
        Ok(Err(err)) => Err(err),
        Err(_) => Err(LockError::Aborted),
    }
}

/// A deadline no wait reaches (for waits too long to add to `now`).
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}

/// Proof of holding a fair lock. Releases when dropped (in the background) or when
/// [`FairGuard::release`] is called (and awaited).
#[derive(Debug)]
pub struct FairGuard {
    cohort: Arc<Cohort>,
    handle: u64,
    token: u64,
    lease: watch::Receiver<LeaseState>,
    released: bool,
}

impl FairGuard {
    /// The fencing token of this hold: strictly greater than every token issued for this lock
    /// before it (a hold passed on locally gets the next token of its client's block).
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.cohort.keys().name
    }

    /// Until when the lease is known to be valid (errs early).
    pub fn valid_until(&self) -> Instant {
        self.lease.borrow().valid_until
    }

    /// True once the lock is known lost (a renewal found it gone, or the lease ran out).
    pub fn is_lost(&self) -> bool {
        self.lease.borrow().is_lost()
    }

    /// Resolves when the lock is lost (see [`FairGuard::is_lost`]).
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        crate::watchdog::lost(self.lease.clone())
    }

    /// Release now and report the outcome: `NotHeld` when the lock had been lost.
    pub async fn release(mut self) -> Result<()> {
        self.released = true;
        Arc::clone(&self.cohort)
            .release(self.handle, self.token)
            .await
    }

    /// Forget the guard without releasing (it was never handed to anyone).
    fn defuse(mut self) {
        self.released = true;
    }
}

impl Drop for FairGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let cohort = Arc::clone(&self.cohort);
        let (handle, token) = (self.handle, self.token);
        let rt = tokio::runtime::Handle::try_current()
            .unwrap_or_else(|_| cohort.client().runtime.clone());
        rt.spawn(async move {
            if let Err(err) = cohort.release(handle, token).await {
                tracing::debug!(error = %err, "fair lock release on drop failed");
            }
        });
    }
}
