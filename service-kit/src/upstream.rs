//! Upstream instances, their health, and pools that balance over the healthy ones: the
//! gateway's pools of services and the order-service's pool of stock-services share this.
//!
//! An [`Upstream`] counts consecutive failures (transport errors and timeouts seen by the
//! caller, failed active health checks); reaching the threshold ejects it, and any success
//! (a response of any status, or a 2xx health check) re-admits it. A [`Pool`] picks among
//! the upstreams that are not ejected, round robin or by power of two choices.
//! [`check_all`] runs one round of active health checks with the caller's own probe.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

use rand::Rng as _;
use serde::Deserialize;

/// How requests are spread over a pool's upstreams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Each healthy upstream in turn.
    #[default]
    RoundRobin,
    /// Power of two choices: of two random healthy upstreams, the one with fewer requests in
    /// flight.
    P2c,
}

/// One upstream instance (shared by every pool that lists its URL, and kept across reloads).
#[derive(Debug)]
pub struct Upstream {
    /// Base URL, `http://host:port`.
    pub base: String,
    consecutive_failures: AtomicU32,
    ejected: AtomicBool,
    in_flight: AtomicUsize,
}

/// What a recorded outcome changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthChange {
    /// Nothing.
    None,
    /// The upstream was just ejected.
    Ejected,
    /// The upstream was ejected and is back.
    Readmitted,
}

impl Upstream {
    /// A healthy upstream at `base`.
    pub fn new(base: impl Into<String>) -> Self {
        Self {
            base: base.into(),
            consecutive_failures: AtomicU32::new(0),
            ejected: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
        }
    }

    /// Whether the upstream is currently ejected.
    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Acquire)
    }

    /// Requests currently in flight to this upstream.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The upstream answered: resets the failure count and re-admits it.
    pub fn record_success(&self) -> HealthChange {
        self.consecutive_failures.store(0, Ordering::Release);
        if self.ejected.swap(false, Ordering::AcqRel) {
            HealthChange::Readmitted
        } else {
            HealthChange::None
        }
    }

    /// The upstream failed; ejects it at `threshold` consecutive failures.
    pub fn record_failure(&self, threshold: u32) -> HealthChange {
        let failures = self
            .consecutive_failures
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        if failures >= threshold && !self.ejected.swap(true, Ordering::AcqRel) {
            HealthChange::Ejected
        } else {
            HealthChange::None
        }
    }

    /// Counts a request in flight until the guard is dropped.
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }
}

/// A request in flight to an upstream (see [`Upstream::start_request`]).
#[derive(Debug)]
pub struct InFlight(Arc<Upstream>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A named set of upstreams serving the same thing.
#[derive(Debug)]
pub struct Pool {
    /// The pool's name (from the configuration).
    pub name: String,
    upstreams: Vec<Arc<Upstream>>,
    balance: Balance,
    next: AtomicUsize,
}

impl Pool {
    /// A pool over `upstreams`.
    pub fn new(name: impl Into<String>, upstreams: Vec<Arc<Upstream>>, balance: Balance) -> Self {
        Self {
            name: name.into(),
            upstreams,
            balance,
            next: AtomicUsize::new(0),
        }
    }

    /// All upstreams, ejected or not.
    pub fn upstreams(&self) -> &[Arc<Upstream>] {
        &self.upstreams
    }

    /// Whether any upstream is not ejected.
    pub fn has_healthy(&self) -> bool {
        self.upstreams.iter().any(|u| !u.is_ejected())
    }

    /// Picks a healthy upstream not in `tried`; `None` when there is none.
    pub fn pick(&self, tried: &[Arc<Upstream>]) -> Option<Arc<Upstream>> {
        let eligible =
            |u: &&Arc<Upstream>| !u.is_ejected() && !tried.iter().any(|t| Arc::ptr_eq(t, u));
        match self.balance {
            Balance::RoundRobin => {
                let n = self.upstreams.len();
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .filter_map(|i| self.upstreams.get(start.wrapping_add(i) % n))
                    .find(eligible)
                    .cloned()
            }
            Balance::P2c => {
                let candidates: Vec<&Arc<Upstream>> =
                    self.upstreams.iter().filter(eligible).collect();
                match candidates.as_slice() {
                    [] => None,
                    [only] => Some(Arc::clone(only)),
                    _ => {
                        let mut rng = rand::rng();
                        let a = rng.random_range(0..candidates.len());
                        let mut b = rng.random_range(0..candidates.len() - 1);
                        if b >= a {
                            b += 1;
                        }
                        let (a, b) = (candidates[a], candidates[b]);
                        Some(Arc::clone(if b.in_flight() < a.in_flight() {
                            b
                        } else {
                            a
                        }))
                    }
                }
            }
        }
    }
}

/// Probe every upstream once, concurrently, with `probe` (true: healthy), and record the
/// outcomes (`threshold` consecutive failures eject). What changed, upstream by upstream, for
/// the caller to log and count.
pub async fn check_all<F, Fut>(
    upstreams: &[Arc<Upstream>],
    threshold: u32,
    probe: F,
) -> Vec<(Arc<Upstream>, HealthChange)>
where
    F: Fn(Arc<Upstream>) -> Fut,
    Fut: Future<Output = bool> + Send + 'static,
{
    let mut probes = tokio::task::JoinSet::new();
    for upstream in upstreams {
        let up = Arc::clone(upstream);
        let healthy = probe(Arc::clone(upstream));
        probes.spawn(async move { (up, healthy.await) });
    }
    let mut changes = Vec::new();
    while let Some(joined) = probes.join_next().await {
        let Ok((upstream, healthy)) = joined else {
            continue;
        };
        let change = if healthy {
            upstream.record_success()
        } else {
            upstream.record_failure(threshold)
        };
        if change != HealthChange::None {
            changes.push((upstream, change));
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(balance: Balance, n: usize) -> Pool {
        let ups = (0..n)
            .map(|i| Arc::new(Upstream::new(format!("http://u{i}"))))
            .collect();
        Pool::new("p", ups, balance)
    }

    #[test]
    fn round_robin_alternates_and_skips_ejected() {
        let p = pool(Balance::RoundRobin, 2);
        let picks: Vec<String> = (0..4).map(|_| p.pick(&[]).unwrap().base.clone()).collect();
        assert_eq!(picks, ["http://u0", "http://u1", "http://u0", "http://u1"]);
        assert_eq!(p.upstreams()[0].record_failure(2), HealthChange::None);
        assert_eq!(p.upstreams()[0].record_failure(2), HealthChange::Ejected);
        assert_eq!(p.upstreams()[0].record_failure(2), HealthChange::None);
        for _ in 0..3 {
            assert_eq!(p.pick(&[]).unwrap().base, "http://u1");
        }
        assert_eq!(p.upstreams()[0].record_success(), HealthChange::Readmitted);
        assert!(p.has_healthy());
    }

    #[test]
    fn pick_excludes_tried_and_fails_when_none_left() {
        let p = pool(Balance::RoundRobin, 2);
        let first = p.pick(&[]).unwrap();
        let second = p.pick(std::slice::from_ref(&first)).unwrap();
        assert!(!Arc::ptr_eq(&first, &second));
        assert!(p.pick(&[first, second]).is_none());
        p.upstreams()[0].record_failure(1);
        p.upstreams()[1].record_failure(1);
        assert!(p.pick(&[]).is_none());
        assert!(!p.has_healthy());
    }

    #[test]
    fn p2c_prefers_the_less_loaded() {
        let p = pool(Balance::P2c, 2);
        let busy = p.upstreams()[0].start_request();
        for _ in 0..20 {
            assert_eq!(p.pick(&[]).unwrap().base, "http://u1");
        }
        drop(busy);
        assert_eq!(p.upstreams()[0].in_flight(), 0);
    }
}
