//! Lock comparison on one Redis, in one run: rlock's `RLock` and its fair lock (strict FIFO,
//! and with bounded local passes) against a hand-rolled `SET NX PX` lock that polls at a
//! fixed interval, and against the `rslock` crate (Redlock, here with a single server).
//!
//! ```text
//! cargo bench -p rlock --bench lock_compare
//! ```
//!
//! Environment (all optional):
//! - `REDIS_URL` (default `redis://127.0.0.1:6379/`)
//! - `BENCH_SECS` seconds per scenario and implementation (default 5), split into
//!   `BENCH_ROUNDS` slices (default 5)
//! - `BENCH_TASKS` tasks in the uncontended and contended scenarios (default 16)
//! - `BENCH_TASKS_PER_CLIENT` tasks sharing one lock client (default 4)
//! - `BENCH_IMPLS` comma-separated subset of `rlock,fair,fair-fifo,polling,rslock` (default
//!   all)
//! - `BENCH_SCENARIOS` comma-separated subset of `uncontended,contended,handoff` (default all)
//! - `BENCH_REF_REQUESTS` requests of the redis-benchmark reference (default 100000)
//! - `BENCH_PROCESSES` OS processes sharing the tasks of the uncontended and contended
//!   scenarios (default 1; see `lock_compare/processes.rs`)
//!
//! This is a plain `harness = false` binary, not a criterion bench: criterion times many
//! repetitions of one closure and fits statistics to the per-iteration time, while what is
//! measured here is the aggregate throughput of 16 concurrent tasks over a fixed wall-clock
//! window and a latency distribution observed between two tasks. Neither fits that model.
//!
//! Every key lives under a fresh `bench<uuid>:` prefix and is deleted at the end.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands, ConnectionAddr, Script};
use rlock::{FairGuard, FairLock, LockClient, LockConfig, LockGuard, RLock};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Sleep of the polling lock between failed `SET NX` attempts (as common hand-rolled locks).
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Lease of the polling and rslock locks. rlock uses its watchdog lease (30 s, renewed).
const LEASE: Duration = Duration::from_secs(30);
/// In the handoff scenario the holder keeps the lock for a random time in this range (ms),
/// so that the waiter is really waiting when the release comes and releases fall at a
/// random phase of the polling lock's sleep.
const HANDOFF_HOLD_MS: std::ops::RangeInclusive<u64> = 1..=11;

/// Token-checked release of the polling lock.
static POLL_RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end \
         return 0",
    )
});

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Rlock,
    /// The fair lock with the default bound on local passes.
    Fair,
    /// The fair lock with no local passes: strict FIFO across clients.
    FairFifo,
    Polling,
    Rslock,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::Rlock,
        Kind::Fair,
        Kind::FairFifo,
        Kind::Polling,
        Kind::Rslock,
    ];

    fn tag(self) -> &'static str {
        match self {
            Kind::Rlock => "rlock",
            Kind::Fair => "fair",
            Kind::FairFifo => "fair-fifo",
            Kind::Polling => "polling",
            Kind::Rslock => "rslock",
        }
    }

    fn label(self) -> String {
        match self {
            Kind::Rlock => "rlock `RLock` (watchdog lease, pub/sub wake-up)".to_owned(),
            Kind::Fair => format!(
                "rlock `FairLock` (queue + hand-off, ≤ {} local passes)",
                fair_passes()
            ),
            Kind::FairFifo => "rlock `FairLock`, strict FIFO (0 local passes)".to_owned(),
            Kind::Polling => format!(
                "polling `SET NX PX` + {} ms sleep",
                POLL_INTERVAL.as_millis()
            ),
            Kind::Rslock => "rslock 0.10 (1 server, default retry 3 × 0-200 ms)".to_owned(),
        }
    }
}

/// Local passes of the `fair` implementation: `BENCH_FAIR_PASSES`, else the library's default.
fn fair_passes() -> u32 {
    std::env::var("BENCH_FAIR_PASSES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(LockConfig::default().fair_local_handoffs)
}

#[path = "lock_compare/processes.rs"]
mod processes;

struct Settings {
    url: String,
    /// OS processes the throughput scenarios are split over.
    processes: usize,
    secs: Duration,
    tasks: usize,
    per_client: usize,
    rounds: usize,
    kinds: Vec<Kind>,
    scenarios: Vec<String>,
    ref_requests: u64,
    prefix: String,
}

impl Settings {
    fn from_env() -> Result<Self> {
        fn var<T: std::str::FromStr>(name: &str, default: T) -> Result<T>
        where
            T::Err: std::fmt::Display,
        {
            match std::env::var(name) {
                Ok(v) => v.parse().map_err(|e| anyhow!("{name}={v:?}: {e}")),
                Err(_) => Ok(default),
            }
        }
        let kinds = match std::env::var("BENCH_IMPLS") {
            Ok(list) => list
                .split(',')
                .map(|s| {
                    Kind::ALL
                        .into_iter()
                        .find(|k| k.tag() == s.trim())
                        .ok_or_else(|| anyhow!("BENCH_IMPLS: unknown implementation {s:?}"))
                })
                .collect::<Result<Vec<_>>>()?,
            Err(_) => Kind::ALL.to_vec(),
        };
        const SCENARIOS: [&str; 3] = ["uncontended", "contended", "handoff"];
        let scenarios = match std::env::var("BENCH_SCENARIOS") {
            Ok(list) => list
                .split(',')
                .map(|s| {
                    SCENARIOS
                        .into_iter()
                        .find(|k| *k == s.trim())
                        .map(str::to_owned)
                        .ok_or_else(|| anyhow!("BENCH_SCENARIOS: unknown scenario {s:?}"))
                })
                .collect::<Result<Vec<_>>>()?,
            Err(_) => SCENARIOS.map(str::to_owned).to_vec(),
        };
        let settings = Settings {
            url: var("REDIS_URL", "redis://127.0.0.1:6379/".to_owned())?,
            processes: var("BENCH_PROCESSES", 1)?,
            secs: Duration::from_secs_f64(var("BENCH_SECS", 5.0)?),
            tasks: var("BENCH_TASKS", 16)?,
            per_client: var("BENCH_TASKS_PER_CLIENT", 4)?,
            rounds: var("BENCH_ROUNDS", 5)?,
            kinds,
            scenarios,
            ref_requests: var("BENCH_REF_REQUESTS", 100_000)?,
            // A child process works under its parent's prefix.
            prefix: std::env::var("BENCH_PREFIX")
                .unwrap_or_else(|_| format!("bench{}", uuid::Uuid::new_v4().simple())),
        };
        if settings.tasks == 0 || settings.per_client == 0 || settings.rounds == 0 {
            bail!("BENCH_TASKS, BENCH_TASKS_PER_CLIENT and BENCH_ROUNDS must be at least 1");
        }
        if settings.processes == 0 || !settings.tasks.is_multiple_of(settings.processes) {
            bail!("BENCH_PROCESSES must be at least 1 and divide BENCH_TASKS");
        }
        Ok(settings)
    }

    /// Length of one implementation's turn at one scenario in one round.
    fn slice(&self) -> Duration {
        self.secs / u32::try_from(self.rounds).unwrap_or(u32::MAX)
    }

    fn runs(&self, scenario: &str) -> bool {
        self.scenarios.iter().any(|s| s == scenario)
    }

    fn clients(&self) -> usize {
        self.tasks.div_ceil(self.per_client)
    }
}

/// One simulated service instance: the lock client shared by a group of tasks, and a
/// separate connection for the data the contended scenario reads and writes.
struct Instance {
    lock: InstanceLock,
    data: MultiplexedConnection,
    prefix: String,
}

enum InstanceLock {
    Rlock(LockClient),
    Fair(LockClient),
    Polling(MultiplexedConnection),
    Rslock(rslock::LockManager),
}

impl Instance {
    async fn connect(kind: Kind, s: &Settings) -> Result<Self> {
        let client = redis::Client::open(s.url.as_str())?;
        let lock = match kind {
            Kind::Rlock => {
                let config = LockConfig {
                    key_prefix: s.prefix.clone(),
                    ..LockConfig::default()
                };
                InstanceLock::Rlock(LockClient::connect(&s.url, config).await?)
            }
            Kind::Fair | Kind::FairFifo => {
                let defaults = LockConfig::default();
                let config = LockConfig {
                    key_prefix: s.prefix.clone(),
                    fair_local_handoffs: if kind == Kind::Fair { fair_passes() } else { 0 },
                    ..defaults
                };
                InstanceLock::Fair(LockClient::connect(&s.url, config).await?)
            }
            Kind::Polling => {
                InstanceLock::Polling(client.get_multiplexed_async_connection().await?)
            }
            Kind::Rslock => {
                InstanceLock::Rslock(rslock::LockManager::from_clients(vec![client.clone()]))
            }
        };
        Ok(Instance {
            lock,
            data: client.get_multiplexed_async_connection().await?,
            prefix: s.prefix.clone(),
        })
    }

    /// A task's handle on the lock `name` (a new owner for rlock).
    fn handle(&self, name: &str) -> Result<Handle> {
        let key = format!("{}:{name}", self.prefix);
        Ok(match &self.lock {
            InstanceLock::Rlock(client) => Handle::Rlock(client.lock(name)?),
            InstanceLock::Fair(client) => Handle::Fair(client.fair_lock(name)?),
            InstanceLock::Polling(conn) => Handle::Polling {
                conn: conn.clone(),
                key,
            },
            InstanceLock::Rslock(mgr) => Handle::Rslock {
                mgr: mgr.clone(),
                key,
            },
        })
    }
}

enum Handle {
    Rlock(RLock),
    Fair(FairLock),
    Polling {
        conn: MultiplexedConnection,
        key: String,
    },
    Rslock {
        mgr: rslock::LockManager,
        key: String,
    },
}

enum Held {
    Rlock(LockGuard),
    Fair(FairGuard),
    Polling(String),
    Rslock(rslock::LockGuard),
}

impl Handle {
    /// Wait as long as it takes for the lock.
    async fn acquire(&mut self) -> Result<Held> {
        match self {
            Handle::Rlock(lock) => Ok(Held::Rlock(lock.acquire().await?)),
            Handle::Fair(lock) => Ok(Held::Fair(lock.acquire().await?)),
            Handle::Polling { conn, key } => {
                let token = uuid::Uuid::new_v4().simple().to_string();
                loop {
                    let set: Option<String> = redis::cmd("SET")
                        .arg(&*key)
                        .arg(&token)
                        .arg("NX")
                        .arg("PX")
                        .arg(LEASE.as_millis() as u64)
                        .query_async(conn)
                        .await?;
                    if set.is_some() {
                        return Ok(Held::Polling(token));
                    }
                    tokio::time::sleep(POLL_INTERVAL).await;
                }
            }
            // `acquire` loops on `lock`, which itself tries `retry_count` times with random
            // delays; it returns only once the lock is held.
            Handle::Rslock { mgr, key } => {
                Ok(Held::Rslock(mgr.acquire(key.as_str(), LEASE).await?))
            }
        }
    }

    async fn release(&mut self, held: Held) -> Result<()> {
        match (self, held) {
            (Handle::Rlock(_), Held::Rlock(guard)) => guard.release().await?,
            (Handle::Fair(_), Held::Fair(guard)) => guard.release().await?,
            (Handle::Polling { conn, key }, Held::Polling(token)) => {
                let deleted: i64 = POLL_RELEASE
                    .key(&*key)
                    .arg(token)
                    .invoke_async(conn)
                    .await?;
                if deleted != 1 {
                    bail!("polling lock {key} was no longer held at release");
                }
            }
            // Best effort and silent, as the crate defines it.
            (Handle::Rslock { .. }, Held::Rslock(guard)) => guard.release().await,
            _ => bail!("guard released through a handle of another implementation"),
        }
        Ok(())
    }
}

async fn instances(kind: Kind, s: &Settings, n: usize) -> Result<Vec<Instance>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(Instance::connect(kind, s).await?);
    }
    Ok(out)
}

/// Cycles of one scenario, summed over rounds. Only cycles completed before a slice's
/// deadline count towards the rate: tasks still waiting at the deadline finish one more
/// cycle, and that drain takes a different time for each implementation. All cycles count
/// towards the counter check.
#[derive(Default)]
struct Throughput {
    in_window: u64,
    total: u64,
    window: Duration,
    /// Cycles within the window per task index, summed over rounds.
    per_task: Vec<u64>,
    /// Cycles in which the lock was taken by a different task than in the previous cycle.
    changed_hands: u64,
    /// How long each acquire within the window took (sorted after the last round).
    waits: Latency,
    counter_ok: Option<bool>,
}

impl Throughput {
    fn per_sec(&self) -> f64 {
        self.in_window as f64 / self.window.as_secs_f64()
    }

    fn add(&mut self, other: Throughput) {
        self.in_window += other.in_window;
        self.total += other.total;
        self.window += other.window;
        self.changed_hands += other.changed_hands;
        self.waits.samples.extend(other.waits.samples);
        if self.per_task.len() < other.per_task.len() {
            self.per_task.resize(other.per_task.len(), 0);
        }
        for (mine, theirs) in self.per_task.iter_mut().zip(other.per_task) {
            *mine += theirs;
        }
        self.counter_ok = match (self.counter_ok, other.counter_ok) {
            (None, x) | (x, None) => x,
            (Some(a), Some(b)) => Some(a && b),
        };
    }

    async fn join(window: Duration, joins: Vec<JoinHandle<Result<Counts>>>) -> Result<Self> {
        let mut t = Throughput {
            window,
            ..Throughput::default()
        };
        for j in joins {
            let c = j.await.context("bench task panicked")??;
            t.in_window += c.in_window;
            t.total += c.total;
            t.changed_hands += c.changed_hands;
            t.waits.samples.extend(c.waits);
            t.per_task.push(c.in_window);
        }
        Ok(t)
    }
}

/// What one task did in one slice.
struct Counts {
    in_window: u64,
    total: u64,
    changed_hands: u64,
    waits: Vec<Duration>,
}

/// One task of the throughput scenarios: acquire, optionally increment the shared counter
/// with a GET and a SET, release.
struct Worker {
    id: usize,
    handle: Handle,
    counter: Option<(MultiplexedConnection, String)>,
    /// Id of the task that took the lock last (contended scenario; in-process bookkeeping).
    last_holder: Arc<AtomicUsize>,
}

impl Worker {
    /// One cycle; whether the lock changed hands, and how long the acquire took.
    async fn cycle(&mut self) -> Result<(bool, Duration)> {
        let started = Instant::now();
        let held = self.handle.acquire().await?;
        let wait = started.elapsed();
        let changed = self.last_holder.swap(self.id, Ordering::Relaxed) != self.id;
        if let Some((data, key)) = &mut self.counter {
            let value: Option<i64> = data.get(&*key).await?;
            let () = data.set(&*key, value.unwrap_or(0) + 1).await?;
        }
        self.handle.release(held).await?;
        Ok((changed, wait))
    }

    /// Cycle until `deadline`.
    async fn run(mut self, deadline: Instant) -> Result<Counts> {
        let mut c = Counts {
            in_window: 0,
            total: 0,
            changed_hands: 0,
            waits: Vec::new(),
        };
        while Instant::now() < deadline {
            let (changed, wait) = self.cycle().await?;
            c.total += 1;
            if Instant::now() <= deadline {
                c.in_window += 1;
                c.changed_hands += u64::from(changed);
                c.waits.push(wait);
            }
        }
        Ok(c)
    }
}

/// Run the workers for one slice.
async fn run_workers(s: &Settings, workers: Vec<Worker>) -> Result<Throughput> {
    let deadline = Instant::now() + s.slice();
    let joins = workers
        .into_iter()
        .map(|w| tokio::spawn(w.run(deadline)))
        .collect();
    Throughput::join(s.slice(), joins).await
}

/// `tasks` tasks, each on its own lock, loop acquire + release. Task ids (and so lock names)
/// start at `first` (another process runs the others).
async fn uncontended(kind: Kind, s: &Settings, first: usize) -> Result<Throughput> {
    let inst = instances(kind, s, s.clients()).await?;
    let workers = (0..s.tasks)
        .map(|i| {
            let id = first + i;
            Ok(Worker {
                id,
                handle: inst[i / s.per_client].handle(&format!("{}:unc:{id}", kind.tag()))?,
                counter: None,
                last_holder: Arc::new(AtomicUsize::new(usize::MAX)),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    run_workers(s, workers).await
}

/// `tasks` tasks on one lock, each cycle a GET + SET increment of a counter under the lock;
/// the counter must equal the number of cycles at the end (checked by the parent when several
/// processes share the counter). Task ids start at `first`.
async fn contended(kind: Kind, s: &Settings, round: usize, first: usize) -> Result<Throughput> {
    let inst = instances(kind, s, s.clients()).await?;
    let name = format!("{}:cont", kind.tag());
    let counter = format!("{}:{}:counter:{round}", s.prefix, kind.tag());
    let last_holder = Arc::new(AtomicUsize::new(usize::MAX));
    let workers = (0..s.tasks)
        .map(|i| {
            let instance = &inst[i / s.per_client];
            Ok(Worker {
                id: first + i,
                handle: instance.handle(&name)?,
                counter: Some((instance.data.clone(), counter.clone())),
                last_holder: Arc::clone(&last_holder),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut t = run_workers(s, workers).await?;
    let mut data = inst[0].data.clone();
    let value: Option<u64> = data.get(&counter).await?;
    t.counter_ok = Some(value.unwrap_or(0) == t.total);
    Ok(t)
}

#[derive(Default)]
struct Latency {
    samples: Vec<Duration>,
}

impl Latency {
    /// Nearest-rank percentile.
    fn percentile(&self, p: f64) -> Option<Duration> {
        let n = self.samples.len();
        if n == 0 {
            return None;
        }
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        Some(self.samples[rank.clamp(1, n) - 1])
    }
}

/// Two tasks on two instances ping-pong one lock. Each sample is the time from just before
/// the holder sends its release to the moment the waiting task's acquire returns.
async fn handoff(kind: Kind, s: &Settings) -> Result<Latency> {
    let inst = instances(kind, s, 2).await?;
    let name = format!("{}:handoff", kind.tag());
    let handles = [inst[0].handle(&name)?, inst[1].handle(&name)?];
    // turn[i]: the other task now holds the lock, so task i may start waiting for it.
    let turn = Arc::new([Notify::new(), Notify::new()]);
    let stamp: Arc<Mutex<Option<Instant>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + s.slice();
    let mut joins = Vec::with_capacity(2);
    for (i, mut h) in handles.into_iter().enumerate() {
        let (turn, stamp, stop) = (Arc::clone(&turn), Arc::clone(&stamp), Arc::clone(&stop));
        joins.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            if i == 1 {
                turn[1].notified().await;
            }
            loop {
                let held = h.acquire().await?;
                let acquired = Instant::now();
                if let Some(released) = stamp.lock().unwrap_or_else(PoisonError::into_inner).take()
                {
                    samples.push(acquired - released);
                }
                turn[1 - i].notify_one();
                let last = Instant::now() >= deadline || stop.load(Ordering::Relaxed);
                if last {
                    stop.store(true, Ordering::Relaxed);
                }
                let hold = rand::random_range(HANDOFF_HOLD_MS);
                tokio::time::sleep(Duration::from_millis(hold)).await;
                *stamp.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
                h.release(held).await?;
                if last {
                    return anyhow::Ok(samples);
                }
                turn[i].notified().await;
            }
        }));
    }
    let mut samples = Vec::new();
    for j in joins {
        samples.extend(j.await.context("handoff task panicked")??);
    }
    samples.sort();
    Ok(Latency { samples })
}

/// redis-benchmark of rlock's own acquire script (EVALSHA) on random keys, 16 clients.
async fn run_reference(s: &Settings, conn: &mut MultiplexedConnection) -> Result<Option<f64>> {
    let client = redis::Client::open(s.url.as_str())?;
    let info = client.get_connection_info();
    let ConnectionAddr::Tcp(host, port) = info.addr() else {
        println!("reference: redis-benchmark supports only plain TCP URLs here: n/a");
        return Ok(None);
    };
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(include_str!("../lua/acquire.lua"))
        .query_async(conn)
        .await?;
    let mut cmd = tokio::process::Command::new("redis-benchmark");
    cmd.arg("-h").arg(host).arg("-p").arg(port.to_string());
    let settings = info.redis_settings();
    if let Some(user) = settings.username() {
        cmd.arg("--user").arg(user);
    }
    if let Some(password) = settings.password() {
        cmd.arg("-a").arg(password);
    }
    let lock_key = format!("{}:ref:{{__rand_int__}}", s.prefix);
    cmd.arg("--dbnum")
        .arg(settings.db().to_string())
        .args(["-q", "-c", &s.tasks.to_string(), "-r", "100000", "-n"])
        .arg(s.ref_requests.to_string())
        .args([
            "EVALSHA",
            &sha,
            "2",
            &lock_key,
            &format!("{lock_key}:fence"),
        ])
        .args([LEASE.as_millis().to_string(), "bench-owner".to_owned()]);
    let output = match cmd.output().await {
        Ok(out) if out.status.success() => out,
        Ok(out) => {
            println!(
                "reference: redis-benchmark failed ({}): n/a\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            return Ok(None);
        }
        Err(err) => {
            println!("reference: redis-benchmark not runnable ({err}): n/a");
            return Ok(None);
        }
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let rps = text
        .rsplit_once(" requests per second")
        .and_then(|(before, _)| before.rsplit([' ', '\r', '\n']).next())
        .and_then(|n| n.parse::<f64>().ok());
    if rps.is_none() {
        println!("reference: could not parse redis-benchmark output: n/a\n{text}");
    }
    Ok(rps)
}

async fn machine_line(conn: &mut MultiplexedConnection) -> Result<String> {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let info: String = redis::cmd("INFO").arg("server").query_async(conn).await?;
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("unknown")
        .trim()
        .to_owned();
    Ok(format!(
        "nproc {cpus}, CPU {cpu}, redis-server {version} (bench, Redis and redis-benchmark share the host)"
    ))
}

async fn cleanup(s: &Settings, conn: &mut MultiplexedConnection) -> Result<u64> {
    let pattern = format!("{}:*", s.prefix);
    let mut cursor = 0u64;
    let mut deleted = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        if !keys.is_empty() {
            let n: u64 = redis::cmd("UNLINK").arg(&keys).query_async(conn).await?;
            deleted += n;
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}

#[derive(Default)]
struct Row {
    uncontended: Throughput,
    contended: Throughput,
    handoff: Latency,
}

fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return "n/a".to_owned();
    }
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "n/a".to_owned(),
        |d| format!("{:.2} ms", d.as_secs_f64() * 1e3),
    )
}

fn ratio(x: f64, base: f64) -> String {
    if base > 0.0 && x.is_finite() {
        format!("{:.2}×", x / base)
    } else {
        "n/a".to_owned()
    }
}

fn print_report(s: &Settings, machine: &str, reference: &[Option<f64>], rows: &[(Kind, Row)]) {
    println!();
    println!("## Results");
    println!();
    println!("machine: {machine}");
    println!(
        "setup: {} s per scenario and implementation in {} interleaved rounds of {:.2} s; \
         {} tasks on {} clients ({} tasks per client) in {} process(es); handoff: 2 tasks on 2 \
         clients in one process, holder keeps the lock {}-{} ms",
        s.secs.as_secs_f64(),
        s.rounds,
        s.slice().as_secs_f64(),
        s.tasks,
        s.clients(),
        s.per_client,
        s.processes,
        HANDOFF_HOLD_MS.start(),
        HANDOFF_HOLD_MS.end()
    );
    let refs: Vec<String> = reference
        .iter()
        .map(|r| r.map_or_else(|| "n/a".to_owned(), thousands))
        .collect();
    println!(
        "reference: redis-benchmark -c {} EVALSHA of lua/acquire.lua on random keys, before / \
         after the run: {} req/s",
        s.tasks,
        refs.join(" / ")
    );
    println!();
    println!(
        "| implementation | uncontended cycles/s ({t} tasks, {t} keys) | contended cycles/s ({t} tasks, 1 key, GET+SET) | counter | contended cycles/s per task, min-max (busiest / least) | contended cycles where the lock changed hands | contended acquire wait p50 / p99 | handoff p50 | handoff p99 | handoff samples |",
        t = s.tasks
    );
    println!("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|");
    for (kind, r) in rows {
        let counter = match r.contended.counter_ok {
            Some(true) => "OK",
            Some(false) => "MISMATCH",
            None => "-",
        };
        let window = r.contended.window.as_secs_f64();
        let min = r.contended.per_task.iter().min().copied().unwrap_or(0) as f64 / window;
        let max = r.contended.per_task.iter().max().copied().unwrap_or(0) as f64 / window;
        println!(
            "| {} | {} | {} | {} | {}-{} ({:.2}) | {} | {} / {} | {} | {} | {} |",
            kind.label(),
            thousands(r.uncontended.per_sec()),
            thousands(r.contended.per_sec()),
            counter,
            thousands(min),
            thousands(max),
            spread(r),
            if r.contended.in_window == 0 {
                "n/a".to_owned()
            } else {
                format!(
                    "{:.1}%",
                    100.0 * r.contended.changed_hands as f64 / r.contended.in_window as f64
                )
            },
            ms(r.contended.waits.percentile(50.0)),
            ms(r.contended.waits.percentile(99.0)),
            ms(r.handoff.percentile(50.0)),
            ms(r.handoff.percentile(99.0)),
            r.handoff.samples.len()
        );
    }
    let base = rows
        .iter()
        .find(|(k, _)| *k == Kind::Polling)
        .map(|(_, r)| r);
    if let Some(base) = base {
        println!();
        println!(
            "| vs polling lock | uncontended (higher is better) | contended (higher is better) | handoff p50 (lower is better) | handoff p99 (lower is better) |"
        );
        println!("|---|---:|---:|---:|---:|");
        let secs = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64());
        for (kind, r) in rows {
            println!(
                "| {} | {} | {} | {} | {} |",
                kind.tag(),
                ratio(r.uncontended.per_sec(), base.uncontended.per_sec()),
                ratio(r.contended.per_sec(), base.contended.per_sec()),
                ratio(
                    secs(r.handoff.percentile(50.0)),
                    secs(base.handoff.percentile(50.0))
                ),
                ratio(
                    secs(r.handoff.percentile(99.0)),
                    secs(base.handoff.percentile(99.0))
                ),
            );
        }
    }
    print_aims(&r_of(rows, Kind::Fair), &r_of(rows, Kind::Rslock));
}

fn r_of(rows: &[(Kind, Row)], kind: Kind) -> Option<&Row> {
    rows.iter().find(|(k, _)| *k == kind).map(|(_, r)| r)
}

/// Busiest over least busy task in the contended scenario (1.00: perfectly even).
fn spread(r: &Row) -> f64 {
    let max = r.contended.per_task.iter().max().copied().unwrap_or(0) as f64;
    let min = r.contended.per_task.iter().min().copied().unwrap_or(0) as f64;
    if min > 0.0 { max / min } else { f64::INFINITY }
}

/// The issue's aims for the fair lock, measured against rslock in the same run.
fn print_aims(fair: &Option<&Row>, rslock: &Option<&Row>) {
    let (Some(fair), Some(peer)) = (fair, rslock) else {
        return;
    };
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    println!();
    println!("aims (`fair` against rslock, same run):");
    let (fu, pu) = (fair.uncontended.per_sec(), peer.uncontended.per_sec());
    println!(
        "- uncontended cycles/s ≥ rslock's: {} vs {} = {} ({})",
        thousands(fu),
        thousands(pu),
        ratio(fu, pu),
        met(fu >= pu)
    );
    let (fc, pc) = (fair.contended.per_sec(), peer.contended.per_sec());
    println!(
        "- contended cycles/s ≥ 1.5× rslock's: {} vs {} = {} ({})",
        thousands(fc),
        thousands(pc),
        ratio(fc, pc),
        met(fc >= 1.5 * pc)
    );
    println!(
        "- busiest / least busy task ≤ 2: fair {:.2}, rslock {:.2} ({})",
        spread(fair),
        spread(peer),
        met(spread(fair) <= 2.0)
    );
    let (p50, p99) = (fair.handoff.percentile(50.0), fair.handoff.percentile(99.0));
    println!(
        "- hand-off p50 < 0.5 ms and p99 < 2 ms: {} / {} ({})",
        ms(p50),
        ms(p99),
        met(p50.is_some_and(|d| d < Duration::from_micros(500))
            && p99.is_some_and(|d| d < Duration::from_millis(2)))
    );
}

/// One round: a slice of every scenario for every implementation; the progress line.
async fn run_round(s: &Settings, round: usize, rows: &mut [(Kind, Row)]) -> Result<String> {
    let mut line = format!("round {}/{}", round + 1, s.rounds);
    if s.runs("uncontended") {
        line += "; uncontended";
    }
    for (kind, row) in rows.iter_mut().filter(|_| s.runs("uncontended")) {
        let t = if s.processes > 1 {
            processes::slice(*kind, "uncontended", round, s).await?
        } else {
            uncontended(*kind, s, 0).await?
        };
        line += &format!(" {} {}/s", kind.tag(), thousands(t.per_sec()));
        row.uncontended.add(t);
    }
    if s.runs("contended") {
        line += "; contended";
    }
    for (kind, row) in rows.iter_mut().filter(|_| s.runs("contended")) {
        let t = if s.processes > 1 {
            processes::slice(*kind, "contended", round, s).await?
        } else {
            contended(*kind, s, round, 0).await?
        };
        line += &format!(" {} {}/s", kind.tag(), thousands(t.per_sec()));
        if t.counter_ok != Some(true) {
            line += " MISMATCH";
        }
        row.contended.add(t);
    }
    if s.runs("handoff") {
        line += "; handoff p50";
    }
    for (kind, row) in rows.iter_mut().filter(|_| s.runs("handoff")) {
        let l = handoff(*kind, s).await?;
        line += &format!(" {} {}", kind.tag(), ms(l.percentile(50.0)));
        row.handoff.samples.extend(l.samples);
    }
    Ok(line)
}

#[tokio::main]
async fn main() -> Result<()> {
    if let Ok(spec) = std::env::var(processes::CHILD_ENV) {
        return processes::child(&spec).await;
    }
    let s = Settings::from_env()?;
    let mut conn = redis::Client::open(s.url.as_str())?
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("connect to {}", s.url))?;
    let outcome = run(&s, &mut conn).await;
    match cleanup(&s, &mut conn).await {
        Ok(n) => println!("\ncleanup: deleted {n} keys under {}:", s.prefix),
        Err(err) => println!("\ncleanup of {}:* failed: {err}", s.prefix),
    }
    outcome
}

async fn run(s: &Settings, conn: &mut MultiplexedConnection) -> Result<()> {
    let machine = machine_line(conn).await?;
    println!("lock_compare: {machine}");
    println!(
        "key prefix {}:, {} s per scenario and implementation, {} rounds",
        s.prefix,
        s.secs.as_secs_f64(),
        s.rounds
    );
    let mut reference = vec![run_reference(s, conn).await?];
    let mut rows: Vec<(Kind, Row)> = s.kinds.iter().map(|&k| (k, Row::default())).collect();
    // Interleave: every implementation gets a slice of every scenario in every round, so
    // drifting background load (a shared host, other builds) hits all of them alike.
    for round in 0..s.rounds {
        let line = run_round(s, round, &mut rows).await?;
        println!("{line}");
    }
    for (_, row) in &mut rows {
        row.handoff.samples.sort();
        row.uncontended.waits.samples.sort();
        row.contended.waits.samples.sort();
    }
    reference.push(run_reference(s, conn).await?);
    print_report(s, &machine, &reference, &rows);
    let bad: Vec<&str> = rows
        .iter()
        .filter(|(_, r)| r.contended.counter_ok != Some(true))
        .map(|(k, _)| k.tag())
        .collect();
    if !bad.is_empty() {
        bail!("contended counter MISMATCH for {}", bad.join(", "));
    }
    Ok(())
}
