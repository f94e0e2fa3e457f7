//! The lock when its Redis misbehaves: restarted empty under a held lock, replies that never
//! come (unknown outcome), and replica acknowledgement. Each test runs its own throwaway
//! redis-server so it can be killed or paused.

mod common;

use std::time::Duration;

use rlock::{Lease, LockClient, LockConfig, LockError, ReplicaSync};
use testkit::RedisServer;
use tokio::time::Instant;

use common::{config, raw};

async fn connect(server: &RedisServer, cfg: LockConfig) -> LockClient {
    LockClient::connect(&server.url(), cfg)
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_under_a_held_lock_gives_the_lost_signal_and_the_lock_can_be_taken_again() {
    let mut server = RedisServer::start().expect("redis-server");
    let cfg = LockConfig {
        watchdog_timeout: Duration::from_millis(600),
        response_timeout: Duration::from_millis(300),
        ..config()
    };
    let c = connect(&server, cfg).await;
    let lock = c.lock("restart").expect("lock");
    let guard = lock.acquire().await.expect("acquire");
    let first = guard.token();

    server.kill();
    server.restart().expect("restart");

    tokio::time::timeout(Duration::from_secs(3), guard.lost())
        .await
        .expect("the lost signal must fire after Redis lost the lock");
    assert!(guard.is_lost());

    // The client reconnects and the lock can be taken again (by another owner too).
    let deadline = Instant::now() + Duration::from_secs(5);
    let again = loop {
        match c
            .lock("restart")
            .expect("lock")
            .try_acquire(Duration::from_millis(200), Lease::Watchdog)
            .await
        {
            Ok(Some(g)) => break g,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!("could not re-acquire after restart: {other:?}"),
        }
    };
    // The counter restarted empty, and is seeded again from Redis TIME: tokens keep rising
    // without any re-seeding by the caller (review defect 7; before, they started over at 1).
    assert!(
        again.token() > first,
        "token {} after the restart, {first} before",
        again.token()
    );
    assert!(matches!(
        guard.release().await,
        Err(LockError::NotHeld { .. })
    ));
    again.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquire_whose_reply_times_out_is_unknown_and_compensated() {
    let server = RedisServer::start().expect("redis-server");
    let cfg = LockConfig {
        response_timeout: Duration::from_millis(150),
        ..config()
    };
    let c = connect(&server, cfg).await;
    let lock = c.lock("paused").expect("lock");
    // Warm up the script cache so the paused call is the EVALSHA itself.
    lock.acquire()
        .await
        .expect("warm up")
        .release()
        .await
        .expect("release");

    // Pause writes for longer than the response timeout: the acquire's reply is late, but
    // Redis runs it once the pause ends.
    let mut admin = raw(&server.url()).await;
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(600)
        .arg("WRITE")
        .query_async(&mut admin)
        .await
        .expect("pause");
    let err = lock
        .try_acquire(Duration::from_secs(5), Lease::Watchdog)
        .await
        .expect_err("timeout");
    assert!(matches!(err, LockError::OutcomeUnknown { .. }), "{err:?}");

    // After the pause the acquire ran, then the compensation: nothing may be held.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let other = c.lock("paused").expect("lock");
    let g = other
        .try_acquire(Duration::from_secs(2), Lease::Watchdog)
        .await
        .expect("try");
    assert!(g.is_some(), "the timed-out acquisition was left held");
    assert_eq!(lock.hold_count().await.expect("count"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_sync_acknowledges_with_enough_replicas_and_refuses_without() {
    let master = RedisServer::start().expect("master");
    let port = master.port().to_string();
    let _replica =
        RedisServer::start_with_args(&["--replicaof", "127.0.0.1", &port]).expect("replica");
    // Wait until the replica is attached.
    let mut admin = raw(&master.url()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut admin)
            .await
            .expect("info");
        if info.contains("connected_slaves:1") && info.contains("state=online") {
            break;
        }
        assert!(Instant::now() < deadline, "replica did not attach: {info}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let synced = connect(
        &master,
        LockConfig {
            replica_sync: Some(ReplicaSync {
                replicas: 1,
                timeout: Duration::from_millis(1000),
            }),
            ..config()
        },
    )
    .await;
    let g = synced
        .lock("sync")
        .expect("lock")
        .acquire()
        .await
        .expect("one replica acks");
    g.release().await.expect("release");

    let demanding = connect(
        &master,
        LockConfig {
            replica_sync: Some(ReplicaSync {
                replicas: 2,
                timeout: Duration::from_millis(200),
            }),
            ..config()
        },
    )
    .await;
    let lock = demanding.lock("sync").expect("lock");
    let err = lock.acquire().await.expect_err("two replicas cannot ack");
    assert!(
        matches!(
            err,
            LockError::ReplicaSync {
                acked: 1,
                wanted: 2
            }
        ),
        "{err:?}"
    );
    assert!(
        !lock.is_locked().await.expect("locked"),
        "an unsynced acquisition was kept"
    );
}

/// Review defect 2: `try_acquire(wait)` stays within its wait even when Redis stalls (here
/// `CLIENT PAUSE … ALL` holds every client's commands for 2 s), and an acquisition
/// that Redis granted after the caller gave up is given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_acquire_keeps_to_its_wait_when_redis_stalls() {
    let server = RedisServer::start().expect("redis-server");
    let c = connect(&server, config()).await;
    let lock = c.lock("stall").expect("lock");
    // Warm the connection up, so that the stall hits the acquisition itself.
    drop(lock.acquire().await.expect("acquire"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Every client's commands wait for 2 s (the response timeout is 3 s).
    let mut admin = raw(&server.url()).await;
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(2000)
        .arg("ALL")
        .query_async(&mut admin)
        .await
        .expect("client pause");
    let started = Instant::now();
    let outcome = lock
        .try_acquire(Duration::from_millis(300), Lease::Watchdog)
        .await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(800),
        "try_acquire(300 ms) took {took:?} ({outcome:?})"
    );
    assert!(
        !matches!(outcome, Ok(Some(_))),
        "nothing can be granted while Redis sleeps: {outcome:?}"
    );
    // Once Redis answers again, whatever it granted the abandoned attempt is given back:
    // another owner gets the lock.
    let other = c.lock("stall").expect("lock");
    let got = other
        .try_acquire(Duration::from_secs(3), Lease::Watchdog)
        .await
        .expect("try");
    assert!(
        got.is_some(),
        "the abandoned acquisition was not given back"
    );
}

/// Review defects 4 and 3: a silent failover. The proxy freezes every open connection (no
/// reset: the old primary's kernel still acknowledges) and sends new ones to another server.
/// Response timeouts alone never make redis-rs reconnect, and a half-open pub/sub socket
/// never reports anything: the client must rebuild its command connection after repeated
/// timeouts and notice the dead pub/sub connection by an unanswered ping.
async fn survive_a_silent_failover(cfg: LockConfig) -> Result<(), String> {
    let a = RedisServer::start().expect("redis-server a");
    let b = RedisServer::start().expect("redis-server b (the promoted replica)");
    let proxy = common::proxy::FreezingProxy::start(a.port());
    let c = LockClient::connect(&proxy.url(), cfg.clone())
        .await
        .expect("connect");
    let lock = c.lock("failover").expect("lock");
    lock.acquire()
        .await
        .expect("acquire")
        .release()
        .await
        .expect("release");
    proxy.freeze_and_switch(b.port());

    let deadline = Instant::now() + Duration::from_secs(5);
    let guard = loop {
        if let Ok(Some(g)) = lock.try_acquire(Duration::ZERO, Lease::Watchdog).await {
            break g;
        }
        if Instant::now() > deadline {
            return Err("commands still fail 5 s after the failover".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let on_b: bool = redis::AsyncCommands::exists(&mut raw(&b.url()).await, &lock.keys().lock)
        .await
        .expect("exists");
    assert!(on_b, "the lock must now be on the promoted server");
    guard.release().await.expect("release");

    // A holder talking to b directly (30 s lease); our waiter must be woken by its release,
    // which needs a live subscription on b.
    let direct = LockClient::connect(&b.url(), LockConfig { ..cfg.clone() })
        .await
        .expect("direct");
    let held = direct
        .lock("failover")
        .expect("lock")
        .acquire()
        .await
        .expect("acquire");
    let waiter = tokio::spawn(async move {
        let g = c
            .lock("failover")
            .expect("lock")
            .acquire()
            .await
            .expect("acquire");
        g.release().await.expect("release");
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    held.release().await.expect("release");
    match tokio::time::timeout(Duration::from_secs(3), waiter).await {
        Ok(_) => Ok(()),
        Err(_) => Err("the waiter was not woken by the release after the failover".into()),
    }
}

fn failover_config() -> LockConfig {
    LockConfig {
        response_timeout: Duration::from_millis(200),
        ping_interval: Duration::from_millis(200),
        ..config()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_failover_is_survived_by_replacing_both_connections() {
    survive_a_silent_failover(failover_config())
        .await
        .expect("failover");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_rebuilding_or_pinging_a_silent_failover_is_not_survived() {
    // The negative controls: each half of the fix switched off fails the same scenario.
    let no_rebuild = LockConfig {
        rebuild_after_timeouts: 0,
        ..failover_config()
    };
    assert!(survive_a_silent_failover(no_rebuild).await.is_err());
    let no_ping = LockConfig {
        ping_interval: Duration::from_secs(3600),
        ..failover_config()
    };
    assert!(survive_a_silent_failover(no_ping).await.is_err());
}

/// Review defect 7 for the fair lock, both paths: a FLUSHALL loses every counter, and the next
/// tokens (the fast path's transaction, and a grant by the release script) are still above
/// every token issued before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fair_tokens_keep_rising_after_redis_lost_its_counters() {
    let server = RedisServer::start().expect("redis-server");
    let cfg = config();
    let a = connect(&server, cfg.clone()).await;
    let b = connect(&server, cfg).await;
    let lock = a.fair_lock("flushed").expect("lock");
    let before = lock.acquire().await.expect("acquire");
    let first = before.token();
    before.release().await.expect("release");
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut raw(&server.url()).await)
        .await
        .expect("flushall");
    let fast = lock.acquire().await.expect("acquire after the flush");
    assert!(
        fast.token() > first,
        "fast path: {} after {first}",
        fast.token()
    );
    let waiter = b.fair_lock("flushed").expect("lock");
    let waiting = tokio::spawn(async move { waiter.acquire().await.map(|g| g.token()) });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fast_token = fast.token();
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut raw(&server.url()).await)
        .await
        .expect("flushall");
    // The lock itself was flushed too: the waiter's refresh takes it with a fresh counter.
    drop(fast);
    let granted = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the waiter gets the lock")
        .expect("task")
        .expect("acquire");
    assert!(
        granted > fast_token,
        "after the second flush: {granted} after {fast_token}"
    );
}

/// Review defect 11: fencing counters are no longer kept forever; each acquisition keeps its
/// counter for a week (and a counter that expired is seeded from TIME again, see above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_counters_expire_after_a_week_unused() {
    let server = RedisServer::start().expect("redis-server");
    let c = connect(&server, config()).await;
    let mut conn = raw(&server.url()).await;
    let lock = c.lock("kept").expect("lock");
    lock.acquire()
        .await
        .expect("acquire")
        .release()
        .await
        .expect("release");
    let fair = c.fair_lock("kept-fair").expect("lock");
    fair.acquire()
        .await
        .expect("acquire")
        .release()
        .await
        .expect("release");
    for key in [&lock.keys().fence, &fair.keys().fence] {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .expect("pttl");
        let week = 7 * 24 * 3600 * 1000;
        assert!(ttl > week - 60_000 && ttl <= week, "{key}: pttl {ttl}");
    }
}

/// The ping that finds a dead pub/sub connection must not take a live one for dead: while
/// subscribed, Redis answers a PING with `["pong", ""]`, which once failed a string parse and
/// made the client reconnect at every ping (~50 ms stalls of every waiter).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_leave_a_healthy_subscribed_connection_alone() {
    let server = RedisServer::start().expect("redis-server");
    let cfg = LockConfig {
        ping_interval: Duration::from_millis(50),
        ..config()
    };
    let holder = connect(&server, cfg.clone()).await;
    let c = connect(&server, cfg).await;
    let held = holder
        .lock("ping")
        .expect("lock")
        .acquire()
        .await
        .expect("acquire");
    let lock = c.lock("ping").expect("lock");
    // Waiting: subscribed to the lock's channel while the pings go on.
    let waited = lock
        .try_acquire(Duration::from_millis(600), Lease::Watchdog)
        .await;
    assert!(matches!(waited, Ok(None)));
    assert_eq!(
        c.pubsub_reconnects(),
        0,
        "a live connection was dropped by its pings"
    );
    held.release().await.expect("release");
}
