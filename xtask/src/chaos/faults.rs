//! The faults `cargo xtask chaos` injects, one per scenario, into the running shop.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use testkit::RedisServer;

use super::proxy::Proxy;
use crate::services::Services;
use crate::shop::Shop;

/// How long a paused process stays paused: past the stock-services' lock lease
/// (`LOCK_LEASE_MS`) and the order-services' ownership lease (`ORDER_LEASE_MS`) the chaos
/// shop runs with, and past the gateway's upstream timeout.
pub const PAUSE: Duration = Duration::from_secs(6);

/// One fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Nothing: the baseline every other scenario is compared with.
    None,
    /// `kill -9` of a process; the supervisor starts it again (after its back-off).
    Kill { process: &'static str },
    /// `kill -9` of a process that stays dead.
    KillForGood { process: &'static str },
    /// SIGSTOP for [`PAUSE`], then SIGCONT.
    Pause { process: &'static str },
    /// `FLUSHALL` on the shop's Redis: locks, fencing counters, caches, flags, replay records.
    RedisFlush,
    /// The shop's Redis killed and started again, empty, on the same port.
    RedisRestartedEmpty,
    /// The shop's PostgreSQL restarted (fast shutdown: connections cut, open transactions
    /// rolled back, nothing committed lost) on the same port.
    PostgresRestarted,
    /// The shop's Redis is a primary with a replica behind an address the suite controls;
    /// the primary is killed, the replica promoted (`REPLICAOF NO ONE`) and the address
    /// pointed at it. Whatever the primary had not yet replicated is gone.
    RedisFailover,
    /// The shop runs `redlock` over five masters (started by the suite); two are killed.
    /// A majority (three) still answers.
    RedlockMastersKilled,
}

impl Fault {
    /// The scenario's name in the table.
    pub fn label(self) -> String {
        match self {
            Fault::None => "no fault".into(),
            Fault::Kill { process } => format!("kill -9 {process}, restarted"),
            Fault::KillForGood { process } => format!("kill -9 {process}, not restarted"),
            Fault::Pause { process } => {
                format!("SIGSTOP {process} {}s", PAUSE.as_secs())
            }
            Fault::RedisFlush => "Redis FLUSHALL".into(),
            Fault::RedisRestartedEmpty => "Redis restarted empty".into(),
            Fault::PostgresRestarted => "PostgreSQL restarted".into(),
            Fault::RedisFailover => "Redis primary killed, replica promoted".into(),
            Fault::RedlockMastersKilled => "redlock: 2 of 5 masters killed".into(),
        }
    }

    /// The process the supervisor must leave dead, if any.
    pub fn keeps_dead(self) -> Option<&'static str> {
        match self {
            Fault::KillForGood { process } => Some(process),
            _ => None,
        }
    }

    /// Whether the scenario needs a replicated Redis ([`Replicated`]) for its shop.
    pub fn needs_replica(self) -> bool {
        self == Fault::RedisFailover
    }

    /// How many RedLock masters the scenario's shop needs (its strategy is then `redlock`).
    pub fn redlock_masters(self) -> usize {
        if self == Fault::RedlockMastersKilled {
            5
        } else {
            0
        }
    }

    /// Inject the fault (a pause: stop the process; [`Fault::end`] continues it).
    pub fn start(
        self,
        shop: &Shop,
        services: &mut Services,
        replicated: Option<&mut Replicated>,
        masters: &mut [RedisServer],
    ) -> anyhow::Result<()> {
        match self {
            Fault::RedlockMastersKilled => {
                for m in masters.iter_mut().take(2) {
                    m.kill();
                }
                Ok(())
            }
            Fault::RedisFailover => replicated
                .context("the failover scenario runs on a replicated Redis")?
                .fail_over(),
            Fault::None => Ok(()),
            Fault::Kill { process } | Fault::KillForGood { process } => {
                signal(shop, process, "-KILL")
            }
            Fault::Pause { process } => signal(shop, process, "-STOP"),
            Fault::RedisFlush => {
                let client = redis::Client::open(services.redis_url.as_str())?;
                let mut conn = client.get_connection()?;
                redis::cmd("FLUSHALL").exec(&mut conn)?;
                Ok(())
            }
            Fault::RedisRestartedEmpty => services
                .redis_server_mut()
                .context("the chaos suite needs its own throwaway Redis")?
                .restart(),
            Fault::PostgresRestarted => services
                .postgres_server_mut()
                .context("the chaos suite needs its own throwaway PostgreSQL")?
                .restart(),
        }
    }

    /// How long after [`Fault::start`] the fault ends ([`Fault::end`]), if it does.
    pub fn lasts(self) -> Option<Duration> {
        matches!(self, Fault::Pause { .. }).then_some(PAUSE)
    }

    /// End a fault that lasts: continue a paused process.
    pub fn end(self, shop: &Shop) -> anyhow::Result<()> {
        match self {
            Fault::Pause { process } => signal(shop, process, "-CONT"),
            _ => Ok(()),
        }
    }
}

/// Send `signal` to the shop's process `name` (our own child, by pid).
pub fn signal(shop: &Shop, name: &str, signal: &str) -> anyhow::Result<()> {
    let pid = shop
        .pid_of(name)
        .with_context(|| format!("no process {name} in the shop"))?;
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("kill {signal} {pid} ({name}) failed");
    }
    Ok(())
}

/// A Redis primary and its replica behind a [`Proxy`]: the shop connects to the proxy.
pub struct Replicated {
    primary: RedisServer,
    replica: RedisServer,
    proxy: Proxy,
}

impl Replicated {
    /// Start the primary, its replica (waiting until the replication link is up) and the
    /// proxy in front of the primary.
    pub fn start() -> anyhow::Result<Replicated> {
        let primary = RedisServer::start()?;
        let port = primary.port().to_string();
        let replica = RedisServer::start_with_args(&["--replicaof", "127.0.0.1", &port])?;
        wait_for_link(&replica)?;
        let proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], primary.port())))?;
        Ok(Replicated {
            primary,
            replica,
            proxy,
        })
    }

    /// Where the shop finds "the primary".
    pub fn url(&self) -> String {
        self.proxy.redis_url()
    }

    /// Kill the primary, promote the replica, point the proxy at it.
    fn fail_over(&mut self) -> anyhow::Result<()> {
        self.primary.kill();
        let client = redis::Client::open(self.replica.url())?;
        let mut conn = client.get_connection()?;
        redis::cmd("REPLICAOF")
            .arg("NO")
            .arg("ONE")
            .exec(&mut conn)?;
        self.proxy
            .switch(SocketAddr::from(([127, 0, 0, 1], self.replica.port())));
        Ok(())
    }
}

/// Wait until `replica` reports its link to the primary up (10 s at most).
fn wait_for_link(replica: &RedisServer) -> anyhow::Result<()> {
    let client = redis::Client::open(replica.url())?;
    let mut conn = client.get_connection()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info: String = redis::cmd("INFO").arg("replication").query(&mut conn)?;
        if info.contains("master_link_status:up") {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the Redis replica never linked up with its primary:\n{info}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}
