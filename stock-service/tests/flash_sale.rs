//! The mission's claim, per strategy: two service instances (own pools, own lock clients),
//! 1000 concurrent deductions of qty 1 on stock 100 over 8 segments: exactly 100 succeed, 900
//! are told "sold out", and the audit balances. The naive strategy, under the same load, must
//! oversell (the negative control, proving the audit can fail).

mod common;

use common::{audit, flash_sale, http, instance, instance_on, put_stock, sku};
use testkit::RedisServer;

const STOCK: i64 = 100;
const BUYERS: usize = 1000;
const SEGMENTS: i32 = 8;
/// Pause between read and write in every strategy: a wide race window.
const RMW_DELAY: &str = "2";

async fn sell_out(strategy: &str, redis: Option<&str>, extra: &[(&str, &str)]) {
    let mut vars = vec![("STOCK_STRATEGY", strategy), ("RMW_DELAY_MS", RMW_DELAY)];
    vars.extend_from_slice(extra);
    let redis = redis.map_or_else(testkit::redis_url, str::to_owned);
    let a = instance_on(&redis, &vars).await;
    let b = instance_on(&redis, &vars).await;
    let sku = sku();
    let c = http();
    put_stock(&c, &a, &sku, STOCK, SEGMENTS).await;

    let t = flash_sale(&[&a, &b], &sku, BUYERS, 64).await;

    assert!(
        t.other.is_empty(),
        "{strategy}: unexpected answers: {:?}",
        &t.other[..t.other.len().min(5)]
    );
    assert_eq!(t.ok, STOCK as usize, "{strategy}: successful deductions");
    assert_eq!(
        t.sold_out,
        BUYERS - STOCK as usize,
        "{strategy}: sold-out answers"
    );
    let report = audit(&c, &a, &sku).await;
    assert_eq!(report["ok"], true, "{strategy}: {report}");
    assert_eq!(report["available"], 0);
    assert_eq!(report["deducted"], STOCK);
    assert_eq!(report["oversold"], 0);
    // Combining is on by default: concurrent deductions of a segment went in groups.
    let (a, b) = (a.stock.groups.stats(), b.stock.groups.stats());
    let (batches, requests) = (a.batches + b.batches, a.requests + b.requests);
    assert!(
        requests > batches,
        "{strategy}: groups larger than one: {requests} deductions in {batches} groups"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn segmented_never_oversells() {
    sell_out("segmented", None, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_lock_never_oversells() {
    sell_out("redis-lock", None, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn db_pessimistic_never_oversells() {
    sell_out("db-pessimistic", None, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn db_optimistic_never_oversells() {
    sell_out("db-optimistic", None, &[("OPTIMISTIC_RETRIES", "1000")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_atomic_never_oversells() {
    sell_out("redis-atomic", None, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redlock_never_oversells() {
    let masters: Vec<RedisServer> = (0..3)
        .map(|_| RedisServer::start().expect("redis-server"))
        .collect();
    let urls = masters
        .iter()
        .map(RedisServer::url)
        .collect::<Vec<_>>()
        .join(",");
    sell_out("redlock", None, &[("REDLOCK_URLS", &urls)]).await;
}

/// The same sale on a real 3-master Redis Cluster (`REDIS_URL` in the `redis+cluster://`
/// form): the segment locks hash to different slots and masters, the item's cache keys share
/// the item's slot, and the sold-out broadcast reaches both instances.
async fn sell_out_on_a_cluster(strategy: &str) {
    let cluster = testkit::RedisCluster::start(3).expect("a 3-master Redis Cluster");
    sell_out(strategy, Some(&cluster.url()), &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn segmented_never_oversells_on_a_redis_cluster() {
    sell_out_on_a_cluster("segmented").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_atomic_never_oversells_on_a_redis_cluster() {
    sell_out_on_a_cluster("redis-atomic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_lock_never_oversells_on_a_redis_cluster() {
    sell_out_on_a_cluster("redis-lock").await;
}

/// Negative control: no lock, same load, same window: the books do not balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn naive_oversells_and_the_audit_says_so() {
    let vars = [("STOCK_STRATEGY", "naive"), ("RMW_DELAY_MS", RMW_DELAY)];
    let a = instance(&vars).await;
    let b = instance(&vars).await;
    let sku = sku();
    let c = http();
    put_stock(&c, &a, &sku, STOCK, SEGMENTS).await;
    let t = flash_sale(&[&a, &b], &sku, BUYERS, 64).await;
    let report = audit(&c, &a, &sku).await;
    assert!(t.ok > STOCK as usize, "naive sold only {} of {STOCK}", t.ok);
    assert_eq!(report["ok"], false, "{report}");
    assert!(report["oversold"].as_i64().unwrap_or(0) > 0, "{report}");
}
