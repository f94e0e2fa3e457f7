//! A throwaway PostgreSQL cluster.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};

use crate::util::{self, ScratchDir};

/// How long [`PostgresServer::start`] waits for the postmaster to accept connections.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How many free ports [`PostgresServer::start`] tries when another process steals the port.
const PORT_ATTEMPTS: usize = 5;
/// Environment variables that could point the PostgreSQL tools at another cluster.
const PG_ENV: &[&str] = &[
    "PGDATA",
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGOPTIONS",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PG_OOM_ADJUST_FILE",
];

/// A throwaway PostgreSQL cluster for tests.
///
/// `initdb` creates it in a private temp dir (trust auth, superuser `postgres`,
/// UTF8, C locale, durability off for speed); `postgres` then listens on a free
/// port on 127.0.0.1 only, with its unix socket inside the temp dir. When the
/// current process runs as root, both run as the `postgres` OS user (PostgreSQL
/// refuses to run as root) and the temp dir is owned by that user.
///
/// On drop the server is stopped (`pg_ctl stop -m immediate`, falling back to
/// SIGKILL of its own pid) and the temp dir is removed.
pub struct PostgresServer {
    child: Option<Child>,
    port: u16,
    bin: PathBuf,
    /// `(uid, gid)` to run the PostgreSQL binaries as, when we are root.
    run_as: Option<(u32, u32)>,
    dir: ScratchDir,
}

impl PostgresServer {
    /// `initdb` a new cluster and start it on a free 127.0.0.1 port; returns once it
    /// accepts connections (timeout 30 s).
    ///
    /// `initdb`, `pg_ctl` and `postgres` are looked up on `PATH`, then under
    /// `/usr/lib/postgresql/<version>/bin` (newest first); when they are absent the
    /// error names the Debian package `postgresql`. Startup errors quote the tail
    /// of the `initdb` or server log.
    pub fn start() -> anyhow::Result<PostgresServer> {
        let bin = find_bin_dir()?;
        let dir = ScratchDir::new("postgres")?;
        let owner = fs::metadata(dir.path())
            .with_context(|| format!("stat {}", dir.path().display()))?
            .uid();
        let run_as = if owner == 0 {
            let (uid, gid) = postgres_user()?;
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .with_context(|| format!("chown postgres {}", dir.path().display()))?;
            Some((uid, gid))
        } else {
            None
        };
        dir.make_private()?;

        let mut server = PostgresServer {
            child: None,
            port: 0,
            bin,
            run_as,
            dir,
        };
        server.initdb()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            server.port = crate::free_port()?;
            let log_offset = util::file_len(&server.log_path());
            match server.spawn_and_wait(log_offset) {
                Ok(()) => return Ok(server),
                // Another process bound the port between `free_port` and our bind.
                Err(_) if attempt < PORT_ATTEMPTS && server.lost_port_race(log_offset) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The TCP port the server listens on (127.0.0.1 only).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The connection URL, `"postgres://postgres@127.0.0.1:PORT/postgres"` (trust auth,
    /// no password).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The pid of the postmaster process, or `None` when it is not running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// A command for one of the PostgreSQL binaries, as the right OS user, in the temp dir.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.current_dir(self.dir.path()).stdin(Stdio::null());
        for var in PG_ENV {
            cmd.env_remove(var);
        }
        if let Some((uid, gid)) = self.run_as {
            // std drops root's supplementary groups when switching uid as root.
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    fn initdb(&self) -> anyhow::Result<()> {
        let log_path = self.dir.path().join("initdb.log");
        let log =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let status = self
            .command("initdb")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"])
            .arg("--no-sync")
            .stdout(log.try_clone().context("duplicating the log file handle")?)
            .stderr(log)
            .status()
            .with_context(|| format!("running {}", self.bin.join("initdb").display()))?;
        if !status.success() {
            let hint = if self.run_as.is_some() {
                "\n(running as root: initdb runs as the `postgres` OS user, which must be able \
                 to reach the temp dir; check $TMPDIR)"
            } else {
                ""
            };
            bail!(
                "initdb into {} failed ({status}); output:\n{}{hint}",
                self.data_dir().display(),
                util::tail(&util::read_from(&log_path, 0), 20)
            );
        }
        Ok(())
    }

    fn spawn_and_wait(&mut self, log_offset: u64) -> anyhow::Result<()> {
        let log_path = self.log_path();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().display()
            ))
            .args(["-c", "fsync=off"])
            .args(["-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off"])
            .stdout(log.try_clone().context("duplicating the log file handle")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {}", self.bin.join("postgres").display()))?;
        let pid = child.id();
        self.child = Some(child);

        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let exited = match self.child.as_mut().map(Child::try_wait) {
                Some(Ok(None)) => None,
                Some(Ok(Some(status))) => Some(status.to_string()),
                Some(Err(e)) => Some(e.to_string()),
                None => Some("gone".to_owned()),
            };
            if let Some(status) = exited {
                self.stop();
                bail!(
                    "postgres (pid {pid}, port {}) exited during startup ({status}); log:\n{}",
                    self.port,
                    util::tail(&util::read_from(&log_path, log_offset), 20)
                );
            }
            if postmaster_ready(&self.data_dir(), pid, self.port) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.stop();
                bail!(
                    "postgres (pid {pid}) did not accept connections on 127.0.0.1:{} within \
                     {STARTUP_TIMEOUT:?}; log:\n{}",
                    self.port,
                    util::tail(&util::read_from(&log_path, log_offset), 20)
                );
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    /// Whether the last start failed because the port was taken in the meantime.
    fn lost_port_race(&self, log_offset: u64) -> bool {
        let log = util::read_from(&self.log_path(), log_offset);
        log.contains("could not bind") || log.contains("Address already in use")
    }

    /// Stops the postmaster if it runs and reaps it. Idempotent.
    /// Restart the server on the same port with its data: a fast shutdown (every client
    /// connection is cut, open transactions roll back, everything committed is written out),
    /// then a new postmaster. Returns once it accepts connections again.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop_with("fast");
        let log_offset = util::file_len(&self.log_path());
        self.spawn_and_wait(log_offset)
            .with_context(|| format!("restarting PostgreSQL on port {}", self.port))
    }

    fn stop(&mut self) {
        self.stop_with("immediate");
    }

    /// Stop the postmaster with `pg_ctl stop -m <mode>` (killing it if that fails).
    fn stop_with(&mut self, mode: &str) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(None)) {
            let stopped = self
                .command("pg_ctl")
                .arg("stop")
                .arg("-D")
                .arg(self.data_dir())
                .args(["-m", mode, "-w", "-t", "10"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !stopped {
                // Errors mean it has already exited; waiting reaps it either way.
                let _ = child.kill();
            }
        }
        let _ = child.wait();
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for PostgresServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresServer")
            .field("port", &self.port)
            .field("pid", &self.pid())
            .field("bin", &self.bin)
            .field("dir", &self.dir.path())
            .finish()
    }
}

/// Whether `data/postmaster.pid` says that postmaster `pid` on `port` accepts connections
/// (line 8 of the file is the status, `ready` once connections are accepted).
fn postmaster_ready(data_dir: &Path, pid: u32, port: u16) -> bool {
    let Ok(text) = fs::read_to_string(data_dir.join("postmaster.pid")) else {
        return false;
    };
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    lines.first() == Some(&pid.to_string().as_str())
        && lines.get(3) == Some(&port.to_string().as_str())
        && lines.get(7) == Some(&"ready")
}

/// The directory holding `initdb`, `pg_ctl` and `postgres`.
fn find_bin_dir() -> anyhow::Result<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(initdb) = util::find_on_path("initdb") {
        // Resolve symlinks such as /usr/local/bin/initdb -> /usr/lib/postgresql/15/bin/initdb.
        if let Some(dir) = fs::canonicalize(&initdb)
            .ok()
            .and_then(|real| real.parent().map(Path::to_owned))
        {
            candidates.push(dir);
        }
        if let Some(dir) = initdb.parent() {
            candidates.push(dir.to_owned());
        }
    }
    if let Ok(entries) = fs::read_dir("/usr/lib/postgresql") {
        let mut versioned: Vec<(Vec<u32>, PathBuf)> = entries
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let version = name
                    .split('.')
                    .map(|part| part.parse().ok())
                    .collect::<Option<Vec<u32>>>()?;
                Some((version, entry.path().join("bin")))
            })
            .collect();
        versioned.sort_by(|a, b| b.0.cmp(&a.0));
        candidates.extend(versioned.into_iter().map(|(_, dir)| dir));
    }
    candidates
        .into_iter()
        .find(|dir| {
            ["initdb", "pg_ctl", "postgres"]
                .iter()
                .all(|b| util::is_executable(&dir.join(b)))
        })
        .ok_or_else(|| {
            anyhow!(
                "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH nor \
                 under /usr/lib/postgresql/*/bin; install the Debian package `postgresql` \
                 (apt-get install postgresql)"
            )
        })
}

/// `(uid, gid)` of the `postgres` OS user.
fn postgres_user() -> anyhow::Result<(u32, u32)> {
    let id = |flag: &str| -> anyhow::Result<u32> {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .stderr(Stdio::null())
            .output()
            .context("running `id`")?;
        if !out.status.success() {
            bail!(
                "running as root, but there is no `postgres` OS user to run PostgreSQL as \
                 (PostgreSQL refuses to run as root); install the Debian package `postgresql`, \
                 which creates it, or run the tests as a non-root user"
            );
        }
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .context("parsing the output of `id`")
    };
    Ok((id("-u")?, id("-g")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_stops_the_server_and_removes_its_dir() {
        let server = PostgresServer::start().unwrap();
        let dir = server.dir.path().to_owned();
        let pid = server.pid().unwrap();
        assert!(dir.join("data").join("PG_VERSION").exists());
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        drop(server);
        assert!(!dir.exists(), "{} still exists", dir.display());
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn finds_binaries() {
        let dir = find_bin_dir().unwrap();
        assert!(util::is_executable(&dir.join("postgres")));
    }
}
