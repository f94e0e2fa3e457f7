//! What the load test's clients saw: every answer classified into an [`Outcome`] with its
//! latency, and the facts the verdict checks from the client side (orders seen per
//! Idempotency-Key and per user).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How one request ended, as the load test classifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// 201: a new order (first answer for its key).
    Created,
    /// The same order again for a resent key (`Idempotent-Replayed: true`).
    Replayed,
    /// 409 `sold-out` / `insufficient-stock`.
    SoldOut,
    /// 409 `purchase-limit`: the buyer already holds the limit.
    PurchaseLimit,
    /// 409 `request-in-progress`: the key's first request is still running.
    InFlight,
    /// 429 from the gateway's rate limits.
    RateLimited,
    /// 200 on `/pay`.
    Paid,
    /// 200 on `/cancel`.
    Cancelled,
    /// 200 on `GET /api/stock/{sku}`.
    Browsed,
    /// 200 on `/api/login`.
    LoggedIn,
    /// 200 on the gateway's own `GET /healthz` (the `trivial` scenario's baseline).
    Healthz,
    /// Anything else: 5xx, transport errors, unexpected statuses or bodies.
    Error,
}

impl Outcome {
    /// Every outcome, in report order.
    pub const ALL: [Outcome; 12] = [
        Outcome::Created,
        Outcome::Replayed,
        Outcome::SoldOut,
        Outcome::PurchaseLimit,
        Outcome::InFlight,
        Outcome::RateLimited,
        Outcome::Paid,
        Outcome::Cancelled,
        Outcome::Browsed,
        Outcome::LoggedIn,
        Outcome::Healthz,
        Outcome::Error,
    ];

    /// The snake_case name used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Replayed => "replayed",
            Outcome::SoldOut => "sold_out",
            Outcome::PurchaseLimit => "purchase_limit",
            Outcome::InFlight => "in_flight",
            Outcome::RateLimited => "rate_limited",
            Outcome::Paid => "paid",
            Outcome::Cancelled => "cancelled",
            Outcome::Browsed => "browsed",
            Outcome::LoggedIn => "logged_in",
            Outcome::Healthz => "healthz",
            Outcome::Error => "error",
        }
    }

    /// Whether the answer was a rejection a flash sale expects (not an error).
    pub fn is_rejection(self) -> bool {
        matches!(
            self,
            Outcome::SoldOut | Outcome::PurchaseLimit | Outcome::InFlight | Outcome::RateLimited
        )
    }
}

/// Latency statistics of one outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyStats {
    /// Requests.
    pub count: u64,
    /// Median, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile, milliseconds.
    pub p99_ms: f64,
    /// Slowest, milliseconds.
    pub max_ms: f64,
}

impl LatencyStats {
    /// Statistics of `micros` (any order).
    pub fn from_micros(micros: &[u64]) -> Self {
        if micros.is_empty() {
            return Self::default();
        }
        let mut sorted = micros.to_vec();
        sorted.sort_unstable();
        let ms = |v: u64| v as f64 / 1000.0;
        Self {
            count: sorted.len() as u64,
            p50_ms: ms(nearest_rank(&sorted, 0.50)),
            p99_ms: ms(nearest_rank(&sorted, 0.99)),
            max_ms: ms(sorted[sorted.len() - 1]),
        }
    }
}

/// The nearest-rank percentile of sorted, non-empty `values`.
fn nearest_rank(sorted: &[u64], q: f64) -> u64 {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The client-side facts the verdict checks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientFacts {
    /// Order requests sent (first attempts and resends).
    pub order_requests: u64,
    /// Distinct order ids answered 201/200 to any buyer.
    pub orders_seen: u64,
    /// Of those, orders the load test cancelled (confirmed by a 200).
    pub orders_cancelled: u64,
    /// Of those, orders the load test paid (confirmed by a 200).
    pub orders_paid: u64,
    /// Keys resent after their first success.
    pub resends: u64,
    /// Idempotency-Keys answered with two different order ids.
    pub key_conflicts: u64,
    /// Resends of a successful key answered with something other than the same order (a
    /// rejection, a different status).
    pub replay_mismatches: u64,
    /// Resends answered with the same order but without `Idempotent-Replayed: true`.
    pub replays_unmarked: u64,
    /// The most orders one buyer held at the end (seen minus cancelled).
    pub max_orders_held_by_one_user: u64,
    /// Buyers holding more than one order at the end (seen minus cancelled).
    pub users_holding_several: u64,
    /// Genuine errors (the [`Outcome::Error`] count).
    pub errors: u64,
}

#[derive(Debug, Default)]
struct Inner {
    latencies: BTreeMap<Outcome, Vec<u64>>,
    first_order: Option<Duration>,
    first_sold_out: Option<Duration>,
    last_created: Option<Duration>,
    order_requests: u64,
    resends: u64,
    key_orders: HashMap<String, String>,
    key_conflicts: u64,
    replay_mismatches: u64,
    replays_unmarked: u64,
    orders_by_user: HashMap<String, HashSet<String>>,
    cancelled: HashSet<String>,
    paid: HashSet<String>,
    error_samples: Vec<String>,
    errors_by_kind: BTreeMap<String, u64>,
}

/// Thread-safe recorder shared by every goose user of one run.
#[derive(Debug)]
pub struct Recorder {
    started: Instant,
    inner: Mutex<Inner>,
}

/// Error samples kept for the report.
const ERROR_SAMPLES: usize = 20;

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// A recorder whose clock starts now.
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let mut guard = match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// Record one answer of `outcome` that took `latency`.
    pub fn outcome(&self, outcome: Outcome, latency: Duration) {
        let at = self.started.elapsed();
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.with(|i| {
            i.latencies.entry(outcome).or_default().push(micros);
            match outcome {
                Outcome::SoldOut if i.first_sold_out.is_none() => i.first_sold_out = Some(at),
                Outcome::Created => i.last_created = Some(at),
                _ => {}
            }
        });
    }

    /// An order request is about to be sent (`resend`: the key was used before).
    pub fn order_sent(&self, resend: bool) {
        let at = self.started.elapsed();
        self.with(|i| {
            i.order_requests += 1;
            if resend {
                i.resends += 1;
            }
            i.first_order.get_or_insert(at);
        });
    }

    /// `key` of `user` was answered with order `order_id` (201 or a replay). Returns false
    /// if the key was answered with another order before (a duplicate).
    pub fn order_seen(&self, user: &str, key: &str, order_id: &str) -> bool {
        self.with(|i| {
            i.orders_by_user
                .entry(user.to_owned())
                .or_default()
                .insert(order_id.to_owned());
            match i.key_orders.get(key) {
                Some(first) if first != order_id => {
                    i.key_conflicts += 1;
                    false
                }
                Some(_) => true,
                None => {
                    i.key_orders.insert(key.to_owned(), order_id.to_owned());
                    true
                }
            }
        })
    }

    /// A resent key was not answered with the same order.
    pub fn replay_mismatch(&self, detail: String) {
        self.with(|i| i.replay_mismatches += 1);
        self.error_sample("replay-mismatch", detail);
    }

    /// A resent key was answered with the same order but no `Idempotent-Replayed` header.
    pub fn replay_unmarked(&self) {
        self.with(|i| i.replays_unmarked += 1);
    }

    /// The order was paid.
    pub fn paid(&self, order_id: &str) {
        self.with(|i| i.paid.insert(order_id.to_owned()));
    }

    /// The order was cancelled.
    pub fn cancelled(&self, order_id: &str) {
        self.with(|i| i.cancelled.insert(order_id.to_owned()));
    }

    /// Keep a sample of a genuine error (`kind` groups them).
    pub fn error_sample(&self, kind: &str, detail: String) {
        self.with(|i| {
            *i.errors_by_kind.entry(kind.to_owned()).or_default() += 1;
            if i.error_samples.len() < ERROR_SAMPLES {
                i.error_samples.push(format!("{kind}: {detail}"));
            }
        });
    }

    /// Latency statistics by outcome (outcomes without requests left out).
    pub fn latencies(&self) -> BTreeMap<Outcome, LatencyStats> {
        self.with(|i| {
            i.latencies
                .iter()
                .map(|(o, v)| (*o, LatencyStats::from_micros(v)))
                .collect()
        })
    }

    /// Seconds from the first order request to the first sold-out answer.
    pub fn time_to_sell_out(&self) -> Option<f64> {
        self.with(|i| match (i.first_order, i.first_sold_out) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a).as_secs_f64()),
            _ => None,
        })
    }

    /// Seconds from the first order request to the last new order.
    pub fn selling_window(&self) -> Option<f64> {
        self.with(|i| match (i.first_order, i.last_created) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a).as_secs_f64()),
            _ => None,
        })
    }

    /// Error samples and counts by kind.
    pub fn errors(&self) -> (Vec<String>, BTreeMap<String, u64>) {
        self.with(|i| (i.error_samples.clone(), i.errors_by_kind.clone()))
    }

    /// The facts for the verdict.
    pub fn facts(&self) -> ClientFacts {
        self.with(|i| {
            let seen: HashSet<&String> = i.orders_by_user.values().flatten().collect();
            let held = |orders: &HashSet<String>| {
                orders.iter().filter(|o| !i.cancelled.contains(*o)).count() as u64
            };
            let holdings: Vec<u64> = i.orders_by_user.values().map(held).collect();
            ClientFacts {
                order_requests: i.order_requests,
                orders_seen: seen.len() as u64,
                orders_cancelled: i.cancelled.iter().filter(|o| seen.contains(o)).count() as u64,
                orders_paid: i.paid.iter().filter(|o| seen.contains(o)).count() as u64,
                resends: i.resends,
                key_conflicts: i.key_conflicts,
                replay_mismatches: i.replay_mismatches,
                replays_unmarked: i.replays_unmarked,
                max_orders_held_by_one_user: holdings.iter().copied().max().unwrap_or(0),
                users_holding_several: holdings.iter().filter(|h| **h > 1).count() as u64,
                errors: i
                    .latencies
                    .get(&Outcome::Error)
                    .map_or(0, |v| v.len() as u64),
            }
        })
    }

    /// Users holding more than `limit` orders at the end, by the clients' account.
    pub fn users_over(&self, limit: u64) -> u64 {
        self.with(|i| {
            i.orders_by_user
                .values()
                .filter(|orders| {
                    orders.iter().filter(|o| !i.cancelled.contains(*o)).count() as u64 > limit
                })
                .count() as u64
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let micros: Vec<u64> = (1..=100).map(|v| v * 1000).collect();
        let s = LatencyStats::from_micros(&micros);
        assert_eq!(s.count, 100);
        assert_eq!(s.p50_ms, 50.0);
        assert_eq!(s.p99_ms, 99.0);
        assert_eq!(s.max_ms, 100.0);
        assert_eq!(LatencyStats::from_micros(&[]), LatencyStats::default());
        let one = LatencyStats::from_micros(&[1500]);
        assert_eq!((one.p50_ms, one.p99_ms), (1.5, 1.5));
    }

    #[test]
    fn keys_answered_with_two_orders_are_conflicts() {
        let r = Recorder::new();
        assert!(r.order_seen("u1", "k1", "o1"));
        assert!(r.order_seen("u1", "k1", "o1"));
        assert!(!r.order_seen("u1", "k1", "o2"));
        assert!(r.order_seen("u2", "k2", "o3"));
        r.cancelled("o3");
        r.paid("o1");
        let f = r.facts();
        assert_eq!(f.key_conflicts, 1);
        assert_eq!(f.orders_seen, 3);
        assert_eq!(f.orders_cancelled, 1);
        assert_eq!(f.orders_paid, 1);
        assert_eq!(f.max_orders_held_by_one_user, 2);
        assert_eq!(f.users_holding_several, 1);
        assert_eq!(r.users_over(1), 1);
        assert_eq!(r.users_over(2), 0);
    }

    #[test]
    fn sell_out_time_runs_from_the_first_order_to_the_first_sold_out() {
        let r = Recorder::new();
        assert_eq!(r.time_to_sell_out(), None);
        r.order_sent(false);
        std::thread::sleep(Duration::from_millis(20));
        r.outcome(Outcome::Created, Duration::from_millis(3));
        r.outcome(Outcome::SoldOut, Duration::from_millis(1));
        let t = r.time_to_sell_out().unwrap();
        assert!((0.02..5.0).contains(&t), "{t}");
        assert!(r.selling_window().unwrap() <= t + 0.001);
        assert_eq!(r.latencies()[&Outcome::Created].count, 1);
        assert_eq!(r.facts().order_requests, 1);
    }
}
