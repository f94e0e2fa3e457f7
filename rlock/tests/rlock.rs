//! The lock against the shared real Redis: exclusion, re-entry, leases, watchdog, lost
//! signal, wake-up, crashes, cancellation, fencing tokens, MultiLock.

mod common;

use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use rlock::{Lease, LockError};
use tokio::sync::Mutex;
use tokio::time::Instant;

use common::{client, config, raw, short_watchdog};

const TASKS_PER_CLIENT: usize = 30;
const ROUNDS: usize = 20;

/// Non-atomic GET then SET with a pause in between, the way the seeds deduct stock.
async fn read_modify_write(conn: &mut redis::aio::MultiplexedConnection, key: &str) {
    let v: Option<i64> = conn.get(key).await.expect("get");
    tokio::time::sleep(Duration::from_micros(300)).await;
    let _: () = conn.set(key, v.unwrap_or(0) + 1).await.expect("set");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mutual_exclusion_across_two_clients_and_sixty_tasks() {
    let cfg = config();
    let counter = format!("{}:counter", cfg.key_prefix);
    let clients = [client(cfg.clone()).await, client(cfg).await];
    let mut tasks = Vec::new();
    for c in &clients {
        for _ in 0..TASKS_PER_CLIENT {
            let c = c.clone();
            let counter = counter.clone();
            tasks.push(tokio::spawn(async move {
                let mut conn = raw(&testkit::redis_url()).await;
                let lock = c.lock("counter").expect("lock");
                for _ in 0..ROUNDS {
                    let guard = lock.acquire().await.expect("acquire");
                    read_modify_write(&mut conn, &counter).await;
                    guard.release().await.expect("release");
                }
            }));
        }
    }
    for t in tasks {
        t.await.expect("task");
    }
    let total: i64 = raw(&testkit::redis_url())
        .await
        .get(&counter)
        .await
        .expect("get");
    assert_eq!(
        total,
        (2 * TASKS_PER_CLIENT * ROUNDS) as i64,
        "lost updates under the lock"
    );
}

/// Negative control: the same read-modify-write without the lock loses updates, so the
/// exclusion test above can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_the_lock_the_same_workload_loses_updates() {
    let counter = format!("{}:counter", config().key_prefix);
    let mut tasks = Vec::new();
    for _ in 0..2 * TASKS_PER_CLIENT {
        let counter = counter.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = raw(&testkit::redis_url()).await;
            for _ in 0..5 {
                read_modify_write(&mut conn, &counter).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let total: i64 = raw(&testkit::redis_url())
        .await
        .get(&counter)
        .await
        .expect("get");
    assert!(
        total < (2 * TASKS_PER_CLIENT * 5) as i64,
        "expected lost updates, got {total}"
    );
}

#[tokio::test]
async fn reentrant_holds_are_counted_and_share_one_token() {
    let c = client(config()).await;
    let lock = c.lock("reentrant").expect("lock");
    let other = c.lock("reentrant").expect("lock");
    let g1 = lock.acquire().await.expect("first");
    let g2 = lock.acquire().await.expect("second");
    let g3 = lock
        .try_acquire(Duration::ZERO, Lease::Watchdog)
        .await
        .expect("third")
        .expect("held");
    assert_eq!(lock.hold_count().await.expect("count"), 3);
    assert_eq!(g1.token(), g2.token());
    assert_eq!(g1.token(), g3.token());
    assert!(
        other
            .try_acquire(Duration::ZERO, Lease::Watchdog)
            .await
            .expect("try")
            .is_none()
    );

    g3.release().await.expect("release 3");
    assert_eq!(lock.hold_count().await.expect("count"), 2);
    g2.release().await.expect("release 2");
    assert_eq!(lock.hold_count().await.expect("count"), 1);
    assert!(
        other
            .try_acquire(Duration::ZERO, Lease::Watchdog)
            .await
            .expect("try")
            .is_none()
    );
    let first_token = g1.token();
    g1.release().await.expect("release 1");
    assert_eq!(lock.hold_count().await.expect("count"), 0);
    assert!(!lock.is_locked().await.expect("locked"));
    assert_eq!(c.renewing(), 0, "watchdog must stop with the last release");
    let g = other
        .try_acquire(Duration::ZERO, Lease::Watchdog)
        .await
        .expect("try");
    assert!(g.expect("free now").token() > first_token);
}

#[tokio::test]
async fn release_by_a_non_owner_is_refused_and_leaves_the_lock_intact() {
    let c = client(config()).await;
    let owner = c.lock("owned").expect("lock");
    let intruder = c.lock("owned").expect("lock");
    let guard = owner.acquire().await.expect("acquire");
    let err = intruder
        .unlock(guard.token())
        .await
        .expect_err("non-owner release");
    assert!(matches!(err, LockError::NotHeld { .. }), "{err:?}");
    assert_eq!(owner.hold_count().await.expect("count"), 1);
    assert!(
        intruder
            .try_acquire(Duration::ZERO, Lease::Watchdog)
            .await
            .expect("try")
            .is_none()
    );
    // The owner, using an old token, is refused too.
    let err = owner
        .unlock(guard.token() - 1)
        .await
        .expect_err("stale token");
    assert!(matches!(err, LockError::NotHeld { .. }), "{err:?}");
    assert_eq!(owner.hold_count().await.expect("count"), 1);
    guard.release().await.expect("owner release");
}

#[tokio::test]
async fn fixed_lease_expires_without_watchdog_and_the_guard_knows() {
    let c = client(config()).await;
    let a = c.lock("lease").expect("lock");
    let b = c.lock("lease").expect("lock");
    let guard = a
        .try_acquire(Duration::ZERO, Lease::Fixed(Duration::from_millis(200)))
        .await
        .expect("try")
        .expect("free");
    assert_eq!(c.renewing(), 0, "fixed leases are not renewed");
    assert!(!guard.is_lost());
    assert!(
        b.try_acquire(Duration::ZERO, Lease::Watchdog)
            .await
            .expect("try")
            .is_none()
    );
    tokio::time::timeout(Duration::from_secs(2), guard.lost())
        .await
        .expect("lost fires at expiry");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let g2 = b
        .try_acquire(Duration::ZERO, Lease::Watchdog)
        .await
        .expect("try")
        .expect("expired");
    assert!(g2.token() > guard.token());
    let err = guard.release().await.expect_err("expired hold");
    assert!(matches!(err, LockError::NotHeld { .. }), "{err:?}");
    assert_eq!(
        b.hold_count().await.expect("count"),
        1,
        "stale release must not touch b's lock"
    );
}

/// Review defect 5: re-entering with a shorter fixed lease must not shorten the lock's real
/// TTL below what the first hold was promised (the first guard still believes it holds).
#[tokio::test]
async fn reentry_with_a_shorter_lease_does_not_shorten_the_lock() {
    let c = client(config()).await;
    let a = c.lock("reentry-lease").expect("lock");
    let b = c.lock("reentry-lease").expect("lock");
    let first = a
        .try_acquire(Duration::ZERO, Lease::Fixed(Duration::from_secs(5)))
        .await
        .expect("try")
        .expect("free");
    let inner = a
        .try_acquire(Duration::ZERO, Lease::Fixed(Duration::from_millis(100)))
        .await
        .expect("try")
        .expect("re-entered");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!first.is_lost(), "the first hold was promised 5 s");
    assert!(
        b.try_acquire(Duration::ZERO, Lease::Watchdog)
            .await
            .expect("try")
            .is_none(),
        "another owner took a lock whose first hold is still valid"
    );
    inner.release().await.expect("inner");
    first.release().await.expect("first");
}

/// Review defect 6: with a fixed lease shorter than the wait, the first member expires while
/// the second is awaited; the MultiLock must not hand out a set with a lost member.
#[tokio::test]
async fn a_multilock_never_returns_a_set_with_an_expired_member() {
    let c = client(config()).await;
    let other = c.lock("multi-lease-b").expect("lock");
    let held = other
        .try_acquire(Duration::ZERO, Lease::Fixed(Duration::from_millis(500)))
        .await
        .expect("try")
        .expect("free");
    let multi = c
        .multi_lock(&["multi-lease-a", "multi-lease-b"])
        .expect("multi");
    let set = multi
        .try_acquire(
            Duration::from_secs(3),
            Lease::Fixed(Duration::from_millis(300)),
        )
        .await
        .expect("try")
        .expect("both free within the wait");
    assert!(!set.is_lost(), "a member had expired: {:?}", set.guards());
    for g in set.guards() {
        assert!(g.valid_until() > Instant::now(), "{}", g.name());
    }
    drop(held);
    set.release().await.expect("release");
}

#[tokio::test]
async fn watchdog_keeps_the_lock_for_several_leases_and_stops_at_release() {
    let c = client(short_watchdog(600)).await;
    let a = c.lock("watched").expect("lock");
    let b = c.lock("watched").expect("lock");
    let guard = a.acquire().await.expect("acquire");
    tokio::time::sleep(Duration::from_millis(2000)).await; // over three leases
    assert!(!guard.is_lost());
    assert!(a.is_locked().await.expect("locked"));
    assert!(
        b.try_acquire(Duration::ZERO, Lease::Watchdog)
            .await
            .expect("try")
            .is_none()
    );
    guard.release().await.expect("release");
    assert_eq!(c.renewing(), 0);

    // Re-acquire by the same owner with a short fixed lease: no renewal of the released
    // acquisition may extend it.
    let again = a
        .try_acquire(Duration::ZERO, Lease::Fixed(Duration::from_millis(150)))
        .await
        .expect("try")
        .expect("free");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !a.is_locked().await.expect("locked"),
        "a renewal outlived its unlock"
    );
    assert!(again.is_lost());
}

#[tokio::test]
async fn lost_signal_fires_when_the_key_is_deleted_from_outside() {
    let c = client(short_watchdog(300)).await;
    let lock = c.lock("deleted").expect("lock");
    let guard = lock.acquire().await.expect("acquire");
    let _: () = raw(&testkit::redis_url())
        .await
        .del(&lock.keys().lock)
        .await
        .expect("del");
    tokio::time::timeout(Duration::from_secs(2), guard.lost())
        .await
        .expect("lost signal");
    assert!(guard.is_lost());
    assert_eq!(c.renewing(), 0, "a lost lock is no longer renewed");
    assert!(matches!(
        guard.release().await,
        Err(LockError::NotHeld { .. })
    ));
}

#[tokio::test]
async fn waiter_is_woken_by_the_release_long_before_the_ttl() {
    let c1 = client(config()).await;
    let c2 = client(config_for(&c1)).await;
    let holder = c1.lock("wake").expect("lock");
    let guard = holder
        .try_acquire(Duration::ZERO, Lease::Fixed(Duration::from_secs(20)))
        .await
        .expect("try")
        .expect("free");
    let waiter = tokio::spawn(async move {
        let lock = c2.lock("wake").expect("lock");
        let g = lock
            .try_acquire(Duration::from_secs(15), Lease::Watchdog)
            .await
            .expect("try");
        let at = Instant::now();
        (g.map(|g| g.token()), at)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let released = Instant::now();
    guard.release().await.expect("release");
    let (token, acquired_at) = waiter.await.expect("waiter");
    assert!(token.is_some(), "waiter must get the lock");
    let handoff = acquired_at - released;
    // With polling capped at the 20 s TTL the waiter would still be asleep; pub/sub wakes it.
    assert!(handoff < Duration::from_secs(1), "woken after {handoff:?}");
}

/// A second client with the same key prefix as `c`.
fn config_for(c: &rlock::LockClient) -> rlock::LockConfig {
    c.config().clone()
}

#[tokio::test]
async fn a_crashed_holder_frees_the_lock_after_its_lease() {
    let crashed = client(short_watchdog(500)).await;
    let survivor = client(config_for(&crashed)).await;
    let guard = crashed
        .lock("crash")
        .expect("lock")
        .acquire()
        .await
        .expect("acquire");
    // Crash: no release, no more renewals.
    let _token = guard.into_token();
    crashed.shutdown();
    let started = Instant::now();
    let g = survivor
        .lock("crash")
        .expect("lock")
        .try_acquire(Duration::from_secs(5), Lease::Watchdog)
        .await
        .expect("try");
    assert!(
        g.is_some(),
        "the lock must be free once the crashed holder's lease ran out"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(100),
        "it was free too early"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_acquires_leave_nothing_held() {
    let c = client(config()).await;
    let lock = c.lock("cancel").expect("lock");
    // Cancel at many points of a free-lock acquisition.
    for i in 0..200u64 {
        let attempt = lock.try_acquire(Duration::from_secs(1), Lease::Watchdog);
        if let Ok(Ok(Some(guard))) =
            tokio::time::timeout(Duration::from_micros(i * 15), attempt).await
        {
            guard.release().await.expect("release");
        }
    }
    // Cancel while waiting behind another holder.
    let other = c.lock("cancel").expect("lock");
    let held = other.acquire().await.expect("acquire");
    for _ in 0..20 {
        let _ = tokio::time::timeout(Duration::from_millis(5), lock.acquire()).await;
    }
    held.release().await.expect("release");
    // Background compensation finishes under the owner's state lock; a zero-wait attempt
    // waits for it.
    let probe = lock
        .try_acquire(Duration::from_secs(2), Lease::Watchdog)
        .await
        .expect("probe");
    let probe = probe.expect("lock must be free");
    assert_eq!(
        lock.hold_count().await.expect("count"),
        1,
        "a cancelled attempt left a hold"
    );
    probe.release().await.expect("release");
    assert!(!lock.is_locked().await.expect("locked"));
    assert_eq!(c.renewing(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fencing_tokens_increase_strictly_across_clients_and_not_on_reentry() {
    let cfg = config();
    let clients = [client(cfg.clone()).await, client(cfg).await];
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for c in &clients {
        for _ in 0..8 {
            let c = c.clone();
            let seen = Arc::clone(&seen);
            tasks.push(tokio::spawn(async move {
                let lock = c.lock("fenced").expect("lock");
                for _ in 0..15 {
                    let g = lock.acquire().await.expect("acquire");
                    let inner = lock.acquire().await.expect("re-enter");
                    assert_eq!(inner.token(), g.token(), "re-entry must not mint a token");
                    seen.lock().await.push(g.token());
                    inner.release().await.expect("release inner");
                    g.release().await.expect("release");
                }
            }));
        }
    }
    for t in tasks {
        t.await.expect("task");
    }
    let seen = seen.lock().await;
    assert_eq!(seen.len(), 2 * 8 * 15);
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "tokens not strictly increasing: {seen:?}"
    );
    // Only new acquisitions mint tokens: one per acquisition, none per re-entry.
    assert_eq!(seen[seen.len() - 1] - seen[0], (seen.len() - 1) as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multilocks_over_overlapping_sets_in_opposite_orders_do_not_deadlock() {
    let cfg = config();
    let clients = [client(cfg.clone()).await, client(cfg).await];
    let orders: [&[&str]; 4] = [&["a", "b", "c"], &["c", "b", "a"], &["b", "c"], &["c", "a"]];
    let mut tasks = Vec::new();
    for (i, names) in orders.iter().enumerate() {
        let c = clients[i % 2].clone();
        let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
        tasks.push(tokio::spawn(async move {
            let multi = c.multi_lock(&names).expect("multi");
            for _ in 0..25 {
                let g = multi.acquire().await.expect("acquire");
                assert_eq!(g.guards().len(), names.len());
                tokio::task::yield_now().await;
                g.release().await.expect("release");
            }
        }));
    }
    let all = futures_util::future::join_all(tasks);
    let results = tokio::time::timeout(Duration::from_secs(30), all)
        .await
        .expect("deadlock");
    for r in results {
        r.expect("task");
    }
}

#[tokio::test]
async fn multilock_is_all_or_nothing_and_spans_keys_in_one_order() {
    let c = client(config()).await;
    let blocker = c
        .lock("m2")
        .expect("lock")
        .acquire()
        .await
        .expect("acquire");
    let multi = c.multi_lock(&["m3", "m2", "m1"]).expect("multi");
    assert_eq!(multi.names().collect::<Vec<_>>(), ["m1", "m2", "m3"]);
    let got = multi
        .try_acquire(Duration::from_millis(150), Lease::Watchdog)
        .await
        .expect("try");
    assert!(got.is_none(), "m2 is held elsewhere");
    for name in ["m1", "m3"] {
        assert!(
            !c.lock(name)
                .expect("lock")
                .is_locked()
                .await
                .expect("locked"),
            "{name} kept"
        );
    }
    blocker.release().await.expect("release");
    let g = multi
        .try_acquire(Duration::from_millis(500), Lease::Watchdog)
        .await
        .expect("try")
        .expect("all free");
    assert!(g.token("m1").is_some() && g.token("m2").is_some() && g.token("m3").is_some());
    g.release().await.expect("release");
}

#[tokio::test]
async fn invalid_names_and_leases_are_refused() {
    let c = client(config()).await;
    assert!(matches!(c.lock("a{b}"), Err(LockError::InvalidArgument(_))));
    assert!(matches!(c.lock(""), Err(LockError::InvalidArgument(_))));
    let lock = c.lock("ok").expect("lock");
    let err = lock
        .try_acquire(Duration::ZERO, Lease::Fixed(Duration::ZERO))
        .await
        .expect_err("zero");
    assert!(matches!(err, LockError::InvalidArgument(_)));
}

#[tokio::test]
async fn metrics_record_waits_holds_outcomes_tokens_and_losses() {
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
    use opentelemetry_sdk::metrics::{InMemoryMetricExporter, SdkMeterProvider};

    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_periodic_exporter(exporter.clone())
        .build();
    let meter = provider.meter("rlock-test");
    let c =
        rlock::LockClient::connect_with_meter(&testkit::redis_url(), short_watchdog(300), &meter)
            .await
            .expect("connect");
    let a = c.lock("metered").expect("lock");
    let b = c.lock("metered").expect("lock");
    let g = a.acquire().await.expect("acquire");
    let again = a.acquire().await.expect("re-enter");
    assert!(
        b.try_acquire(Duration::from_millis(20), Lease::Watchdog)
            .await
            .expect("try")
            .is_none()
    );
    tokio::time::sleep(Duration::from_millis(250)).await; // one renewal
    again.release().await.expect("release");
    g.release().await.expect("release");
    let lost = b.acquire().await.expect("acquire");
    let _: () = raw(&testkit::redis_url())
        .await
        .del(&b.keys().lock)
        .await
        .expect("del");
    tokio::time::timeout(Duration::from_secs(2), lost.lost())
        .await
        .expect("lost");
    provider.force_flush().expect("flush");

    let metrics = exporter.get_finished_metrics().expect("metrics");
    let mut sums = std::collections::HashMap::<String, u64>::new();
    let mut hist = std::collections::HashMap::<String, (u64, Vec<f64>)>::new();
    for rm in &metrics {
        for sm in rm.scope_metrics() {
            for m in sm.metrics() {
                match m.data() {
                    AggregatedMetrics::U64(MetricData::Sum(s)) => {
                        for dp in s.data_points() {
                            let attrs: Vec<String> = dp
                                .attributes()
                                .map(|kv| format!("{}={}", kv.key, kv.value))
                                .collect();
                            *sums.entry(format!("{}{attrs:?}", m.name())).or_default() +=
                                dp.value();
                            *sums.entry(m.name().to_owned()).or_default() += dp.value();
                        }
                    }
                    AggregatedMetrics::F64(MetricData::Histogram(h)) => {
                        for dp in h.data_points() {
                            let e = hist.entry(m.name().to_owned()).or_default();
                            e.0 += dp.count();
                            e.1 = dp.bounds().collect();
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    let outcome = |o: &str| {
        sums.get(&format!(
            "rlock.acquisitions[\"lock.kind=rlock\", \"outcome={o}\"]"
        ))
        .copied()
        .unwrap_or(0)
    };
    assert_eq!(outcome("acquired"), 2, "{sums:?}");
    assert_eq!(outcome("reentered"), 1, "{sums:?}");
    assert_eq!(outcome("timeout"), 1, "{sums:?}");
    assert_eq!(
        sums.get("rlock.tokens.issued").copied(),
        Some(2),
        "{sums:?}"
    );
    assert_eq!(sums.get("rlock.lost").copied(), Some(1), "{sums:?}");
    assert!(
        sums.get("rlock.renewals").copied().unwrap_or(0) >= 1,
        "{sums:?}"
    );
    let (waits, bounds) = &hist["rlock.wait.duration"];
    assert_eq!(*waits, 4);
    assert_eq!(
        bounds.first().copied(),
        Some(0.0005),
        "exponential buckets from 0.5 ms"
    );
    assert_eq!(
        hist["rlock.hold.duration"].0, 1,
        "one acquisition was released"
    );
}

#[tokio::test]
async fn raising_the_fence_lifts_later_tokens_and_never_lowers_it() {
    let c = client(config()).await;
    let lock = c.lock("raised").expect("lock");
    let t1 = lock.acquire().await.expect("acquire");
    let first = t1.token();
    t1.release().await.expect("release");
    let floor = first + 1000;
    assert_eq!(c.raise_fence("raised", floor).await.expect("raise"), floor);
    assert_eq!(
        c.raise_fence("raised", 10).await.expect("no lowering"),
        floor
    );
    let t2 = lock.acquire().await.expect("acquire");
    assert_eq!(t2.token(), floor + 1);
}

/// Review defect 10: a guard dropped on a thread outside any runtime still releases its hold
/// (on the client's runtime) instead of being renewed by the watchdog for the client's life.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_dropped_outside_a_runtime_still_releases() {
    let c = client(short_watchdog(600)).await;
    let a = c.lock("dropped-off-runtime").expect("lock");
    let b = c.lock("dropped-off-runtime").expect("lock");
    let guard = a.acquire().await.expect("acquire");
    std::thread::spawn(move || drop(guard))
        .join()
        .expect("thread");
    let got = b
        .try_acquire(Duration::from_millis(400), Lease::Watchdog)
        .await
        .expect("try");
    assert!(got.is_some(), "the dropped guard's hold was never released");
}

/// Review defect 1: Redis can end up with one hold more than the owner knows of (a lost
/// release reply treated as applied, a failed give-back of a cancelled re-entry, an undo that
/// gave up). The owner's count is the authority: its last release must free the lock and
/// stop the watchdog, not leave a hold that is renewed for the life of the client. The extra
/// hold is put in behind the library's back, as any of those paths leaves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_release_frees_the_lock_whatever_count_redis_has() {
    let c = client(config()).await;
    let lock = c.lock("phantom").expect("lock");
    let mut conn = raw(&testkit::redis_url()).await;
    for reentries in [1, 2] {
        let mut guards = Vec::new();
        for _ in 0..reentries {
            guards.push(lock.acquire().await.expect("acquire"));
        }
        let _: i64 = conn
            .hincr(&lock.keys().lock, lock.owner(), 1)
            .await
            .expect("inject an extra hold");
        for g in guards.into_iter().rev() {
            g.release().await.expect("release");
        }
        let held: bool = conn.exists(&lock.keys().lock).await.expect("exists");
        assert!(
            !held,
            "the owner released every hold it had ({reentries}): the lock must be free"
        );
        assert_eq!(c.renewing(), 0, "nothing left for the watchdog to renew");
    }
}
