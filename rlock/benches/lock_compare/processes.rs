//! The throughput scenarios split over several OS processes (`BENCH_PROCESSES`), as separate
//! service instances would share a lock: each child runs its share of the tasks (its own lock
//! clients) in the same time window, prints what it counted, and the parent adds it up and
//! checks the shared counter. A child is this same binary with `BENCH_CHILD` set.
//!
//! Across processes "changed hands" only counts hand-offs between tasks of one process (the
//! bookkeeping is in memory), so that column is a lower bound in this mode.

use std::time::{SystemTime, UNIX_EPOCH};

use super::{Kind, Settings, Throughput, contended, uncontended};
use anyhow::{Context, Result, anyhow, bail};
use redis::AsyncCommands;

/// Set in a child: `<implementation>,<scenario>,<round>,<index>,<start, ms since the epoch>`.
pub(crate) const CHILD_ENV: &str = "BENCH_CHILD";
/// The line a child prints its counts on.
const REPORT: &str = "CHILD";
/// Time for the children to start and connect before the window opens.
const START_DELAY_MS: u64 = 800;

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Parent side: one slice of `scenario` for `kind`, its tasks split over the processes.
pub(crate) async fn slice(
    kind: Kind,
    scenario: &str,
    round: usize,
    s: &Settings,
) -> Result<Throughput> {
    let start = unix_ms() + START_DELAY_MS;
    let exe = std::env::current_exe().context("own executable")?;
    let per_process = s.tasks / s.processes;
    let mut children = Vec::with_capacity(s.processes);
    for index in 0..s.processes {
        let child = tokio::process::Command::new(&exe)
            .env(
                CHILD_ENV,
                format!("{},{scenario},{round},{index},{start}", kind.tag()),
            )
            .env("BENCH_PREFIX", &s.prefix)
            .env("BENCH_TASKS", per_process.to_string())
            .env(
                "BENCH_TASKS_PER_CLIENT",
                s.per_client.min(per_process).to_string(),
            )
            .env("BENCH_PROCESSES", "1")
            .env("BENCH_SECS", s.secs.as_secs_f64().to_string())
            .env("BENCH_ROUNDS", s.rounds.to_string())
            .env("REDIS_URL", &s.url)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting a bench child process")?;
        children.push(child);
    }
    let mut t = Throughput {
        window: s.slice(),
        ..Throughput::default()
    };
    for child in children {
        let out = child.wait_with_output().await?;
        if !out.status.success() {
            bail!("a bench child process failed: {}", out.status);
        }
        add_report(&mut t, &String::from_utf8_lossy(&out.stdout))?;
    }
    if scenario == "contended" {
        let counter = format!("{}:{}:counter:{round}", s.prefix, kind.tag());
        let mut conn = redis::Client::open(s.url.as_str())?
            .get_multiplexed_async_connection()
            .await?;
        let value: Option<u64> = conn.get(&counter).await?;
        t.counter_ok = Some(value.unwrap_or(0) == t.total);
    }
    Ok(t)
}

/// Add one child's report line to `t`.
fn add_report(t: &mut Throughput, stdout: &str) -> Result<()> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(REPORT))
        .ok_or_else(|| anyhow!("a bench child printed no report"))?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [in_window, total, changed, per_task, waits] = fields.as_slice() else {
        bail!("malformed child report {line:?}");
    };
    t.in_window += in_window.parse::<u64>()?;
    t.total += total.parse::<u64>()?;
    t.changed_hands += changed.parse::<u64>()?;
    for n in per_task.split(',').filter(|x| !x.is_empty()) {
        t.per_task.push(n.parse()?);
    }
    for us in waits.split(',').filter(|x| !x.is_empty() && *x != "-") {
        t.waits
            .samples
            .push(std::time::Duration::from_micros(us.parse()?));
    }
    Ok(())
}

/// Child side: wait for the common start, run this process's share, print the counts.
pub(crate) async fn child(spec: &str) -> Result<()> {
    let parts: Vec<&str> = spec.split(',').collect();
    let [kind, scenario, round, index, start] = parts.as_slice() else {
        bail!("malformed {CHILD_ENV}={spec:?}");
    };
    let kind = Kind::ALL
        .into_iter()
        .find(|k| k.tag() == *kind)
        .ok_or_else(|| anyhow!("unknown implementation {kind:?}"))?;
    let (round, index, start): (usize, usize, u64) =
        (round.parse()?, index.parse()?, start.parse()?);
    let s = Settings::from_env()?;
    let first = index * s.tasks;
    // Connect first (inside the scenario functions), but start the window together: the
    // scenario functions take their deadline from when they start their workers, so wait
    // for the common start here. Connecting takes a few ms, well inside the start delay.
    let now = unix_ms();
    if start > now {
        tokio::time::sleep(std::time::Duration::from_millis(start - now)).await;
    }
    let t = match *scenario {
        "uncontended" => uncontended(kind, &s, first).await?,
        "contended" => contended(kind, &s, round, first).await?,
        other => bail!("scenario {other:?} does not run in processes"),
    };
    println!("{}", report(&t));
    Ok(())
}

fn report(t: &Throughput) -> String {
    let per_task: Vec<String> = t.per_task.iter().map(u64::to_string).collect();
    let waits: Vec<String> = t
        .waits
        .samples
        .iter()
        .map(|d| d.as_micros().to_string())
        .collect();
    format!(
        "{REPORT} {} {} {} {} {}",
        t.in_window,
        t.total,
        t.changed_hands,
        if per_task.is_empty() {
            "-".to_owned()
        } else {
            per_task.join(",")
        },
        if waits.is_empty() {
            "-".to_owned()
        } else {
            waits.join(",")
        },
    )
}
