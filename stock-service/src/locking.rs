//! The strategy's locks around a critical section: taking them (a `lock.wait` span and
//! observation, `LOCK_WAIT_MS`), holding them (`lock.hold`), the fencing token each segment is
//! written with, and raising the fencing counters when Redis lost them.

use std::future::Future;
use std::time::Duration;

use rlock::{Lease, LockGuard, MultiGuard, RedGuard};
use tracing::Instrument as _;
use tracing::field::Empty;

use crate::engine::{Stock, StockError};
use crate::metrics::lock_labels;
use crate::store;

/// A lock wait this long means another holder had the lock (an uncontended acquisition is one
/// script call): the instance's combined deductions move their home elsewhere.
const CONTENDED: Duration = Duration::from_millis(2);

/// The fencing token each segment is written with (none for unlocked strategies), and whether
/// the tenure they belong to has written already.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tokens {
    of: Vec<(i32, i64)>,
    continuing: bool,
}

impl Tokens {
    /// The token to write `segment` with.
    pub(crate) fn of(&self, segment: i32) -> Option<i64> {
        self.of.iter().find(|(s, _)| *s == segment).map(|(_, t)| *t)
    }

    /// Whether an earlier section of the same lock tenure wrote with these tokens, so a row
    /// may already carry them as its fence.
    pub(crate) fn continuing(&self) -> bool {
        self.continuing
    }
}

/// A lock tenure: what is held, since when, and whether a section wrote under it yet. A group
/// worker keeps it across the groups it drains back to back (no release and acquisition per
/// group), for at most [`KEEP_FOR`]: then it lets go, so that a waiting instance gets its turn.
pub(crate) struct Kept {
    held: Held,
    since: tokio::time::Instant,
    pub(crate) wrote: bool,
}

/// How long a group worker keeps a lock while its queue stays busy.
const KEEP_FOR: Duration = Duration::from_millis(10);

impl Kept {
    /// Whether the lock is still held (its lease has not run out, no renewal found it lost).
    pub(crate) fn still_valid(&self) -> bool {
        self.held.still_valid()
    }

    /// Whether a lock is held at all (strategies without one hold nothing).
    pub(crate) fn locks(&self) -> bool {
        !matches!(self.held, Held::Nothing)
    }

    fn reusable(&self) -> bool {
        self.since.elapsed() < KEEP_FOR && self.still_valid()
    }
}

/// What is held while the read-modify-write runs.
pub(crate) enum Held {
    Nothing,
    One(LockGuard),
    Many(MultiGuard),
    Red(Vec<RedGuard>),
}

impl Held {
    pub(crate) fn token(&self, lock_name: &str) -> Option<i64> {
        let t = match self {
            Held::Nothing => None,
            Held::One(g) => Some(g.token()),
            Held::Many(m) => m.token(lock_name),
            Held::Red(gs) => gs
                .iter()
                .find(|g| g.name() == lock_name)
                .map(RedGuard::token),
        };
        t.and_then(|t| i64::try_from(t).ok())
    }

    pub(crate) fn still_valid(&self) -> bool {
        match self {
            Held::Nothing => true,
            Held::One(g) => !g.is_lost(),
            Held::Many(m) => !m.is_lost(),
            Held::Red(gs) => gs.iter().all(RedGuard::is_valid),
        }
    }

    pub(crate) async fn release(self) {
        let result = match self {
            Held::Nothing => Ok(()),
            Held::One(g) => g.release().await,
            Held::Many(m) => m.release().await,
            Held::Red(gs) => {
                for g in gs {
                    g.release().await;
                }
                Ok(())
            }
        };
        if let Err(err) = result {
            tracing::debug!(error = %err, "lock release after the critical section failed");
        }
    }
}

impl Stock {
    pub(crate) fn lease(&self) -> Lease {
        self.config.lock_lease.map_or(Lease::Watchdog, Lease::Fixed)
    }

    pub(crate) fn segment_lock(&self, sku: &str, segment: i32) -> String {
        format!("{}:{sku}:{segment}", self.config.key_prefix)
    }

    pub(crate) fn item_lock(&self, sku: &str) -> String {
        format!("{}:{sku}", self.config.key_prefix)
    }

    /// The tenure a section runs under: `kept` when it is still valid and young enough, else
    /// (after letting `kept` go) the strategy's lock(s) taken afresh.
    pub(crate) async fn tenure(
        &self,
        sku: &str,
        segments: &[i32],
        kept: Option<Kept>,
    ) -> Result<Kept, StockError> {
        match kept {
            Some(k) if k.reusable() => Ok(k),
            other => {
                self.let_go(other, segments).await;
                let held = self.lock(sku, segments).await?;
                Ok(Kept {
                    held,
                    since: tokio::time::Instant::now(),
                    wrote: false,
                })
            }
        }
    }

    /// Release a tenure's lock(s), if any: one `stock.lock.hold.duration` observation for the
    /// whole tenure.
    pub(crate) async fn let_go(&self, kept: Option<Kept>, segments: &[i32]) {
        let Some(Kept { held, since, .. }) = kept else {
            return;
        };
        if matches!(held, Held::Nothing) {
            return;
        }
        held.release().await;
        self.held_since(since, segments);
    }

    /// Run `section` in a `lock.hold` span when it runs under a lock (`locked`).
    pub(crate) async fn hold<T>(
        &self,
        segments: &[i32],
        locked: bool,
        section: impl Future<Output = T>,
    ) -> T {
        if !locked {
            return section.await;
        }
        let hold_span = tracing::info_span!(
            "lock.hold",
            strategy = self.strategy().as_str(),
            segment = self.lock_labels(segments).join(","),
        );
        section.instrument(hold_span).await
    }

    /// The token each of `segments` is written with under `kept`.
    pub(crate) fn tokens(&self, sku: &str, segments: &[i32], kept: &Kept) -> Tokens {
        let held = &kept.held;
        if matches!(held, Held::Nothing) {
            return Tokens::default();
        }
        let of = segments
            .iter()
            .filter_map(|&segment| {
                let name = self.concurrency.lock_name(self, sku, segment)?;
                held.token(&name).map(|t| (segment, t))
            })
            .collect();
        Tokens {
            of,
            continuing: kept.wrote,
        }
    }

    /// Raise the fencing counters of the locks covering `segments` above every fence the
    /// item's rows carry.
    pub(crate) async fn reseed_fences(
        &self,
        sku: &str,
        segments: &[i32],
    ) -> Result<(), StockError> {
        let mut conn = self.pool.acquire().await?;
        let floor = u64::try_from(store::max_fence(&mut conn, sku, None).await?).unwrap_or(0);
        drop(conn);
        let names = self.lock_names(sku, segments);
        self.concurrency.raise_fences(self, &names, floor).await?;
        self.metrics.fence_reseeded();
        tracing::warn!(%sku, floor, "fencing counters were behind the database (Redis lost data?); re-seeded");
        Ok(())
    }

    /// The `segment` labels of the strategy's lock(s) over `segments`.
    pub(crate) fn lock_labels(&self, segments: &[i32]) -> Vec<String> {
        lock_labels(self.concurrency.item_wide(), segments)
    }

    /// The names of the strategy's Redis locks over `segments` of `sku`, sorted, without
    /// repeats; empty when the strategy takes none.
    pub(crate) fn lock_names(&self, sku: &str, segments: &[i32]) -> Vec<String> {
        let mut names: Vec<String> = segments
            .iter()
            .filter_map(|&segment| self.concurrency.lock_name(self, sku, segment))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The strategy's locks for `segments`, waited for in a `lock.wait` span and recorded in
    /// `stock.lock.wait.duration`.
    pub(crate) async fn lock(&self, sku: &str, segments: &[i32]) -> Result<Held, StockError> {
        let names = self.lock_names(sku, segments);
        if names.is_empty() {
            return Ok(Held::Nothing);
        }
        let strategy = self.strategy();
        let labels = self.lock_labels(segments);
        let span = tracing::info_span!(
            "lock.wait",
            strategy = strategy.as_str(),
            segment = labels.join(","),
            acquired = Empty,
        );
        let started = tokio::time::Instant::now();
        let result = self
            .concurrency
            .acquire(self, &names, self.config.lock_wait, started)
            .instrument(span.clone())
            .await;
        if let Ok(held) = &result {
            span.record("acquired", held.is_some());
            self.waited(sku, segments, &labels, started.elapsed(), held.is_some());
        }
        result?.ok_or(StockError::LockTimeout)
    }

    /// A wait for the strategy's lock(s) (or row locks) over `segments` ended after `waited`:
    /// the `stock.lock.wait.duration` observation, and — a long wait for one segment's own
    /// lock means another instance works there — the instance's home moves on.
    pub(crate) fn waited(
        &self,
        sku: &str,
        segments: &[i32],
        labels: &[String],
        waited: Duration,
        acquired: bool,
    ) {
        self.metrics
            .lock_wait(self.strategy(), labels, waited, acquired);
        if let [segment] = segments
            && waited >= CONTENDED
            && !self.concurrency.item_wide()
        {
            self.leave_contended_home(sku, *segment);
        }
    }

    /// Take the `rlock` locks `names` on the main Redis (one lock, or a MultiLock over
    /// several), with the configured lease; `None` when `wait` ran out.
    pub(crate) async fn acquire_rlocks(
        &self,
        names: &[String],
        wait: Duration,
    ) -> Result<Option<Held>, StockError> {
        if let [name] = names {
            let lock = self.locks.lock(name)?;
            return Ok(lock.try_acquire(wait, self.lease()).await?.map(Held::One));
        }
        let multi = self.locks.multi_lock(names)?;
        Ok(multi.try_acquire(wait, self.lease()).await?.map(Held::Many))
    }

    /// Raise the fencing counters of the `rlock` locks `names` above `floor`.
    pub(crate) async fn raise_rlock_fences(
        &self,
        names: &[String],
        floor: u64,
    ) -> Result<(), StockError> {
        for name in names {
            self.locks.raise_fence(name, floor).await?;
        }
        Ok(())
    }

    /// The strategy's lock(s) over `segments`, taken at `since`, are released now: one
    /// `stock.lock.hold.duration` observation per segment label.
    pub(crate) fn held_since(&self, since: tokio::time::Instant, segments: &[i32]) {
        self.metrics.lock_hold(
            self.strategy(),
            &self.lock_labels(segments),
            since.elapsed(),
        );
    }
}
