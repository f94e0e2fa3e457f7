//! Group deduction against the real services: each request of a group gets the answer it would
//! have got alone, a refused or failed group changes nothing, and neither a leader's client
//! going away nor its process dying leaves a request hanging or a group half written.
//!
//! The tests shape groups with `RMW_DELAY_MS`: the first request leads a group alone and holds
//! its critical section open; whatever arrives meanwhile queues up as the next group.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{
    audit, available, database_url, db, deduct, get_json, http, instance, ledger_rows, put_stock,
    sku, spawn_deduct,
};
use reqwest::StatusCode;
use serde_json::json;
use service_kit::combine::CombineStats;

async fn ms(n: u64) {
    tokio::time::sleep(Duration::from_millis(n)).await;
}

/// One group of five, on one segment with 4 units left: a fit, its repeat in the same group,
/// one that no longer fits, one whose order id another instance uses for another item while
/// the group is open, and a small one that gets the units that id gave back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mixed_group_answers_each_request_as_if_alone() {
    let a = instance(&[("RMW_DELAY_MS", "600")]).await;
    let b = instance(&[]).await;
    let c = http();
    let (sku, other) = (sku(), sku());
    put_stock(&c, &a, &sku, 5, 1).await;
    put_stock(&c, &b, &other, 5, 1).await;
    let id = |s: &str| format!("{sku}-{s}");

    let warm = spawn_deduct(&c, &a, &sku, &id("warm"), 1);
    ms(150).await;
    let mut queued = Vec::new();
    for (name, qty) in [("a", 3), ("a", 3), ("b", 3), ("d", 1), ("e", 1)] {
        queued.push(spawn_deduct(&c, &a, &sku, &id(name), qty));
        ms(10).await;
    }
    // Group 2 is open (read at ~600 ms, writing at ~1200 ms): another instance takes `d`.
    ms(700).await;
    let (status, _) = deduct(&c, &b, &other, &id("d"), 1).await;
    assert_eq!(status, StatusCode::OK);

    assert_eq!(warm.await.expect("task").0, StatusCode::OK);
    let mut answers = Vec::new();
    for t in queued {
        answers.push(t.await.expect("task"));
    }
    let [a1, a2, b1, d1, e1] = answers.try_into().expect("five answers");
    assert_eq!(a1.0, StatusCode::OK, "{}", a1.1);
    assert_eq!(
        (a1.1["qty"].clone(), a1.1["replayed"].clone()),
        (json!(3), json!(false))
    );
    assert_eq!(a2.0, StatusCode::OK, "the repeat replays: {}", a2.1);
    assert_eq!(a2.1["replayed"], true);
    assert_eq!(b1.0, StatusCode::CONFLICT, "{}", b1.1);
    assert_eq!(
        b1.1["type"], "/problems/sold-out",
        "nothing left for b: {}",
        b1.1
    );
    assert_eq!(d1.0, StatusCode::CONFLICT, "{}", d1.1);
    assert_eq!(d1.1["type"], "/problems/order-id-reused", "{}", d1.1);
    assert_eq!(
        e1.0,
        StatusCode::OK,
        "e gets the unit d gave back: {}",
        e1.1
    );

    assert_eq!(
        a.stock.groups.stats(),
        CombineStats {
            batches: 2,
            requests: 6
        },
        "the warm-up alone, then the five together"
    );
    let report = audit(&c, &a, &sku).await;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(
        (report["available"].clone(), report["deducted"].clone()),
        (json!(0), json!(5))
    );
    let report = audit(&c, &b, &other).await;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["deducted"], 1);
}

/// A group whose holder's lease ran out while another instance wrote is fenced out whole:
/// every request in it gets 503 `lock-lost`, and none of them left a trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fenced_out_group_changes_nothing() {
    let slow = instance(&[("LOCK_LEASE_MS", "300"), ("RMW_DELAY_MS", "1200")]).await;
    let fast = instance(&[("LOCK_LEASE_MS", "300")]).await;
    let c = http();
    let sku = sku();
    put_stock(&c, &slow, &sku, 10, 1).await;
    let id = |s: &str| format!("{sku}-{s}");

    let x1 = spawn_deduct(&c, &slow, &sku, &id("x1"), 1);
    ms(100).await;
    let x2 = spawn_deduct(&c, &slow, &sku, &id("x2"), 1);
    let x3 = spawn_deduct(&c, &slow, &sku, &id("x3"), 2);
    ms(500).await; // group 1 (x1) is past its lease
    assert_eq!(
        deduct(&c, &fast, &sku, &id("f1"), 1).await.0,
        StatusCode::OK
    );
    ms(1200).await; // group 2 (x2, x3) read at ~1200 ms and is past its lease
    assert_eq!(
        deduct(&c, &fast, &sku, &id("f2"), 1).await.0,
        StatusCode::OK
    );

    for (name, t) in [("x1", x1), ("x2", x2), ("x3", x3)] {
        let (status, body) = t.await.expect("task");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{name}: {body}");
        assert_eq!(body["type"], "/problems/lock-lost", "{name}: {body}");
        let (status, _) = get_json(
            &c,
            fast.url(&format!("/stock/{sku}/deductions/{}", id(name))),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{name} left a trace");
    }
    assert_eq!(
        slow.stock.groups.stats(),
        CombineStats {
            batches: 2,
            requests: 3
        }
    );
    let report = audit(&c, &fast, &sku).await;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(
        report["available"], 8,
        "only the prompt writes count: {report}"
    );
    // The database itself, not a service's view of it.
    let db = db().await;
    let fenced: Vec<String> = ["x1", "x2", "x3"].map(id).into();
    assert_eq!(
        ledger_rows(&db, &fenced).await,
        0,
        "no ledger row of the group"
    );
    assert_eq!(available(&db, &sku).await, 8);
}

/// The leader's client gives up while its group is in the critical section: the group still
/// commits (the deduction stands and can be looked up), and the requests queued behind it are
/// answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_whose_client_goes_away_still_serves_its_queue() {
    let a = instance(&[("RMW_DELAY_MS", "500")]).await;
    let c = http();
    let sku = sku();
    put_stock(&c, &a, &sku, 10, 1).await;
    let id = |s: &str| format!("{sku}-{s}");

    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(150))
        .build()
        .expect("client");
    let leader = {
        let url = a.url(&format!("/stock/{sku}/deductions"));
        let body = json!({"order_id": id("leader"), "qty": 1});
        tokio::spawn(async move { impatient.post(url).json(&body).send().await })
    };
    ms(50).await;
    let f1 = spawn_deduct(&c, &a, &sku, &id("f1"), 1);
    let f2 = spawn_deduct(&c, &a, &sku, &id("f2"), 2);
    assert!(
        leader.await.expect("task").is_err(),
        "the leader's client timed out"
    );
    let (s1, b1) = tokio::time::timeout(Duration::from_secs(10), f1)
        .await
        .expect("f1 answered")
        .expect("task");
    let (s2, b2) = tokio::time::timeout(Duration::from_secs(10), f2)
        .await
        .expect("f2 answered")
        .expect("task");
    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK), "{b1} {b2}");
    let (status, body) = get_json(
        &c,
        a.url(&format!("/stock/{sku}/deductions/{}", id("leader"))),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the leader's deduction stands: {body}"
    );
    let report = audit(&c, &a, &sku).await;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["available"], 6, "{report}");
}

/// A real stock-service process is killed (SIGKILL) while a group is open and 19 requests
/// queue behind it: every
/// request gets an answer (an error, no hang), nothing of the group is written, and another
/// instance sells the same segment once the dead holder's lease is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_whose_process_dies_leaves_nothing_half_written() {
    let port = testkit::free_port().expect("port");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_stock-service"))
        .env("DATABASE_URL", database_url().await)
        .env("REDIS_URL", testkit::redis_url())
        .env("BIND_ADDR", format!("127.0.0.1:{port}"))
        .env("RMW_DELAY_MS", "3000")
        .env("LOCK_LEASE_MS", "1000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the stock-service binary");
    let base = format!("http://127.0.0.1:{port}");
    let c = http();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while c.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the process never came up"
        );
        ms(100).await;
    }
    let other = instance(&[]).await;
    let sku = sku();
    put_stock(&c, &other, &sku, 10, 1).await;
    let id = |s: &str| format!("{sku}-{s}");

    // The first request leads a group alone; the other 19 queue behind it.
    let url = format!("{base}/stock/{sku}/deductions");
    let names: Vec<String> = (0..20).map(|k| id(&format!("k{k}"))).collect();
    let mut sent = Vec::new();
    for order_id in &names {
        let (c, url, body) = (
            c.clone(),
            url.clone(),
            json!({"order_id": order_id, "qty": 1}),
        );
        sent.push(tokio::spawn(
            async move { c.post(url).json(&body).send().await },
        ));
        ms(10).await;
    }
    ms(600).await; // the group is open, nothing committed (the pause is 3 s)
    let pid = child.id().expect("pid");
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let _ = child.wait().await;

    for t in sent {
        let answer = tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .expect("no request hangs")
            .expect("task");
        assert!(
            answer.is_err(),
            "the connection died with the process: {answer:?}"
        );
    }
    // The database itself: no ledger row, no unit gone.
    let db = db().await;
    assert_eq!(
        ledger_rows(&db, &names).await,
        0,
        "a group was half written"
    );
    assert_eq!(available(&db, &sku).await, 10);
    let report = audit(&c, &other, &sku).await;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["available"], 10, "{report}");
    // The dead holder's lease runs out; the segment sells again.
    let (status, body) = deduct(&c, &other, &sku, &id("after"), 1).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let report = audit(&c, &other, &sku).await;
    assert_eq!(
        (report["ok"].clone(), report["available"].clone()),
        (json!(true), json!(9))
    );
}

/// `STOCK_BATCH_MAX=1` turns combining off: the same sale, no group formed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batch_max_one_turns_combining_off() {
    let vars = [("STOCK_BATCH_MAX", "1"), ("RMW_DELAY_MS", "2")];
    let a = instance(&vars).await;
    let b = instance(&vars).await;
    let c = http();
    let sku = sku();
    put_stock(&c, &a, &sku, 50, 4).await;
    let t = common::flash_sale(&[&a, &b], &sku, 200, 32).await;
    assert_eq!((t.ok, t.sold_out), (50, 150), "{:?}", t.other);
    assert_eq!(a.stock.groups.stats(), CombineStats::default());
    assert_eq!(b.stock.groups.stats(), CombineStats::default());
    let report = audit(&c, &a, &sku).await;
    assert_eq!(report["ok"], true, "{report}");
}

/// redis-atomic: Redis over-counts (its counter says 50, the database has 5). A group of
/// concurrent writes whose sum the database refuses is rolled back and each request is
/// written alone: exactly the 5 units sell, the rest are told sold out, the books balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_atomic_group_the_database_refuses_falls_back_to_each_alone() {
    let a = instance(&[("STOCK_STRATEGY", "redis-atomic"), ("RMW_DELAY_MS", "50")]).await;
    let c = http();
    let sku = sku();
    put_stock(&c, &a, &sku, 5, 1).await;
    let counters = a.stock.cache.keys(&sku).counters;
    let mut redis = redis::Client::open(testkit::redis_url())
        .expect("redis")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let _: () = redis::AsyncCommands::hset(&mut redis, &counters, 0, 50)
        .await
        .expect("over-count");

    let t = common::flash_sale(&[&a], &sku, 30, 30).await;
    assert_eq!((t.ok, t.sold_out), (5, 25), "{:?}", t.other);
    let stats = a.stock.groups.stats();
    assert!(stats.requests > stats.batches, "groups formed: {stats:?}");
    let report = audit(&c, &a, &sku).await;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(available(&db().await, &sku).await, 0);
}

/// The fenced write a group worker makes with the lock it kept from its previous group: the
/// same token again is accepted only for a tenure that wrote already and only when the row is
/// as it was read; a first write still needs a token above the row's fence, so a holder whose
/// lock expired can never write after a newer holder did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_lock_writes_again_with_its_token_and_a_stale_one_never_does() {
    use stock_service::store::{self, WriteGuard};
    let a = instance(&[]).await;
    let c = http();
    let sku = sku();
    put_stock(&c, &a, &sku, 10, 1).await;
    let pool = db().await;
    let mut conn = pool.acquire().await.expect("connection");
    let fence = |r: store::SegmentRow, token, continuing| WriteGuard::Fence {
        seen: r.last_fence,
        version: r.version,
        token,
        continuing,
    };
    let start = segment_row(&mut conn, &sku).await;
    let t = start.last_fence + 5;

    // A first write with the tenure's token: accepted, the row now carries it.
    assert!(
        store::write_segment(&mut conn, &sku, 0, 9, fence(start, t, false))
            .await
            .expect("write")
    );
    let after_first = segment_row(&mut conn, &sku).await;
    assert_eq!(after_first.last_fence, t);
    // The same token as a first write (another holder issued the same number): refused.
    assert!(
        !store::write_segment(&mut conn, &sku, 0, 8, fence(after_first, t, false))
            .await
            .expect("write")
    );
    // The tenure writing again, row unchanged since read: accepted.
    assert!(
        store::write_segment(&mut conn, &sku, 0, 8, fence(after_first, t, true))
            .await
            .expect("write")
    );
    // Writing again from a stale read (someone wrote in between): refused.
    assert!(
        !store::write_segment(&mut conn, &sku, 0, 7, fence(after_first, t, true))
            .await
            .expect("write")
    );
    // A newer holder read the row, then the kept tenure wrote again (fence unchanged): the
    // newer holder's first write from that older read must be refused — its token is above
    // the fence, but the row changed under it (a lost update otherwise).
    let stale_read = segment_row(&mut conn, &sku).await;
    let kept_again = store::WriteGuard::Fence {
        seen: stale_read.last_fence,
        version: stale_read.version,
        token: t,
        continuing: true,
    };
    assert!(
        store::write_segment(&mut conn, &sku, 0, 7, kept_again)
            .await
            .expect("write")
    );
    assert!(
        !store::write_segment(&mut conn, &sku, 0, 6, fence(stale_read, t + 1, false))
            .await
            .expect("write"),
        "a write from a read the kept tenure overtook"
    );
    // A newer holder writes; the kept tenure's token is now stale, continuing or not.
    let now = segment_row(&mut conn, &sku).await;
    assert!(
        store::write_segment(&mut conn, &sku, 0, 7, fence(now, t + 1, false))
            .await
            .expect("write")
    );
    let newest = segment_row(&mut conn, &sku).await;
    for continuing in [false, true] {
        assert!(
            !store::write_segment(&mut conn, &sku, 0, 1, fence(newest, t, continuing))
                .await
                .expect("write"),
            "stale token, continuing {continuing}"
        );
    }
    assert_eq!(available(&pool, &sku).await, 7);
}

/// Segment 0 of `sku`, read directly.
async fn segment_row(conn: &mut sqlx::PgConnection, sku: &str) -> stock_service::store::SegmentRow {
    stock_service::store::read_segments(conn, sku, &[0], false)
        .await
        .expect("read")[0]
}
