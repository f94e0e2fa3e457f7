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
    // The counter restarted empty: tokens start over. This is why the stock-service re-seeds
    // it above the database's last fence (see docs/locking.md).
    assert!(again.token() <= first);
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
