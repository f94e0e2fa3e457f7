//! `cargo xtask bench`: the benchmarks, against the Redis and PostgreSQL that
//! `cargo xtask test` would use (found or started the same way, exported the same way).

use std::fmt;
use std::path::Path;
use std::process::{Command, ExitCode};

use anyhow::Context as _;
use clap::{Args, ValueEnum};

use crate::services::Services;

/// Options of `cargo xtask bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Which benchmark to run.
    #[arg(value_enum)]
    what: What,
    /// Always start throwaway redis-server and PostgreSQL, even when shared ones answer.
    #[arg(long)]
    throwaway: bool,
    /// Extra arguments for `cargo bench`, e.g. `-- --offline`; a second `--` starts the
    /// benchmark binary's own arguments. The strategies bench is configured with
    /// `BENCH_*` environment variables instead (see docs/strategies.md).
    #[arg(last = true, value_name = "CARGO_BENCH_ARGS")]
    cargo_args: Vec<String>,
}

/// The benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum What {
    /// `rlock`'s lock comparison (`cargo bench -p rlock --bench lock_compare`).
    Lock,
    /// The stock-service's deduction strategies, one sell-out each
    /// (`cargo bench -p stock-service --bench strategies`).
    Strategies,
    /// Both, lock first.
    All,
}

impl What {
    /// `(package, bench target)` pairs to run, in order.
    fn targets(self) -> &'static [(&'static str, &'static str)] {
        match self {
            What::Lock => &[("rlock", "lock_compare")],
            What::Strategies => &[("stock-service", "strategies")],
            What::All => &[("rlock", "lock_compare"), ("stock-service", "strategies")],
        }
    }
}

/// How one benchmark ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Passed,
    Failed(Option<i32>),
    Skipped,
    Interrupted,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Passed => f.write_str("ok"),
            Outcome::Failed(Some(code)) => write!(f, "FAILED (exit code {code})"),
            Outcome::Failed(None) => f.write_str("FAILED (killed by a signal)"),
            Outcome::Skipped => f.write_str("skipped (interrupted)"),
            Outcome::Interrupted => f.write_str("interrupted"),
        }
    }
}

/// Runs the selected benchmarks; the exit code is a failure when any of them failed.
pub fn run(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    crate::catch_interrupts()?;
    let services = Services::acquire(args.throwaway)?;
    let result = run_benches(args, &services);
    services.shutdown();
    let steps = result?;

    let interrupted = steps
        .iter()
        .any(|(_, o)| matches!(o, Outcome::Interrupted | Outcome::Skipped));
    let failed = steps.iter().any(|(_, o)| matches!(o, Outcome::Failed(_)));
    let verdict = if interrupted {
        "INTERRUPTED"
    } else if failed {
        "FAILED"
    } else {
        "PASSED"
    };
    let details = steps
        .iter()
        .map(|(name, outcome)| format!("{name}: {outcome}"))
        .collect::<Vec<_>>()
        .join("; ");
    println!("xtask bench: {verdict} ({details})");
    Ok(if interrupted {
        ExitCode::from(130)
    } else if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn run_benches(args: &BenchArgs, services: &Services) -> anyhow::Result<Vec<(String, Outcome)>> {
    let mut steps = Vec::new();
    for &(package, bench) in args.what.targets() {
        if crate::interrupted() {
            steps.push((bench.to_owned(), Outcome::Skipped));
            continue;
        }
        let mut cmd = crate::cargo()?;
        cmd.args(["bench", "-p", package, "--bench", bench])
            .args(&args.cargo_args);
        services.export(&mut cmd);
        steps.push((bench.to_owned(), run_step(cmd)?));
    }
    Ok(steps)
}

/// Runs `cmd`, echoing it first.
fn run_step(mut cmd: Command) -> anyhow::Result<Outcome> {
    // Show `cargo`, not the full path of $CARGO.
    let program = Path::new(cmd.get_program())
        .file_name()
        .unwrap_or(cmd.get_program())
        .to_owned();
    let shown = std::iter::once(program.as_os_str())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    println!("==> {shown}");
    let status = cmd.status().with_context(|| format!("running {shown}"))?;
    Ok(if crate::interrupted() {
        Outcome::Interrupted
    } else if status.success() {
        Outcome::Passed
    } else {
        Outcome::Failed(status.code())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn all_runs_the_lock_bench_then_the_strategies() {
        assert_eq!(
            What::All.targets(),
            &[("rlock", "lock_compare"), ("stock-service", "strategies")]
        );
    }

    #[test]
    fn arguments_after_the_separator_go_to_cargo_bench() {
        let cli = crate::Cli::try_parse_from([
            "cargo xtask",
            "bench",
            "strategies",
            "--",
            "--offline",
            "--",
            "x",
        ])
        .expect("parse");
        let crate::Cmd::Bench(args) = cli.command else {
            panic!("not bench");
        };
        assert_eq!(args.what, What::Strategies);
        assert!(!args.throwaway);
        assert_eq!(args.cargo_args, ["--offline", "--", "x"]);
    }
}
