//! redis-atomic's gate: per-segment counters in Redis (`<prefix>:{<sku>}:counters`, a hash
//! of segment -> units), taken from and given back to by Lua scripts. Seeded by a reset,
//! re-seeded from PostgreSQL when Redis lost them, corrected when the database disagrees.

use std::collections::HashMap;
use std::sync::LazyLock;

use redis::AsyncCommands;

use crate::cache::StockCache;

/// Take `qty` from the counters: from one segment if one has enough (starting at ARGV[2]),
/// else greedily across segments if they have enough together. Returns a flat list
/// {segment, units, ...}; empty when there is not enough; {-1} when counters are missing (Redis
/// lost them: the caller re-seeds them from the database).
/// KEYS[1] counters; ARGV[1] qty; ARGV[2] start segment; ARGV[3] segment count.
static TAKE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local qty = tonumber(ARGV[1]); local start = tonumber(ARGV[2]); local n = tonumber(ARGV[3])
if redis.call('hlen', KEYS[1]) < n then return {-1} end
local values = {}
local total = 0
for i = 0, n - 1 do
  local s = (start + i) % n
  local v = tonumber(redis.call('hget', KEYS[1], s) or '0')
  if v >= qty then
    redis.call('hincrby', KEYS[1], s, -qty)
    return {s, qty}
  end
  values[i + 1] = v
  total = total + v
end
if total < qty then return {} end
local out = {}
for i = 0, n - 1 do
  if qty == 0 then break end
  local s = (start + i) % n
  local take = math.min(values[i + 1], qty)
  if take > 0 then
    redis.call('hincrby', KEYS[1], s, -take)
    table.insert(out, s); table.insert(out, take)
    qty = qty - take
  end
end
return out",
    )
});

/// Add ARGV[2] to field ARGV[1] only if the counters exist. KEYS[1] counters.
static GIVE_BACK: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        "if redis.call('exists', KEYS[1]) == 0 then return 0 end
         return redis.call('hincrby', KEYS[1], ARGV[1], ARGV[2])",
    )
});

/// Set field ARGV[1] to ARGV[2] only if the counters exist. KEYS[1] counters.
static CORRECT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        "if redis.call('exists', KEYS[1]) == 0 then return 0 end
         redis.call('hset', KEYS[1], ARGV[1], ARGV[2]) return 1",
    )
});

impl StockCache {
    /// redis-atomic: take `qty` from the counters. `None` when the counters are missing
    /// (Redis lost them), `Some(empty)` when there is not enough.
    pub async fn take(
        &self,
        sku: &str,
        qty: i64,
        start: i32,
        segments: i32,
    ) -> redis::RedisResult<Option<Vec<(i32, i64)>>> {
        let mut conn = self.conn.clone();
        let flat: Vec<i64> = TAKE
            .key(self.keys(sku).counters)
            .arg(qty)
            .arg(start)
            .arg(segments)
            .invoke_async(&mut conn)
            .await?;
        if flat.first() == Some(&-1) {
            return Ok(None);
        }
        Ok(Some(
            flat.chunks_exact(2)
                .filter_map(|c| i32::try_from(c[0]).ok().map(|s| (s, c[1])))
                .collect(),
        ))
    }

    /// redis-atomic: give units back to the counters (a failed database write, a release).
    /// Counters that are missing stay missing (the next deduction re-seeds them from the
    /// database, which already has these units), so a give-back never creates a partial set.
    pub async fn give_back(&self, sku: &str, parts: &[(i32, i64)]) -> redis::RedisResult<()> {
        let key = self.keys(sku).counters;
        let mut conn = self.conn.clone();
        for (segment, qty) in parts {
            let _: i64 = GIVE_BACK
                .key(&key)
                .arg(segment)
                .arg(*qty)
                .invoke_async(&mut conn)
                .await?;
        }
        Ok(())
    }

    /// redis-atomic: re-seed missing counters from the database (fields that exist are kept).
    pub async fn seed_counters(&self, sku: &str, values: &[(i32, i64)]) -> redis::RedisResult<()> {
        let key = self.keys(sku).counters;
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        for (segment, qty) in values {
            pipe.hset_nx(&key, segment, *qty).ignore();
        }
        pipe.query_async(&mut conn).await
    }

    /// redis-atomic: overwrite counters with the database's values (after the database
    /// refused a write Redis allowed, or Redis refused what the database has). Only counters
    /// that exist are overwritten.
    pub async fn correct_counters(
        &self,
        sku: &str,
        values: &[(i32, i64)],
    ) -> redis::RedisResult<()> {
        let key = self.keys(sku).counters;
        let mut conn = self.conn.clone();
        for (segment, value) in values {
            let _: i64 = CORRECT
                .key(&key)
                .arg(segment)
                .arg(*value)
                .invoke_async(&mut conn)
                .await?;
        }
        Ok(())
    }

    /// Sum of redis-atomic's counters (to measure drift against the database).
    pub async fn counters_total(&self, sku: &str) -> redis::RedisResult<Option<i64>> {
        let mut conn = self.conn.clone();
        let values: HashMap<i32, i64> = conn.hgetall(self.keys(sku).counters).await?;
        Ok((!values.is_empty()).then(|| values.values().sum()))
    }
}
