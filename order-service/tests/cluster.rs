//! The order-service and the stock-service on a real 3-master Redis Cluster: orders, replays
//! and the sold-out fast path; and one master losing its data, which must not make the fast
//! path lie about a key whose order exists.

mod common;

use reqwest::StatusCode;
use serde_json::json;
use testkit::RedisCluster;

use common::{http, orders, place, put_stock, stock, unique};

/// The master holding (user, key)'s replay bucket.
fn bucket_node(cluster: &RedisCluster, user: &str, key: &str) -> u16 {
    let b = order_service::idempotency::bucket(user, key);
    cluster
        .node_for_slot(RedisCluster::slot_of(&format!("{{b{b}}}")))
        .expect("owner")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_replay_and_sell_out_on_a_cluster_and_survive_one_master_losing_its_data() {
    let cluster = RedisCluster::start(3).expect("a 3-master Redis Cluster");
    let url = cluster.url();
    let s = stock(&url, &[]).await;
    let o = orders(&url, &s.url(""), &[]).await;
    let c = http();
    let sku = unique("sku");
    let flag_node = cluster
        .node_for_slot(RedisCluster::slot_of(&format!("{{{sku}}}")))
        .expect("owner");
    put_stock(&c, &s.url(""), &sku, 1, 1).await;

    // A buyer whose replay record lives on another master than the item's sold-out flag.
    let buyer = unique("u");
    let key = (0..)
        .map(|n| format!("key-{n}"))
        .find(|k| bucket_node(&cluster, &buyer, k) != flag_node)
        .expect("a key in another master's bucket");
    let body = json!({"sku": sku, "qty": 1});
    let first = place(&c, &o.url(""), &buyer, Some(&key), body.clone()).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.raw);
    let again = place(&c, &o.url(""), &buyer, Some(&key), body.clone()).await;
    assert!(again.replayed);
    assert_eq!(again.raw, first.raw);
    let late = place(&c, &o.url(""), &unique("u"), Some("late"), body.clone()).await;
    assert_eq!(late.status, StatusCode::CONFLICT, "{}", late.raw);
    assert_eq!(late.body["type"], "/problems/sold-out");

    // The master with the buyer's record loses everything; the flag's master keeps the flag.
    let node = bucket_node(&cluster, &buyer, &key);

    let mut conn = redis::Client::open(format!("redis://127.0.0.1:{node}/"))
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("node");
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut conn)
        .await
        .expect("flushall");
    let retried = place(&c, &o.url(""), &buyer, Some(&key), body).await;
    assert_eq!(
        (retried.status, retried.raw.as_str()),
        (first.status, first.raw.as_str()),
        "the buyer's key has an order: it must not be told sold out"
    );
}
