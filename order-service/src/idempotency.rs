//! Idempotency-Key handling (IETF draft-ietf-httpapi-idempotency-key-header, Stripe's
//! semantics): parsing the header, the request fingerprint, and the Redis replay records that
//! let replays and the sold-out fast path skip the database.
//!
//! PostgreSQL's `idempotency_keys` primary key is the guarantee that one key makes one order.
//! Redis only speeds up the common cases, and it is trusted for them only while its records
//! are known to be complete: every final response is written to Redis before it is committed
//! and sent, and a marker key says the records were rebuilt from the database after Redis was
//! last empty. Without the marker (a restart, a flush) both fast paths are off until an
//! instance has copied the live responses back.
//!
//! Records are spread over [`BUCKETS`] buckets by key, and each bucket has its own marker in
//! the same hash slot as its records: on a Redis Cluster a master that loses its data loses a
//! bucket's records and its marker together, so no lookup trusts an incomplete bucket.

use std::time::Duration;

use futures_util::future::join_all;
use redis::AsyncCommands;
use rlock::{RedisConnection, ReplicaSync};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{PgPool, Row};

use crate::store::StoredResponse;

/// Longest key accepted (Stripe's limit).
pub const MAX_KEY_LEN: usize = 255;

/// Parse an `Idempotency-Key` header value: an RFC 8941 string (`"…"`) or a bare token, 1 to
/// 255 visible ASCII characters without quotes or backslashes.
pub fn parse_key(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    let inner = raw
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(raw);
    if inner.is_empty() || inner.len() > MAX_KEY_LEN {
        return Err(format!(
            "Idempotency-Key must be 1 to {MAX_KEY_LEN} characters"
        ));
    }
    if !inner
        .bytes()
        .all(|b| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'\\')
    {
        return Err("Idempotency-Key must be visible ASCII without quotes or backslashes".into());
    }
    Ok(inner.to_owned())
}

/// A stored final response with the fingerprint of the request that made it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// Canonical request the key was first used with.
    pub fingerprint: String,
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: Value,
    /// `Location` header.
    pub location: Option<String>,
}

impl Record {
    /// The stored response.
    pub fn response(&self) -> StoredResponse {
        StoredResponse {
            status: self.status,
            body: self.body.clone(),
            location: self.location.clone(),
        }
    }
}

/// What Redis can answer without the database.
#[derive(Debug)]
pub enum FastPath {
    /// The key's final response.
    Replay(Record),
    /// The item is sold out and the key has no stored response (so it is new).
    SoldOut,
    /// Nothing certain: take the database path.
    Miss,
}

/// Buckets of replay records, each with its own hash tag and completeness marker.
pub const BUCKETS: u32 = 64;

/// The bucket of a (user, key): FNV-1a, so every instance and build agrees.
pub fn bucket(user: &str, key: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in user.bytes().chain([0]).chain(key.bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % BUCKETS
}

/// Replay records in Redis.
#[derive(Debug, Clone)]
pub struct ReplayCache {
    conn: RedisConnection,
    ttl: Duration,
    stock_prefix: String,
    /// `<ORDER_KEY_PREFIX>:idem`: shops sharing one Redis keep their records (and their
    /// completeness markers) apart.
    idem: String,
    /// Replicas that must acknowledge an in-flight marker, and for how long to wait.
    marker_sync: Option<ReplicaSync>,
}

/// What a key's record holds while its first attempt may still be in flight: written before
/// the attempt's claim can commit, and replaced by the final response. The sold-out fast path
/// never answers for such a key (it may yet have an order), so a retry of a key whose first
/// attempt is paused, slow or dead goes to the database and gets 409 `request-in-progress` or
/// the order's real outcome.
const IN_FLIGHT: &str = "in-flight";

impl ReplayCache {
    /// Records live `ttl` (the idempotency key lifetime) under `prefix` (`ORDER_KEY_PREFIX`);
    /// sold-out flags are read from the stock-service's keys under `stock_prefix`.
    pub fn new(conn: RedisConnection, ttl: Duration, stock_prefix: &str, prefix: &str) -> Self {
        ReplayCache {
            conn,
            ttl,
            stock_prefix: stock_prefix.to_owned(),
            idem: format!("{prefix}:idem"),
            marker_sync: None,
        }
    }

    /// Make [`ReplayCache::mark_in_flight`] wait until `replicas` replicas hold the marker
    /// (Redis `WAIT`, at most `wait`), and fail when fewer do.
    #[must_use]
    pub fn with_marker_replicas(mut self, replicas: usize, wait: Duration) -> Self {
        self.marker_sync = (replicas > 0).then_some(ReplicaSync {
            replicas,
            timeout: wait,
        });
        self
    }

    fn record_key(&self, user: &str, key: &str) -> String {
        let b = bucket(user, key);
        format!("{}:{{b{b}}}:{}:{user}:{key}", self.idem, user.len())
    }

    /// The marker saying bucket `b`'s records are complete (in the bucket's slot).
    fn complete(&self, b: u32) -> String {
        format!("{}:{{b{b}}}:complete", self.idem)
    }

    /// The marker of a rebuild in progress (one instance at a time).
    fn rebuilding(&self) -> String {
        format!("{}:rebuilding", self.idem)
    }

    /// One pipeline: the key's record, its bucket's completeness marker and the item's
    /// sold-out flag.
    pub async fn lookup(&self, user: &str, key: &str, sku: &str) -> FastPath {
        let mut conn = self.conn.clone();
        let flag = format!("{}:{{{sku}}}:soldout", self.stock_prefix);
        // One round trip on one Redis; on a cluster the three keys live in different slots
        // and redis-rs sends each node its part of the pipeline at once.
        let mut pipe = redis::pipe();
        pipe.get(self.record_key(user, key))
            .get(self.complete(bucket(user, key)))
            .get(flag);
        let got = pipe
            .query_async::<(Option<String>, Option<String>, Option<String>)>(&mut conn)
            .await;
        match got {
            Ok((record, Some(_complete), sold_out)) => match record {
                Some(r) if r == IN_FLIGHT => FastPath::Miss,
                Some(r) => {
                    serde_json::from_str::<Record>(&r).map_or(FastPath::Miss, FastPath::Replay)
                }
                None if sold_out.is_some() => FastPath::SoldOut,
                None => FastPath::Miss,
            },
            _ => FastPath::Miss,
        }
    }

    /// Mark the key in flight before its claim can commit (see [`IN_FLIGHT`]); a record that
    /// is already there (a marker, or a final response) stays. An error means the claim must
    /// not be made: without the marker the fast path could later answer "sold out" for a key
    /// that has an order.
    /// With replicas configured ([`ReplayCache::with_marker_replicas`]), the marker counts only
    /// once that many replicas acknowledged it: a failover to a replica without it would lose it.
    pub async fn mark_in_flight(&self, user: &str, key: &str) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        let record = self.record_key(user, key);
        let _: Option<String> = redis::cmd("SET")
            .arg(&record)
            .arg(IN_FLIGHT)
            .arg("NX")
            .arg("EX")
            .arg(self.ttl.as_secs().max(1))
            .query_async(&mut conn)
            .await?;
        let Some(sync) = self.marker_sync else {
            return Ok(());
        };
        // WAIT covers every earlier write of this connection, the marker (or the record that
        // was already there) included.
        let acked = conn.wait_for_replicas(&record, sync).await?;
        if acked < sync.replicas {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "in-flight marker not replicated",
                format!("{acked} of {} replicas acknowledged", sync.replicas),
            )));
        }
        Ok(())
    }

    /// Write a final response before it is committed and sent. An error means the response
    /// must not be sent as final (Redis would then miss a record while claiming completeness).
    pub async fn store(&self, user: &str, key: &str, record: &Record) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        let json = serde_json::to_string(record).map_err(|e| {
            redis::RedisError::from((redis::ErrorKind::Client, "serialize", e.to_string()))
        })?;
        conn.set_ex(self.record_key(user, key), json, self.ttl.as_secs().max(1))
            .await
    }

    /// Whether every bucket's marker is there (each in its own slot: asked at once).
    async fn all_complete(&self) -> redis::RedisResult<bool> {
        let checks = (0..BUCKETS).map(|b| {
            let mut conn = self.conn.clone();
            let marker = self.complete(b);
            async move { conn.exists::<_, bool>(marker).await }
        });
        let mut all = true;
        for present in join_all(checks).await {
            all &= present?;
        }
        Ok(all)
    }

    /// Make the records complete if Redis lost any of them: copy every live final response
    /// from the database, then set every bucket's marker. One instance at a time; cheap when
    /// the markers are there.
    pub async fn ensure_complete(&self, pool: &PgPool) -> anyhow::Result<bool> {
        let mut conn = self.conn.clone();
        if self.all_complete().await? {
            return Ok(true);
        }
        let lock: Option<String> = redis::cmd("SET")
            .arg(self.rebuilding())
            .arg("1")
            .arg("NX")
            .arg("EX")
            .arg(60)
            .query_async(&mut conn)
            .await?;
        if lock.is_none() {
            return Ok(false);
        }
        self.mark_live_keys(pool, &mut conn).await?;
        let rows = sqlx::query(
            "SELECT user_id, key, fingerprint, status, body, location,
                    GREATEST(EXTRACT(EPOCH FROM expires_at - now())::bigint, 1)
             FROM idempotency_keys WHERE state = 'done' AND expires_at > now()",
        )
        .fetch_all(pool)
        .await?;
        let mut by_bucket = Buckets::default();
        for r in &rows {
            let (user, key): (String, String) = (r.get(0), r.get(1));
            let record = Record {
                fingerprint: r.get(2),
                status: u16::try_from(r.get::<Option<i32>, _>(3).unwrap_or(500)).unwrap_or(500),
                body: r.get::<Option<Value>, _>(4).unwrap_or(Value::Null),
                location: r.get(5),
            };
            let ttl: i64 = r.get(6);
            by_bucket.pipe(&user, &key).set_ex(
                self.record_key(&user, &key),
                serde_json::to_string(&record)?,
                u64::try_from(ttl).unwrap_or(1),
            );
        }
        by_bucket.run(&mut conn).await?;
        for b in 0..BUCKETS {
            let _: () = conn.set(self.complete(b), "1").await?;
        }
        let _: () = conn.del(self.rebuilding()).await?;
        tracing::info!(records = rows.len(), "replay records rebuilt in Redis");
        Ok(true)
    }

    /// The rebuild's first step: an in-flight marker for every live key without a final
    /// response (its order may still be completed by its request or the recovery worker).
    /// Markers go first, so that no such key is missed by the time the fast path is back on.
    async fn mark_live_keys(
        &self,
        pool: &PgPool,
        conn: &mut RedisConnection,
    ) -> anyhow::Result<()> {
        let live: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT user_id, key, GREATEST(EXTRACT(EPOCH FROM expires_at - now())::bigint, 1)
             FROM idempotency_keys WHERE state <> 'done' AND expires_at > now()",
        )
        .fetch_all(pool)
        .await?;
        let mut by_bucket = Buckets::default();
        for (user, key, ttl) in &live {
            by_bucket
                .pipe(user, key)
                .cmd("SET")
                .arg(self.record_key(user, key))
                .arg(IN_FLIGHT)
                .arg("NX")
                .arg("EX")
                .arg(u64::try_from(*ttl).unwrap_or(1));
        }
        by_bucket.run(conn).await?;
        Ok(())
    }
}

/// Commands grouped by bucket, so that each pipeline stays in one slot (on a cluster a
/// pipeline goes to one node).
#[derive(Default)]
struct Buckets {
    pipes: std::collections::HashMap<u32, redis::Pipeline>,
}

impl Buckets {
    /// The pipeline of (user, key)'s bucket.
    fn pipe(&mut self, user: &str, key: &str) -> &mut redis::Pipeline {
        self.pipes.entry(bucket(user, key)).or_default()
    }

    /// Run every bucket's pipeline, replies ignored.
    async fn run(mut self, conn: &mut RedisConnection) -> redis::RedisResult<()> {
        for (_, pipe) in self.pipes.drain() {
            let _: Vec<redis::Value> = pipe.query_async(conn).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_tokens_or_sf_strings() {
        assert_eq!(parse_key("abc-123").as_deref(), Ok("abc-123"));
        assert_eq!(
            parse_key("\"8e03978e-40d5\"").as_deref(),
            Ok("8e03978e-40d5")
        );
        assert!(parse_key("").is_err());
        assert!(parse_key("\"\"").is_err());
        assert!(parse_key("has space").is_err());
        assert!(parse_key(&"k".repeat(256)).is_err());
        assert!(parse_key(&"k".repeat(255)).is_ok());
        assert!(parse_key("caf\u{e9}").is_err());
    }
}
