//! Project automation for the workspace, run as `cargo xtask <command>`
//! (the alias lives in `.cargo/config.toml`).
//!
//! One module per subcommand; shared plumbing (locating the workspace, running
//! cargo, Ctrl-C handling) lives here.

mod bench;
mod bench_shop;
mod browser;
mod chaos;
mod demo;
mod outcome;
mod services;
mod shop;
mod test;
mod up;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// Command-line interface of `cargo xtask`.
#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Project automation for the seckill workspace"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run every test of the workspace against real Redis and PostgreSQL
    /// (shared ones when they answer, throwaway ones otherwise).
    Test(test::TestArgs),
    /// Run a benchmark (`lock`, `strategies`, `shop` or `all`) against the same Redis and
    /// PostgreSQL `test` would use.
    Bench(bench::BenchArgs),
    /// Run the shop as native processes (2 stock-services, 2 order-services, the
    /// gateway) on local or throwaway Redis and PostgreSQL until Ctrl-C.
    Up(up::UpArgs),
    /// `up`, then a flash sale with the goose load test, the audit and its verdict; the
    /// shop stays up for the dashboard until Ctrl-C (or `--no-wait`).
    Demo(demo::DemoArgs),
    /// The shop under one real fault per scenario (kill -9, SIGSTOP past the lease, Redis
    /// flushed or restarted empty, ...), then the books audited straight from PostgreSQL;
    /// fails on any broken invariant (docs/reliability.md).
    Chaos(chaos::ChaosArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Test(args) => test::run(&args),
        Cmd::Bench(args) => bench::run(&args),
        Cmd::Up(args) => up::run(&args),
        Cmd::Demo(args) => demo::run(&args),
        Cmd::Chaos(args) => chaos::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (the parent of this crate's directory).
fn workspace_root() -> anyhow::Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_owned)
        .context("xtask's manifest dir has no parent")
}

/// A `cargo` command run from the workspace root, without the package-specific
/// variables that `cargo run` set for xtask itself.
fn cargo() -> anyhow::Result<Command> {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(program);
    cmd.current_dir(workspace_root()?);
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if key.starts_with("CARGO_PKG_")
            || matches!(
                key,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
            )
        {
            cmd.env_remove(key);
        }
    }
    Ok(cmd)
}

/// Set by the Ctrl-C handler.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Installs a Ctrl-C (SIGINT) handler so that xtask outlives the interrupt and can
/// stop what it started: the first Ctrl-C only sets a flag (child processes in
/// the foreground process group receive the signal themselves and exit); a second
/// one exits at once.
fn catch_interrupts() -> anyhow::Result<()> {
    ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            eprintln!("xtask: interrupted twice, exiting without cleanup");
            std::process::exit(130);
        }
        eprintln!("xtask: interrupted; cleaning up (Ctrl-C again to exit at once)");
    })
    .context("installing the Ctrl-C handler")
}

/// Whether Ctrl-C was pressed since [`catch_interrupts`].
fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}
