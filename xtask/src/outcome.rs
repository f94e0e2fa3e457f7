//! How one step of a command (a test run, a benchmark) ended, and the closing summary line.

use std::fmt;
use std::path::Path;
use std::process::{Command, ExitCode};

use anyhow::Context as _;

/// How one step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Exit status 0.
    Passed,
    /// Non-zero exit code, or killed by a signal (`None`).
    Failed(Option<i32>),
    /// Not run, and why (`"interrupted"` after Ctrl-C).
    Skipped(&'static str),
    /// Stopped by Ctrl-C.
    Interrupted,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Passed => f.write_str("ok"),
            Outcome::Failed(Some(code)) => write!(f, "FAILED (exit code {code})"),
            Outcome::Failed(None) => f.write_str("FAILED (killed by a signal)"),
            Outcome::Skipped(why) => write!(f, "skipped ({why})"),
            Outcome::Interrupted => f.write_str("interrupted"),
        }
    }
}

/// Print `xtask <command>: PASSED|FAILED|INTERRUPTED (step: outcome; …)` and give the exit
/// code: 130 when interrupted, failure when any step failed.
pub fn summarize(command: &str, steps: &[(String, Outcome)]) -> ExitCode {
    let interrupted = steps
        .iter()
        .any(|(_, o)| matches!(o, Outcome::Interrupted | Outcome::Skipped("interrupted")));
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
    println!("xtask {command}: {verdict} ({details})");
    if interrupted {
        ExitCode::from(130)
    } else if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Runs `cmd` (echoing it first) as one step: how it ended, `Interrupted` after Ctrl-C.
pub fn run_step(mut cmd: Command) -> anyhow::Result<Outcome> {
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
