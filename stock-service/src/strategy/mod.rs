//! The deduction strategies the literature compares, selectable per instance: their names
//! ([`Strategy`]) and, one module each, their concurrency control behind one trait
//! ([`concurrency::Concurrency`]), which is all the engine asks of them.

pub(crate) mod concurrency;
mod db_optimistic;
mod db_pessimistic;
mod fenced;
mod naive;
pub mod redis_atomic;
mod redis_lock;
mod redlock;
mod segmented;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use concurrency::Concurrency;
use fenced::Fenced;

/// How an instance keeps concurrent deductions of one item from overselling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Read-modify-write with no concurrency control at all. Oversells: the negative control.
    Naive,
    /// `SELECT … FOR UPDATE` on the segment rows inside the transaction.
    DbPessimistic,
    /// A version column compared and set, with bounded retries.
    DbOptimistic,
    /// One watchdog lock per item, fenced writes.
    RedisLock,
    /// One lock per segment, fenced writes; several segments under a MultiLock (the default).
    Segmented,
    /// `segmented` with each segment lock a RedLock over independent masters.
    Redlock,
    /// A Lua script decrements per-segment counters in Redis, then a guarded SQL decrement.
    RedisAtomic,
}

impl Strategy {
    /// Every strategy, in the order the docs compare them.
    pub const ALL: [Strategy; 7] = [
        Strategy::Naive,
        Strategy::DbPessimistic,
        Strategy::DbOptimistic,
        Strategy::RedisLock,
        Strategy::Segmented,
        Strategy::Redlock,
        Strategy::RedisAtomic,
    ];

    /// The name used in config, the API and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Naive => "naive",
            Strategy::DbPessimistic => "db-pessimistic",
            Strategy::DbOptimistic => "db-optimistic",
            Strategy::RedisLock => "redis-lock",
            Strategy::Segmented => "segmented",
            Strategy::Redlock => "redlock",
            Strategy::RedisAtomic => "redis-atomic",
        }
    }

    /// Whether concurrent single-segment deductions are combined into groups when
    /// `STOCK_BATCH_MAX` is above 1 (every strategy but `naive`, see `naive.rs`).
    pub fn combines(self) -> bool {
        self.concurrency().combines()
    }

    /// The strategy's concurrency control, as the engine uses it.
    pub(crate) fn concurrency(self) -> Arc<dyn Concurrency> {
        match self {
            Strategy::Naive => Arc::new(naive::Naive),
            Strategy::DbPessimistic => Arc::new(db_pessimistic::DbPessimistic),
            Strategy::DbOptimistic => Arc::new(db_optimistic::DbOptimistic),
            Strategy::RedisLock => Arc::new(Fenced(redis_lock::RedisLock)),
            Strategy::Segmented => Arc::new(Fenced(segmented::Segmented)),
            Strategy::Redlock => Arc::new(Fenced(redlock::Redlock)),
            Strategy::RedisAtomic => Arc::new(redis_atomic::RedisAtomic),
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown strategy name.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown strategy {0:?}; expected one of naive, db-pessimistic, db-optimistic, redis-lock, segmented, redlock, redis-atomic"
)]
pub struct UnknownStrategy(String);

impl FromStr for Strategy {
    type Err = UnknownStrategy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Strategy::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownStrategy(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in Strategy::ALL {
            assert_eq!(s.as_str().parse::<Strategy>().ok(), Some(s));
        }
        assert!("mutex".parse::<Strategy>().is_err());
    }
}
