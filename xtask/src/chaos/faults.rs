//! The faults `cargo xtask chaos` injects, one per scenario, into the running shop.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

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
        }
    }

    /// The process the supervisor must leave dead, if any.
    pub fn keeps_dead(self) -> Option<&'static str> {
        match self {
            Fault::KillForGood { process } => Some(process),
            _ => None,
        }
    }

    /// Inject the fault (a pause: stop the process; [`Fault::end`] continues it).
    pub fn start(self, shop: &Shop, services: &mut Services) -> anyhow::Result<()> {
        match self {
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
