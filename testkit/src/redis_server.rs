//! A throwaway `redis-server` child process.

use std::fs::OpenOptions;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};

use crate::util::{self, ScratchDir};

/// How long [`RedisServer::start`] and [`RedisServer::restart`] wait for the server to answer.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How many free ports [`RedisServer::start`] tries when another process steals the port.
const PORT_ATTEMPTS: usize = 5;

/// A throwaway redis-server child process on a free loopback port.
///
/// It runs without persistence (`--save "" --appendonly no`), binds 127.0.0.1
/// only and writes its log to a file in a private temp dir (quoted in startup
/// errors). It is killed (by its own pid) on drop, and the temp dir is removed.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    args: Vec<String>,
    exe: PathBuf,
    log: PathBuf,
    dir: ScratchDir,
}

impl RedisServer {
    /// Start a fresh redis-server (no persistence: `--save "" --appendonly no`) on a
    /// free 127.0.0.1 port and wait until it answers (timeout 10 s).
    ///
    /// Fails with a message naming the Debian package `redis-server` when
    /// `redis-server` is not on `PATH`, and with the tail of the server log when it
    /// does not come up.
    pub fn start() -> anyhow::Result<RedisServer> {
        Self::start_with_args(&[])
    }

    /// Same as [`RedisServer::start`], with extra command-line arguments appended
    /// (e.g. `["--replicaof", "127.0.0.1", "7000"]`). Do not pass `--port`,
    /// `--bind` or `--dir`: they are managed here.
    pub fn start_with_args(args: &[&str]) -> anyhow::Result<RedisServer> {
        let exe = util::find_on_path("redis-server").ok_or_else(|| {
            anyhow!(
                "`redis-server` not found on PATH; install the Debian package `redis-server` \
                 (apt-get install redis-server)"
            )
        })?;
        let dir = ScratchDir::new("redis")?;
        let log = dir.path().join("redis-server.log");
        let mut server = RedisServer {
            child: None,
            port: 0,
            args: args.iter().map(|&a| a.to_owned()).collect(),
            exe,
            log,
            dir,
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            server.port = crate::free_port()?;
            let log_offset = util::file_len(&server.log);
            match server.spawn_and_wait() {
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

    /// The connection URL, `"redis://127.0.0.1:PORT/"`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The pid of the server process, or `None` when it is not running (killed or
    /// never restarted).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL the process and wait for it (simulates a crash). Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Errors mean it has already exited; waiting reaps it either way.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start again on the same port with the same arguments and wait until it
    /// answers. The data set is empty (no persistence). Kills the running process
    /// first if there is one.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn_and_wait()
            .with_context(|| format!("restarting redis-server on port {}", self.port))
    }

    /// Whether the server process is still alive (it may have exited on its own,
    /// e.g. after `SHUTDOWN`).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(Ok(Some(_)) | Err(_)) => {
                self.kill();
                false
            }
            None => false,
        }
    }

    fn spawn_and_wait(&mut self) -> anyhow::Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let log_offset = util::file_len(&self.log);
        let child = Command::new(&self.exe)
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the log file handle")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {}", self.exe.display()))?;
        let pid = child.id();
        self.child = Some(child);

        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if !self.is_running() {
                bail!(
                    "redis-server (pid {pid}, port {}) exited during startup; log:\n{}",
                    self.port,
                    self.log_tail(log_offset)
                );
            }
            match probe(self.port) {
                Probe::Pid(p) if p == pid => return Ok(()),
                // Answers but refuses INFO (e.g. `--requirepass` in the extra args):
                // it is ours if our process is still alive a moment later.
                Probe::Refused => {
                    thread::sleep(Duration::from_millis(50));
                    if self.is_running() {
                        return Ok(());
                    }
                }
                Probe::Pid(_) | Probe::NoAnswer => {}
            }
            if Instant::now() >= deadline {
                self.kill();
                bail!(
                    "redis-server (pid {pid}) did not answer on 127.0.0.1:{} within {:?}; log:\n{}",
                    self.port,
                    STARTUP_TIMEOUT,
                    self.log_tail(log_offset)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the last start failed because the port was taken in the meantime.
    fn lost_port_race(&self, log_offset: u64) -> bool {
        util::read_from(&self.log, log_offset).contains("Address already in use")
    }

    fn log_tail(&self, offset: u64) -> String {
        util::tail(&util::read_from(&self.log, offset), 20)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

impl std::fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisServer")
            .field("port", &self.port)
            .field("pid", &self.pid())
            .field("args", &self.args)
            .field("dir", &self.dir.path())
            .finish()
    }
}

/// What a quick `INFO server` on a port tells.
enum Probe {
    /// A Redis answered, with this `process_id`.
    Pid(u32),
    /// Something answered with an error (e.g. `-NOAUTH`).
    Refused,
    /// Nothing (usable) answered.
    NoAnswer,
}

/// Asks `127.0.0.1:port` for `INFO server` to learn the pid of the answering
/// redis-server, so that a foreign server that grabbed the port is not mistaken
/// for ours.
fn probe(port: u16) -> Probe {
    fn ask(port: u16) -> std::io::Result<Probe> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(250))?;
        stream.set_read_timeout(Some(Duration::from_secs(1)))?;
        stream.set_write_timeout(Some(Duration::from_secs(1)))?;
        stream.write_all(b"INFO server\r\n")?;
        let mut reader = BufReader::new(stream);
        let mut header = String::new();
        reader.read_line(&mut header)?;
        if header.starts_with('-') {
            return Ok(Probe::Refused);
        }
        let Some(len) = header
            .strip_prefix('$')
            .and_then(|n| n.trim_end().parse::<usize>().ok())
        else {
            return Ok(Probe::NoAnswer);
        };
        let mut body = vec![0; len];
        reader.read_exact(&mut body)?;
        let body = String::from_utf8_lossy(&body);
        Ok(body
            .lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .and_then(|p| p.trim().parse().ok())
            .map_or(Probe::NoAnswer, Probe::Pid))
    }
    ask(port).unwrap_or(Probe::NoAnswer)
}
