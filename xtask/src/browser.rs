//! Finding (or installing) the headless Chromium that the gateway's dashboard test drives.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::bail;

/// Environment variable that tells the browser test which Chromium to run.
pub const CHROMIUM_ENV: &str = "CHROMIUM";

/// Names Chromium goes by on Debian/Ubuntu and elsewhere.
const NAMES: &[&str] = &[
    "chromium",
    "chromium-browser",
    "google-chrome",
    "google-chrome-stable",
];

/// The Chromium to use: `$CHROMIUM` when it names a program, else the first of [`NAMES`]
/// on `PATH`; when there is none and this runs as root with `apt-get`, installs Debian's
/// `chromium` package first. Fails with a message naming the package otherwise.
pub fn chromium() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(CHROMIUM_ENV).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if runs(&path) {
            return Ok(path);
        }
        bail!(
            "${CHROMIUM_ENV} is {} but that does not run",
            path.display()
        );
    }
    if let Some(found) = on_path() {
        return Ok(found);
    }
    if is_root() && runs(Path::new("apt-get")) {
        println!("chromium: not installed; installing Debian's `chromium` package (apt-get)");
        let status = Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "chromium"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .status();
        if let Some(found) = on_path() {
            return Ok(found);
        }
        bail!(
            "installing Chromium with `apt-get install chromium` failed ({status:?}); \
             the gateway's dashboard test needs a headless Chromium"
        );
    }
    bail!(
        "the gateway's dashboard test needs a headless Chromium: install the Debian package \
         `chromium` (apt-get install chromium) or set ${CHROMIUM_ENV} to a Chromium/Chrome binary"
    )
}

fn on_path() -> Option<PathBuf> {
    NAMES
        .iter()
        .map(Path::new)
        .find(|name| runs(name))
        .map(Path::to_owned)
}

/// Whether `program --version` runs and succeeds.
fn runs(program: &Path) -> bool {
    Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
