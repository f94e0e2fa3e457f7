//! The service's own Redis state: an advisory per-segment availability cache (to pick
//! segments and skip empty ones), the sold-out flag with its cross-instance clearing, and the
//! keys of the redis-atomic strategy's per-segment counters (whose scripts are in
//! `strategy/redis_atomic/counters.rs`). None of it is the source of truth: a
//! stale value costs a wasted attempt, and every answer that matters comes from PostgreSQL.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use redis::AsyncCommands;
use rlock::RedisConnection;
use tokio::task::AbortHandle;
use tokio::time::Instant;

/// Keys of one item (hash-tagged by SKU, so one item's keys share a cluster slot).
#[derive(Debug, Clone)]
pub struct ItemKeys {
    /// Advisory availability per segment (hash: segment -> units).
    pub avail: String,
    /// Present while the item is sold out; holds the epoch it was marked in.
    pub sold_out: String,
    /// Bumped on every restock/release, so a sold-out mark computed before it is refused.
    pub epoch: String,
    /// redis-atomic's authoritative-for-Redis counters (hash: segment -> units).
    pub counters: String,
}

const EVENTS: &str = "events";

/// Mark sold out only if no restock happened since `epoch` was read, and tell every instance.
/// KEYS[1] epoch, KEYS[2] sold-out flag, KEYS[3] events channel; ARGV[1] epoch seen, ARGV[2] sku.
static MARK_SOLD_OUT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if (redis.call('get', KEYS[1]) or '0') ~= ARGV[1] then return 0 end
redis.call('set', KEYS[2], ARGV[1])
redis.call('publish', ARGV[3], 'soldout ' .. ARGV[2])
return 1",
    )
});

/// How long this instance trusts what it saw of a segment's availability itself (see
/// [`StockCache::seen_availability`]).
const SEEN_TTL: Duration = Duration::from_secs(1);

/// Segment availability this instance saw, by SKU and segment, with when it saw it.
type SeenMap = HashMap<String, HashMap<i32, (i64, Instant)>>;
type Seen = Arc<Mutex<SeenMap>>;

/// Redis state of the stock-service.
#[derive(Debug, Clone)]
pub struct StockCache {
    pub(crate) conn: RedisConnection,
    prefix: String,
    sold_out_ttl: Duration,
    local: Arc<Mutex<HashMap<String, Instant>>>,
    seen: Seen,
    _listener: Arc<AbortOnDrop>,
}

#[derive(Debug)]
struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl StockCache {
    /// Connect the event listener (sold-out / restock broadcasts) and return the cache.
    /// `nodes` are the servers the listener may subscribe on: the one Redis, or the nodes of
    /// a cluster (a plain `PUBLISH` on a cluster reaches subscribers on every node, so one
    /// node is enough; the listener moves to the next when its node goes away).
    pub async fn start(
        nodes: Vec<redis::Client>,
        conn: RedisConnection,
        prefix: &str,
        sold_out_ttl: Duration,
    ) -> redis::RedisResult<Self> {
        let local: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let channel = format!("{prefix}:{EVENTS}");
        let pubsub = subscribe_any(&nodes, &channel).await?;
        let seen = Seen::default();
        let listener = tokio::spawn(listen(
            nodes,
            channel,
            pubsub,
            Arc::clone(&local),
            Arc::clone(&seen),
        ));
        Ok(StockCache {
            conn,
            prefix: prefix.to_owned(),
            sold_out_ttl,
            local,
            seen,
            _listener: Arc::new(AbortOnDrop(listener.abort_handle())),
        })
    }

    /// Key names of `sku`.
    pub fn keys(&self, sku: &str) -> ItemKeys {
        let base = format!("{}:{{{sku}}}", self.prefix);
        ItemKeys {
            avail: format!("{base}:avail"),
            sold_out: format!("{base}:soldout"),
            epoch: format!("{base}:epoch"),
            counters: format!("{base}:counters"),
        }
    }

    fn local(&self) -> MutexGuard<'_, HashMap<String, Instant>> {
        self.local.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The fast path: true when this instance knows the item is sold out. No I/O unless the
    /// local flag is older than the TTL, then one GET to confirm it.
    pub async fn is_sold_out(&self, sku: &str) -> bool {
        let Some(since) = self.local().get(sku).copied() else {
            return false;
        };
        if since.elapsed() < self.sold_out_ttl {
            return true;
        }
        let mut conn = self.conn.clone();
        let still: bool = conn.exists(self.keys(sku).sold_out).await.unwrap_or(false);
        let mut local = self.local();
        if still {
            local.insert(sku.to_owned(), Instant::now());
        } else {
            local.remove(sku);
        }
        still
    }

    /// Current restock epoch (read before checking the database for a sold-out verdict).
    pub async fn epoch(&self, sku: &str) -> redis::RedisResult<String> {
        let mut conn = self.conn.clone();
        let e: Option<String> = conn.get(self.keys(sku).epoch).await?;
        Ok(e.unwrap_or_else(|| "0".into()))
    }

    /// Mark sold out if the epoch is still `epoch`; every instance learns it through the
    /// event channel (this one too: the flag is set only by the listener, in order with
    /// restock events).
    pub async fn mark_sold_out(&self, sku: &str, epoch: &str) -> redis::RedisResult<bool> {
        let k = self.keys(sku);
        let mut conn = self.conn.clone();
        let marked: i64 = MARK_SOLD_OUT
            .key(k.epoch)
            .key(k.sold_out)
            .arg(epoch)
            .arg(sku)
            // The broadcast channel is an argument, not a key: on a Redis Cluster a script's
            // keys must share one slot (the item's), and a plain PUBLISH reaches every node.
            .arg(format!("{}:{EVENTS}", self.prefix))
            .invoke_async(&mut conn)
            .await?;
        Ok(marked == 1)
    }

    /// Stock came back (reset or release): new epoch, flag cleared everywhere.
    pub async fn restocked(&self, sku: &str) -> redis::RedisResult<()> {
        let k = self.keys(sku);
        let mut conn = self.conn.clone();
        let _: () = redis::pipe()
            .atomic()
            .incr(&k.epoch, 1)
            .ignore()
            .del(&k.sold_out)
            .ignore()
            .query_async(&mut conn)
            .await?;
        // Announced after the transaction, not inside it: on a Redis Cluster a transaction is
        // routed by its keys (the item's slot) and a PUBLISH has none. The order still holds:
        // a sold-out mark after the new epoch no longer matches it and announces nothing, and
        // one before it was announced before this.
        let _: () = conn
            .publish(
                format!("{}:{EVENTS}", self.prefix),
                format!("restock {sku}"),
            )
            .await?;
        self.local().remove(sku);
        self.seen().remove(sku);
        Ok(())
    }

    /// Advisory availability per segment (empty when unknown).
    pub async fn availability(&self, sku: &str) -> HashMap<i32, i64> {
        let mut conn = self.conn.clone();
        conn.hgetall(self.keys(sku).avail).await.unwrap_or_default()
    }

    /// What this instance itself saw of `sku`'s segments within the last second: its own
    /// writes and reads. No I/O: a combined deduction picks its segment from this, so that a
    /// request costs Redis nothing on its own. Stale only toward "less than there is" after
    /// another instance's release (a restock clears it everywhere), which costs a detour
    /// through the all-segments path, never a wrong answer.
    pub fn seen_availability(&self, sku: &str) -> HashMap<i32, i64> {
        self.seen()
            .get(sku)
            .map(|segments| {
                segments
                    .iter()
                    .filter(|(_, (_, at))| at.elapsed() < SEEN_TTL)
                    .map(|(&segment, &(available, _))| (segment, available))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn seen(&self) -> MutexGuard<'_, SeenMap> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Record segments' availability after a committed change or a read under the lock
    /// (best effort): in Redis for every instance, and locally.
    pub async fn set_availability(&self, sku: &str, values: &[(i32, i64)]) {
        if values.is_empty() {
            return;
        }
        {
            let now = Instant::now();
            let mut seen = self.seen();
            let segments = seen.entry(sku.to_owned()).or_default();
            for &(segment, available) in values {
                segments.insert(segment, (available, now));
            }
        }
        let mut conn = self.conn.clone();
        let r: redis::RedisResult<()> = conn.hset_multiple(self.keys(sku).avail, values).await;
        if let Err(err) = r {
            tracing::debug!(%sku, error = %err, "availability cache not updated");
        }
    }

    /// Replace the item's Redis state after a reset: availability and redis-atomic counters.
    pub async fn reset(&self, sku: &str, values: &[(i32, i64)]) -> redis::RedisResult<()> {
        let k = self.keys(sku);
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(&k.avail)
            .ignore()
            .del(&k.counters)
            .ignore();
        if !values.is_empty() {
            pipe.hset_multiple(&k.avail, values).ignore();
            pipe.hset_multiple(&k.counters, values).ignore();
        }
        let _: () = pipe.query_async(&mut conn).await?;
        self.restocked(sku).await
    }
}

/// Apply sold-out / restock broadcasts to the local flags; resubscribe after a disconnect and
/// drop every local flag then (a restock may have been missed).
/// A pub/sub connection subscribed to `channel` on the first of `nodes` that takes it.
async fn subscribe_any(
    nodes: &[redis::Client],
    channel: &str,
) -> redis::RedisResult<redis::aio::PubSub> {
    let mut last = None;
    for node in nodes {
        match node.get_async_pubsub().await {
            Ok(mut p) => match p.subscribe(channel).await {
                Ok(()) => return Ok(p),
                Err(err) => last = Some(err),
            },
            Err(err) => last = Some(err),
        }
    }
    Err(last.unwrap_or_else(|| {
        redis::RedisError::from(std::io::Error::other("no Redis node to subscribe on"))
    }))
}

async fn listen(
    nodes: Vec<redis::Client>,
    channel: String,
    mut pubsub: redis::aio::PubSub,
    local: Arc<Mutex<HashMap<String, Instant>>>,
    seen: Seen,
) {
    loop {
        {
            let mut stream = pubsub.on_message();
            while let Some(msg) = stream.next().await {
                let Ok(text) = msg.get_payload::<String>() else {
                    continue;
                };
                let mut flags = local.lock().unwrap_or_else(PoisonError::into_inner);
                match text.split_once(' ') {
                    Some(("soldout", sku)) => {
                        flags.insert(sku.to_owned(), Instant::now());
                    }
                    Some(("restock", sku)) => {
                        flags.remove(sku);
                        seen.lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .remove(sku);
                    }
                    _ => {}
                }
            }
        }
        local.lock().unwrap_or_else(PoisonError::into_inner).clear();
        seen.lock().unwrap_or_else(PoisonError::into_inner).clear();
        let mut backoff = Duration::from_millis(50);
        pubsub = loop {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
            if let Ok(p) = subscribe_any(&nodes, &channel).await {
                break p;
            }
        };
    }
}
