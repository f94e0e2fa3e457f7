//! The locks on a real 3-master Redis Cluster (started by testkit from `redis-server
//! --cluster-enabled yes` processes): exclusion, a hot item's segments on different masters
//! renewed together, wake-up through sharded pub/sub, and after the lock's slot moved.

mod common;

use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use rlock::{LockClient, LockConfig};
use testkit::RedisCluster;
use tokio::time::Instant;

use common::config;

async fn connect(cluster: &RedisCluster, cfg: LockConfig) -> LockClient {
    LockClient::connect(&cluster.urls().join(","), cfg)
        .await
        .expect("connect to the cluster")
}

fn start() -> RedisCluster {
    RedisCluster::start(3).expect("a 3-master cluster (redis-server, redis-cli)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn both_locks_exclude_across_clients_on_a_cluster() {
    let cluster = start();
    let cfg = config();
    let clients = [
        connect(&cluster, cfg.clone()).await,
        connect(&cluster, cfg.clone()).await,
    ];
    assert!(clients[0].is_cluster());
    for fair in [false, true] {
        let counter = format!("{}:{{counter}}:{fair}", cfg.key_prefix);
        let mut tasks = Vec::new();
        for c in &clients {
            for _ in 0..4 {
                let (c, counter) = (c.clone(), counter.clone());
                tasks.push(tokio::spawn(async move {
                    let mut conn = c.connection();
                    for _ in 0..25 {
                        let guard: Box<dyn std::any::Any + Send> = if fair {
                            Box::new(
                                c.fair_lock("hot")
                                    .expect("lock")
                                    .acquire()
                                    .await
                                    .expect("acquire"),
                            )
                        } else {
                            Box::new(
                                c.lock("hot")
                                    .expect("lock")
                                    .acquire()
                                    .await
                                    .expect("acquire"),
                            )
                        };
                        let v: Option<i64> = conn.get(&counter).await.expect("get");
                        let _: () = conn.set(&counter, v.unwrap_or(0) + 1).await.expect("set");
                        drop(guard);
                    }
                }));
            }
        }
        for t in tasks {
            t.await.expect("task");
        }
        // Drops release in the background: wait for the last one before reading.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut conn = clients[0].connection();
        let total: i64 = conn.get(&counter).await.expect("get");
        assert_eq!(
            total, 200,
            "lost updates under the lock on a cluster (fair: {fair})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn segments_on_different_masters_are_held_and_renewed_together() {
    let cluster = start();
    let cfg = LockConfig {
        watchdog_timeout: Duration::from_millis(300),
        ..config()
    };
    let c = connect(&cluster, cfg).await;
    let mut masters = std::collections::HashSet::new();
    let mut guards = Vec::new();
    let mut fair_guards = Vec::new();
    for segment in 0..8 {
        let lock = c.lock(&format!("stock:sku-1:{segment}")).expect("lock");
        let slot = RedisCluster::slot_of(&lock.keys().lock);
        masters.insert(cluster.node_for_slot(slot).expect("owner"));
        guards.push(lock.acquire().await.expect("acquire"));
        let fair = c.fair_lock(&format!("fair:sku-1:{segment}")).expect("lock");
        fair_guards.push(fair.acquire().await.expect("acquire"));
    }
    assert!(
        masters.len() >= 2,
        "the segments must spread over masters: {masters:?}"
    );
    // Several leases pass: only renewals (one script per slot) keep them.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for g in &guards {
        assert!(
            !g.is_lost(),
            "{} lost: its renewal failed on the cluster",
            g.name()
        );
    }
    for g in &fair_guards {
        assert!(
            !g.is_lost(),
            "{} lost: its renewal failed on the cluster",
            g.name()
        );
    }
    let other = connect(&cluster, config_like(&c)).await;
    for segment in 0..8 {
        let lock = other.lock(&format!("stock:sku-1:{segment}")).expect("lock");
        assert!(
            lock.try_acquire(Duration::ZERO, rlock::Lease::Watchdog)
                .await
                .expect("try")
                .is_none()
        );
    }
}

fn config_like(c: &LockClient) -> LockConfig {
    c.config().clone()
}

/// A waiter must wake on the release message (sharded pub/sub), long before its fallback:
/// the holder's 30 s lease for `RLock`, a 10 s refresh for `FairLock`.
async fn assert_woken_by_the_release(
    cluster: &RedisCluster,
    cfg: &LockConfig,
    name: &str,
    move_slot: bool,
) {
    let holder_client = connect(cluster, cfg.clone()).await;
    let waiter_client = connect(cluster, cfg.clone()).await;
    for fair in [false, true] {
        let name = format!("{name}-{fair}");
        let (held, key): (Box<dyn std::any::Any + Send>, String) = if fair {
            let lock = holder_client.fair_lock(&name).expect("lock");
            let key = lock.keys().lock.clone();
            (Box::new(lock.acquire().await.expect("acquire")), key)
        } else {
            let lock = holder_client.lock(&name).expect("lock");
            let key = lock.keys().lock.clone();
            (Box::new(lock.acquire().await.expect("acquire")), key)
        };
        let waiter = {
            let c = waiter_client.clone();
            let name = name.clone();
            tokio::spawn(async move {
                if fair {
                    let g = c
                        .fair_lock(&name)
                        .expect("lock")
                        .acquire()
                        .await
                        .expect("acquire");
                    g.release().await.expect("release");
                } else {
                    let g = c
                        .lock(&name)
                        .expect("lock")
                        .acquire()
                        .await
                        .expect("acquire");
                    g.release().await.expect("release");
                }
                Instant::now()
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        if move_slot {
            let slot = RedisCluster::slot_of(&key);
            let from = cluster.node_for_slot(slot).expect("owner");
            let to = *cluster
                .ports()
                .iter()
                .find(|p| **p != from)
                .expect("another master");
            cluster.move_slot(slot, to).expect("move the lock's slot");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let released = Instant::now();
        drop(held);
        let woke = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiter must wake on the release, not on its fallback")
            .expect("waiter");
        assert!(
            woke - released < Duration::from_secs(2),
            "woken {:?} after the release (fair: {fair}, slot moved: {move_slot})",
            woke - released
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiters_wake_through_sharded_pubsub() {
    let cluster = start();
    let cfg = LockConfig {
        fair_waiter_timeout: Duration::from_secs(30),
        ..config()
    };
    assert_woken_by_the_release(&cluster, &cfg, "wake", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiters_still_wake_after_the_lock_slot_moved_to_another_master() {
    let cluster = start();
    let cfg = LockConfig {
        fair_waiter_timeout: Duration::from_secs(30),
        ..config()
    };
    assert_woken_by_the_release(&cluster, &cfg, "moved", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_url_is_accepted_in_the_redis_cluster_form() {
    let cluster = start();
    let c = LockClient::connect(&cluster.url(), config())
        .await
        .expect("connect");
    assert!(c.is_cluster());
    let g = c.lock("x").expect("lock").acquire().await.expect("acquire");
    let _ = Arc::new(g.token());
    g.release().await.expect("release");
}
