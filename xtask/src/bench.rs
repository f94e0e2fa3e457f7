//! `cargo xtask bench`: the benchmarks, against the Redis and PostgreSQL that
//! `cargo xtask test` would use (found or started the same way, exported the same way).

use std::process::ExitCode;

use clap::{Args, ValueEnum};

use crate::outcome::{Outcome, summarize};
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
    /// The goose flash sale through the whole shop (release builds), once per strategy and
    /// for segmented with S = 1, 4, 8, 16, plus the sold-out phase against the raw gateway.
    Shop,
    /// All three: lock, strategies, shop.
    All,
}

impl What {
    /// `(package, bench target)` pairs to run, in order.
    fn targets(self) -> &'static [(&'static str, &'static str)] {
        match self {
            What::Lock => &[("rlock", "lock_compare")],
            What::Strategies => &[("stock-service", "strategies")],
            What::Shop => &[],
            What::All => &[("rlock", "lock_compare"), ("stock-service", "strategies")],
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
    Ok(summarize("bench", &steps))
}

fn run_benches(args: &BenchArgs, services: &Services) -> anyhow::Result<Vec<(String, Outcome)>> {
    let mut steps = Vec::new();
    for &(package, bench) in args.what.targets() {
        if crate::interrupted() {
            steps.push((bench.to_owned(), Outcome::Skipped("interrupted")));
            continue;
        }
        let mut cmd = crate::cargo()?;
        cmd.args(["bench", "-p", package, "--bench", bench])
            .args(&args.cargo_args);
        services.export(&mut cmd);
        steps.push((bench.to_owned(), crate::outcome::run_step(cmd)?));
    }
    if matches!(args.what, What::Shop | What::All) && !crate::interrupted() {
        steps.extend(crate::bench_shop::run(services)?);
    }
    Ok(steps)
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
