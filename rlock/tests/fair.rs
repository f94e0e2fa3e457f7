//! The fair lock against real Redis: exclusion across clients, arrival order, bounded local
//! passes, dead waiters, a crashed holder, cancelled and timed-out waiters, re-entry.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::AsyncCommands;
use rlock::{FairLock, LockClient, LockConfig};
use tokio::time::Instant;

use common::{client, config, raw};

/// A config for fair-lock tests: quick waiter timeouts, `passes` local passes per tenure.
fn fair_config(passes: u32) -> LockConfig {
    LockConfig {
        fair_local_handoffs: passes,
        fair_waiter_timeout: Duration::from_millis(600),
        ..config()
    }
}

async fn clients(cfg: &LockConfig, n: usize) -> Vec<LockClient> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(client(cfg.clone()).await);
    }
    out
}

/// Start `lock.acquire()` in a task that records `label` in `order` once it holds the lock,
/// then holds it until `release` says so.
fn queue_up(
    lock: FairLock,
    label: &'static str,
    order: &Arc<Mutex<Vec<&'static str>>>,
    hold: Duration,
) -> tokio::task::JoinHandle<u64> {
    let order = Arc::clone(order);
    tokio::spawn(async move {
        let guard = lock.acquire().await.expect("acquire");
        order.lock().expect("order").push(label);
        tokio::time::sleep(hold).await;
        let token = guard.token();
        guard.release().await.expect("release");
        token
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_clients_of_four_tasks_exclude_each_other_with_rising_tokens() {
    for passes in [0, 4] {
        let cfg = fair_config(passes);
        let counter = format!("{}:counter", cfg.key_prefix);
        let tokens = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for c in clients(&cfg, 4).await {
            for _ in 0..4 {
                let (c, counter, tokens) = (c.clone(), counter.clone(), Arc::clone(&tokens));
                tasks.push(tokio::spawn(async move {
                    let mut conn = raw(&testkit::redis_url()).await;
                    let lock = c.fair_lock("hot").expect("lock");
                    for _ in 0..40 {
                        let guard = lock.acquire().await.expect("acquire");
                        let v: Option<i64> = conn.get(&counter).await.expect("get");
                        tokens.lock().expect("tokens").push(guard.token());
                        let _: () = conn.set(&counter, v.unwrap_or(0) + 1).await.expect("set");
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
            total, 640,
            "lost updates under the fair lock (passes {passes})"
        );
        let tokens = tokens.lock().expect("tokens").clone();
        assert!(
            tokens.windows(2).all(|w| w[0] < w[1]),
            "tokens must rise with every hold, passed on locally or not (passes {passes})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiters_of_different_clients_are_served_in_arrival_order() {
    let cfg = fair_config(0);
    let cs = clients(&cfg, 4).await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let holder = cs[0]
        .fair_lock("line")
        .expect("lock")
        .acquire()
        .await
        .expect("acquire");
    let mut waiting = Vec::new();
    for (n, (c, label)) in cs[1..].iter().zip(["b", "c", "d"]).enumerate() {
        let lock = c.fair_lock("line").expect("lock");
        let queue = lock.keys().queue.clone();
        waiting.push(queue_up(lock, label, &order, Duration::from_millis(20)));
        // This one takes its place in Redis's queue before the next arrives.
        queued(&queue, n + 1).await;
    }
    holder.release().await.expect("release");
    for w in waiting {
        w.await.expect("waiter");
    }
    assert_eq!(*order.lock().expect("order"), ["b", "c", "d"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_passes_are_bounded_then_the_next_client_gets_its_turn() {
    let cfg = fair_config(2);
    let cs = clients(&cfg, 2).await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let holder = cs[0]
        .fair_lock("turns")
        .expect("lock")
        .acquire()
        .await
        .expect("acquire");
    // Client b queues in Redis first, then four more tasks of client a queue locally.
    let b_lock = cs[1].fair_lock("turns").expect("lock");
    let queue = b_lock.keys().queue.clone();
    let b = queue_up(b_lock, "b", &order, Duration::from_millis(5));
    queued(&queue, 1).await;
    let mut local = Vec::new();
    for label in ["a1", "a2", "a3", "a4"] {
        let lock = cs[0].fair_lock("turns").expect("lock");
        local.push(queue_up(lock, label, &order, Duration::from_millis(5)));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    holder.release().await.expect("release");
    b.await.expect("b");
    for t in local {
        t.await.expect("local");
    }
    // Two passes inside client a, then b (queued in Redis), then a again.
    let order = order.lock().expect("order").clone();
    assert_eq!(order.len(), 5);
    assert_eq!(
        order[2], "b",
        "b must come right after two local passes: {order:?}"
    );
}

/// Wait until `n` clients stand in the queue `key`.
async fn queued(key: &str, n: usize) {
    let mut conn = raw(&testkit::redis_url()).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let len: usize = conn.llen(key).await.expect("llen");
        if len >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{n} waiters never queued in {key}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Put a waiter entry in the lock's queue the way a client does, for a client that then
/// dies: it never refreshes, never takes a grant.
async fn plant_dead_waiter(lock: &FairLock, lease_ms: u64, deadline_in_ms: u64) {
    let mut conn = raw(&testkit::redis_url()).await;
    let (secs, micros): (u64, u64) = redis::cmd("TIME")
        .query_async(&mut conn)
        .await
        .expect("time");
    let now_ms = secs * 1000 + micros / 1000;
    let entry = format!("{lease_ms}:1:deadclient");
    let keys = lock.keys();
    let _: () = conn.rpush(&keys.queue, &entry).await.expect("rpush");
    let _: () = conn
        .zadd(&keys.waiters, &entry, now_ms + deadline_in_ms)
        .await
        .expect("zadd");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_waiter_times_out_of_the_queue() {
    let cfg = fair_config(0);
    let cs = clients(&cfg, 2).await;
    let a = cs[0].fair_lock("dead").expect("lock");
    let holder = a.acquire().await.expect("acquire");
    plant_dead_waiter(&a, 30_000, 200).await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let b = queue_up(
        cs[1].fair_lock("dead").expect("lock"),
        "b",
        &order,
        Duration::ZERO,
    );
    // Past the dead waiter's deadline: the release skips it and hands the lock to b.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let released = Instant::now();
    holder.release().await.expect("release");
    tokio::time::timeout(Duration::from_millis(500), b)
        .await
        .expect("b must get the lock at once, past the dead waiter")
        .expect("b");
    assert!(released.elapsed() < Duration::from_millis(500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_grant_to_a_waiter_that_died_expires_and_the_next_one_gets_it() {
    let cfg = fair_config(0);
    let cs = clients(&cfg, 2).await;
    let a = cs[0].fair_lock("granted-dead").expect("lock");
    let holder = a.acquire().await.expect("acquire");
    // Still within its deadline when the release comes: it is granted the lock (300 ms
    // lease) and never uses it.
    plant_dead_waiter(&a, 300, 5_000).await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let b = queue_up(
        cs[1].fair_lock("granted-dead").expect("lock"),
        "b",
        &order,
        Duration::ZERO,
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    let released = Instant::now();
    holder.release().await.expect("release");
    tokio::time::timeout(Duration::from_secs(2), b)
        .await
        .expect("b must get the lock once the dead waiter's lease ran out")
        .expect("b");
    assert!(
        released.elapsed() >= Duration::from_millis(250),
        "b cannot have it while the dead waiter's grant is valid"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crashed_holder_expires_and_the_queued_client_takes_over() {
    let cfg = LockConfig {
        watchdog_timeout: Duration::from_millis(300),
        ..fair_config(0)
    };
    let cs = clients(&cfg, 2).await;
    let guard = cs[0]
        .fair_lock("crash")
        .expect("lock")
        .acquire()
        .await
        .expect("acquire");
    // The holder's process stops renewing and never releases.
    cs[0].shutdown();
    std::mem::forget(guard);
    let started = Instant::now();
    let b = cs[1].fair_lock("crash").expect("lock");
    let got = b.try_acquire(Duration::from_secs(3)).await.expect("try");
    assert!(
        got.is_some(),
        "the queued client must take over after the lease"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "not while the lease ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_waiter_that_gives_up_leaves_the_queue_and_gets_nothing() {
    let cfg = fair_config(0);
    let cs = clients(&cfg, 2).await;
    let a = cs[0].fair_lock("impatient").expect("lock");
    let holder = a.acquire().await.expect("acquire");
    let b = cs[1].fair_lock("impatient").expect("lock");
    assert!(
        b.try_acquire(Duration::from_millis(100))
            .await
            .expect("try")
            .is_none()
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut conn = raw(&testkit::redis_url()).await;
    let queued: i64 = conn.llen(&a.keys().queue).await.expect("llen");
    assert_eq!(queued, 0, "a waiter that gave up must leave Redis's queue");
    holder.release().await.expect("release");
    let held: bool = conn.exists(&a.keys().lock).await.expect("exists");
    assert!(
        !held,
        "nobody wanted the lock: it must be free, not granted to the leaver"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_waiter_passes_its_grant_on() {
    let cfg = fair_config(0);
    let cs = clients(&cfg, 3).await;
    let holder = cs[0]
        .fair_lock("cancel")
        .expect("lock")
        .acquire()
        .await
        .expect("acquire");
    let cancelled = {
        let lock = cs[1].fair_lock("cancel").expect("lock");
        tokio::spawn(async move { lock.acquire().await.map(|g| g.token()) })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let c = queue_up(
        cs[2].fair_lock("cancel").expect("lock"),
        "c",
        &order,
        Duration::ZERO,
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    cancelled.abort();
    holder.release().await.expect("release");
    tokio::time::timeout(Duration::from_secs(2), c)
        .await
        .expect("the grant must reach c after b gave up")
        .expect("c");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn try_once_does_not_queue_and_a_free_lock_leaves_no_keys_but_its_fence() {
    let cfg = fair_config(4);
    let cs = clients(&cfg, 2).await;
    let a = cs[0].fair_lock("tidy").expect("lock");
    let g = a
        .try_acquire(Duration::ZERO)
        .await
        .expect("try")
        .expect("free lock");
    let b = cs[1].fair_lock("tidy").expect("lock");
    assert!(b.try_acquire(Duration::ZERO).await.expect("try").is_none());
    let mut conn = raw(&testkit::redis_url()).await;
    let queued: i64 = conn.llen(&a.keys().queue).await.expect("llen");
    assert_eq!(queued, 0, "a zero wait must not queue");
    g.release().await.expect("release");
    let keys = a.keys();
    for key in [&keys.lock, &keys.queue, &keys.waiters] {
        let exists: bool = conn.exists(key).await.expect("exists");
        assert!(!exists, "{key} must be gone after the last release");
    }
    let fence: bool = conn.exists(&keys.fence).await.expect("exists");
    assert!(fence, "the fence stays so tokens keep rising");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_handle_reenters_locally_and_keeps_its_token() {
    let c = client(fair_config(4)).await;
    let lock = c.fair_lock("again").expect("lock");
    let outer = lock.acquire().await.expect("outer");
    let inner = lock
        .try_acquire(Duration::ZERO)
        .await
        .expect("try")
        .expect("re-entry");
    assert_eq!(outer.token(), inner.token());
    inner.release().await.expect("inner");
    let other = c.fair_lock("again").expect("other handle");
    assert!(
        other
            .try_acquire(Duration::from_millis(50))
            .await
            .expect("try")
            .is_none(),
        "one hold is left"
    );
    outer.release().await.expect("outer");
    let g = other
        .try_acquire(Duration::from_millis(500))
        .await
        .expect("try");
    assert!(g.is_some());
}

/// A grant travels as a message naming the client and its token: the waiter must take it from
/// the message (well before its refresh, 10 s here) and the token must be exact, digit for
/// digit, even with counters seeded from Redis TIME (16 digits, beyond Lua's 14-digit number
/// formatting).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_grant_reaches_the_waiter_by_message_with_its_exact_token() {
    let cfg = LockConfig {
        fair_waiter_timeout: Duration::from_secs(30),
        ..fair_config(0)
    };
    let cs = clients(&cfg, 2).await;
    let a = cs[0].fair_lock("exact").expect("lock");
    let held = a.acquire().await.expect("acquire");
    let waiter = cs[1].fair_lock("exact").expect("lock");
    let queue = waiter.keys().queue.clone();
    let waiting = tokio::spawn(async move {
        let g = waiter.acquire().await.expect("acquire");
        (Instant::now(), g)
    });
    queued(&queue, 1).await;
    let released = Instant::now();
    held.release().await.expect("release");
    let (at, guard) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("granted")
        .expect("task");
    assert!(
        at - released < Duration::from_secs(1),
        "the grant message was not used: {:?}",
        at - released
    );
    let mut conn = raw(&testkit::redis_url()).await;
    let counter: u64 = conn.get(&a.keys().fence).await.expect("fence");
    // Strict FIFO: blocks of one token, so the counter is the grant's token.
    assert_eq!(guard.token(), counter, "the granted token must be exact");
    assert!(
        counter > 1_000_000_000_000_000,
        "seeded from TIME in µs: {counter}"
    );
    guard.release().await.expect("release");
}
