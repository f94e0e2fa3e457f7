//! With `REDIS_MARKER_REPLICAS`, a key's in-flight marker counts only once a replica holds it:
//! while the replica lags (here: stopped with SIGSTOP), a new order is refused with 503
//! `dependency-failed` and nothing is claimed; once it catches up, the same key orders. The
//! negative control: without the setting, the same lagging replica does not stop the order —
//! the marker then exists only on the primary, and a failover at that moment would lose it.
//! Real Redis primary and replica, the real stock-service and PostgreSQL.

mod common;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use testkit::RedisServer;

use common::{http, orders, place, put_stock, stock, unique};

/// A primary and a replica that has caught up with it.
async fn primary_and_replica() -> (RedisServer, RedisServer) {
    // No delay before the replica's first full sync (Redis waits 5 s for more replicas).
    let primary =
        RedisServer::start_with_args(&["--repl-diskless-sync-delay", "0"]).expect("primary");
    let port = primary.port().to_string();
    let replica =
        RedisServer::start_with_args(&["--replicaof", "127.0.0.1", &port]).expect("replica");
    let client = redis::Client::open(primary.url()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("primary connection");
    for _ in 0..100 {
        // WAIT counts replicas that hold this connection's last write: write one first, or a
        // replica still waiting for its first sync counts as well.
        let () = redis::cmd("SET")
            .arg("replica-check")
            .arg(1)
            .query_async(&mut conn)
            .await
            .expect("SET");
        let acked: i64 = redis::cmd("WAIT")
            .arg(1)
            .arg(100)
            .query_async(&mut conn)
            .await
            .expect("WAIT");
        if acked >= 1 {
            return (primary, replica);
        }
    }
    panic!("the replica never caught up");
}

fn signal(server: &RedisServer, signal: &str) {
    let pid = server.pid().expect("replica pid").to_string();
    let status = std::process::Command::new("kill")
        .args([signal, &pid])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {signal} {pid}");
}

async fn orders_of(o: &common::Served<order_service::Orders>, user: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM orders WHERE user_id = $1")
        .bind(user)
        .fetch_one(&o.engine.pool)
        .await
        .expect("orders")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marker_no_replica_acknowledged_claims_nothing() {
    let (primary, replica) = primary_and_replica().await;
    let s = stock(&primary.url(), &[]).await;
    let waiting = orders(
        &primary.url(),
        &s.url(""),
        &[
            ("REDIS_MARKER_REPLICAS", "1"),
            ("REDIS_MARKER_WAIT_MS", "200"),
            ("PURCHASE_LIMIT", "10"),
        ],
    )
    .await;
    let not_waiting = orders(&primary.url(), &s.url(""), &[("PURCHASE_LIMIT", "10")]).await;
    let c = http();
    let sku = unique("sku");
    put_stock(&c, &s.url(""), &sku, 10, 2).await;
    let body = json!({"sku": sku, "qty": 1});

    let user = unique("u");
    let a = place(&c, &waiting.url(""), &user, Some("k-before"), body.clone()).await;
    assert_eq!(a.status, StatusCode::CREATED, "replica in sync: {}", a.raw);

    signal(&replica, "-STOP");
    let refused = place(&c, &waiting.url(""), &user, Some("k-lagging"), body.clone()).await;
    let control = place(
        &c,
        &not_waiting.url(""),
        &user,
        Some("k-control"),
        body.clone(),
    )
    .await;
    signal(&replica, "-CONT");
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "a marker no replica holds must not be claimed on: {}",
        refused.raw
    );
    assert_eq!(refused.body["type"], "/problems/dependency-failed");
    assert_eq!(
        control.status,
        StatusCode::CREATED,
        "without REDIS_MARKER_REPLICAS a lagging replica does not stop an order: {}",
        control.raw
    );
    assert_eq!(
        orders_of(&waiting, &user).await,
        2,
        "k-before and k-control only"
    );

    // Caught up: the refused key orders now, once.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let retried = place(&c, &waiting.url(""), &user, Some("k-lagging"), body).await;
    assert_eq!(retried.status, StatusCode::CREATED, "{}", retried.raw);
    assert_eq!(orders_of(&waiting, &user).await, 3);
}
