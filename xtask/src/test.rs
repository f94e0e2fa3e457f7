//! `cargo xtask test`: every test of the workspace against real Redis and PostgreSQL.

use std::process::{ExitCode, Stdio};

use anyhow::Context as _;
use clap::Args;

use crate::outcome::{Outcome, summarize};
use crate::services::Services;

/// Options of `cargo xtask test`.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// Test only this package (repeatable; default: the whole workspace).
    #[arg(short = 'p', long = "package", value_name = "SPEC")]
    packages: Vec<String>,
    /// Always start throwaway redis-server and PostgreSQL, even when shared ones answer.
    #[arg(long)]
    throwaway: bool,
    /// Use `cargo test` even when cargo-nextest is installed.
    #[arg(long)]
    no_nextest: bool,
    /// Extra arguments for the test runner (`cargo nextest run` or `cargo test`),
    /// e.g. `-- -p rlock`, or `-- -p rlock -- --nocapture` with `--no-nextest`.
    /// Package selections (`-p`/`--package`) among them also apply to the doctest pass.
    #[arg(last = true, value_name = "RUNNER_ARGS")]
    runner_args: Vec<String>,
}

/// Runs the tests; the exit code is a failure when any step failed.
pub fn run(args: &TestArgs) -> anyhow::Result<ExitCode> {
    crate::catch_interrupts()?;
    let services = Services::acquire(args.throwaway)?;
    let result = run_steps(args, &services);
    services.shutdown();
    let steps = result?;
    Ok(summarize("test", &steps))
}

/// The test runner, then (with nextest, which does not run doctests) the doctests.
fn run_steps(args: &TestArgs, services: &Services) -> anyhow::Result<Vec<(String, Outcome)>> {
    let nextest = !args.no_nextest && nextest_installed()?;
    let mut packages = args.packages.clone();
    packages.extend(packages_in(&args.runner_args));

    let mut steps = Vec::new();
    let mut runner = crate::cargo()?;
    let name = if nextest {
        runner.args(["nextest", "run"]);
        "cargo nextest run"
    } else {
        // The default targets of `cargo test`: lib, bins, integration tests, doctests.
        runner.arg("test");
        "cargo test"
    };
    runner.arg("--no-fail-fast");
    if packages.is_empty() {
        runner.arg("--workspace");
    }
    for package in &args.packages {
        runner.args(["-p", package]);
    }
    runner.args(&args.runner_args);
    services.export(&mut runner);
    if packages.is_empty() || packages.iter().any(|p| p == "gateway") {
        // The gateway's dashboard is tested in a real headless Chromium.
        let chromium = crate::browser::chromium()?;
        println!("chromium: {}", chromium.display());
        runner.env(crate::browser::CHROMIUM_ENV, chromium);
    }
    steps.push((name.to_owned(), crate::outcome::run_step(runner)?));

    if nextest {
        let outcome = if crate::interrupted() {
            Outcome::Skipped("interrupted")
        } else {
            match doctest_packages(&packages)? {
                None => Outcome::Skipped("no library in the selected packages"),
                Some(selection) => {
                    let mut doc = crate::cargo()?;
                    doc.args(["test", "--doc", "--no-fail-fast"])
                        .args(selection);
                    services.export(&mut doc);
                    crate::outcome::run_step(doc)?
                }
            }
        };
        steps.push(("doctests".to_owned(), outcome));
    }
    Ok(steps)
}

/// Whether `cargo nextest` is available.
fn nextest_installed() -> anyhow::Result<bool> {
    Ok(crate::cargo()?
        .args(["nextest", "--version"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success()))
}

/// Package specs selected by `-p`/`--package` among the runner arguments (before
/// a `--` that starts the test binaries' own arguments).
fn packages_in(runner_args: &[String]) -> Vec<String> {
    let mut packages = Vec::new();
    let mut args = runner_args.iter().take_while(|a| *a != "--");
    while let Some(arg) = args.next() {
        if arg == "-p" || arg == "--package" {
            packages.extend(args.next().cloned());
        } else if let Some(spec) = arg.strip_prefix("--package=") {
            packages.push(spec.to_owned());
        } else if let Some(spec) = arg.strip_prefix("-p").filter(|s| !s.is_empty()) {
            packages.push(spec.trim_start_matches('=').to_owned());
        }
    }
    packages
}

/// The package arguments for `cargo test --doc`: `--workspace` when nothing is
/// selected, else `-p` for each selected package that has a library target
/// (`cargo test --doc` rejects a selection without any); `None` when none has.
fn doctest_packages(selected: &[String]) -> anyhow::Result<Option<Vec<String>>> {
    if selected.is_empty() {
        return Ok(Some(vec!["--workspace".to_owned()]));
    }
    let output = crate::cargo()?
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo metadata")?;
    anyhow::ensure!(output.status.success(), "cargo metadata failed");
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("parsing cargo metadata")?;
    let with_lib: Vec<&str> = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|package| {
            package["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|target| {
                    target["kind"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|k| matches!(k.as_str(), Some("lib" | "rlib" | "proc-macro")))
                })
        })
        .filter_map(|package| package["name"].as_str())
        .collect();
    let mut args = Vec::new();
    for spec in selected {
        // A spec is `name`, `name@version` or a package id; unknown specs are kept
        // so that cargo reports them.
        let name = spec.split('@').next().unwrap_or(spec);
        let known = metadata["packages"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p["name"].as_str() == Some(name));
        if with_lib.contains(&name) || !known {
            args.extend(["-p".to_owned(), spec.clone()]);
        }
    }
    Ok((!args.is_empty()).then_some(args))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|&a| a.to_owned()).collect()
    }

    #[test]
    fn finds_package_selections_in_runner_args() {
        assert_eq!(
            packages_in(&strings(&["-p", "rlock", "--package", "testkit", "lock_"])),
            strings(&["rlock", "testkit"])
        );
        assert_eq!(
            packages_in(&strings(&["--package=a", "-pb", "-p=c"])),
            strings(&["a", "b", "c"])
        );
        assert_eq!(
            packages_in(&strings(&["--nocapture", "--", "-p", "x"])),
            Vec::<String>::new()
        );
    }

    #[test]
    fn doctests_skip_packages_without_library() {
        assert_eq!(
            doctest_packages(&[]).unwrap(),
            Some(strings(&["--workspace"]))
        );
        assert_eq!(doctest_packages(&strings(&["xtask"])).unwrap(), None);
        assert_eq!(
            doctest_packages(&strings(&["xtask", "testkit"])).unwrap(),
            Some(strings(&["-p", "testkit"]))
        );
        assert_eq!(
            doctest_packages(&strings(&["no-such-crate"])).unwrap(),
            Some(strings(&["-p", "no-such-crate"]))
        );
    }
}
