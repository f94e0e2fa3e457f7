//! `loadtest`: attack the shop through its gateway with goose, audit, and exit 0 (verdict
//! passed), 1 (verdict failed) or 2 (could not run). `loadtest --help` lists the options.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::Parser as _;
use loadtest::{EXIT_FAILED, EXIT_NOT_RUN, EXIT_PASSED, Options};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // Usage errors exit 2 through clap, like every other "could not run".
    let options = Options::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,goose=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadtest: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_NOT_RUN);
        }
    };
    match runtime.block_on(loadtest::run(&options)) {
        Ok(report) => {
            // Goose prints a line or two to stdout too; scripts read summary.json.
            println!("{}", report.markdown);
            let failed: Vec<String> = report
                .summary
                .verdict
                .failures()
                .map(|c| format!("{}: {}", c.name, c.detail))
                .collect();
            if failed.is_empty() {
                eprintln!(
                    "loadtest: verdict PASSED (oversold 0, duplicates 0); reports in {}",
                    options.report_dir.display()
                );
                ExitCode::from(EXIT_PASSED)
            } else {
                eprintln!(
                    "loadtest: verdict FAILED (oversold {}, duplicates {}):",
                    report.summary.oversold, report.summary.duplicates
                );
                for f in failed {
                    eprintln!("  - {f}");
                }
                ExitCode::from(EXIT_FAILED)
            }
        }
        Err(e) => {
            eprintln!("loadtest: could not run: {e}");
            ExitCode::from(EXIT_NOT_RUN)
        }
    }
}
