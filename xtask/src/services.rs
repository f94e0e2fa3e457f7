//! Finding (or starting) the Redis and PostgreSQL the tests run against.

use std::net::{TcpStream, ToSocketAddrs as _};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use anyhow::bail;
use testkit::{PostgresServer, RedisServer};

/// Redis a developer usually runs locally.
const LOCAL_REDIS: &str = "redis://127.0.0.1:6379/";
/// PostgreSQL a developer usually runs locally.
const LOCAL_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// How long a liveness probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The Redis and PostgreSQL for one test run. Throwaway servers started here are
/// stopped when this is dropped.
pub struct Services {
    /// URL exported to the tests as `REDIS_URL`.
    pub redis_url: String,
    /// URL exported to the tests as `DATABASE_URL`.
    pub database_url: String,
    redis_server: Option<RedisServer>,
    postgres_server: Option<PostgresServer>,
}

impl Services {
    /// The throwaway redis-server this run started, if it started one (the chaos suite
    /// restarts it).
    pub fn redis_server_mut(&mut self) -> Option<&mut RedisServer> {
        self.redis_server.as_mut()
    }

    /// The throwaway PostgreSQL this run started, if it started one (the chaos suite
    /// restarts it).
    pub fn postgres_server_mut(&mut self) -> Option<&mut PostgresServer> {
        self.postgres_server.as_mut()
    }

    /// Picks Redis and PostgreSQL, in this order: `$REDIS_URL` / `$DATABASE_URL`
    /// when set and answering, the usual local port when it answers, else a
    /// throwaway server. With `throwaway`, always starts throwaway servers.
    /// Prints one line per service once both are settled; fails with one message
    /// naming the Debian packages to install when a service can be neither found
    /// nor started.
    pub fn acquire(throwaway: bool) -> anyhow::Result<Self> {
        let mut problems = Vec::new();
        let mut packages = Vec::new();
        let mut report = Vec::new();

        let redis = pick(
            "redis",
            "REDIS_URL",
            LOCAL_REDIS,
            throwaway,
            redis_answers,
            RedisServer::start,
            |s| (s.url(), s.pid()),
        );
        let postgres = pick(
            "postgres",
            "DATABASE_URL",
            LOCAL_POSTGRES,
            throwaway,
            postgres_answers,
            PostgresServer::start,
            |s| (s.url(), s.pid()),
        );
        let (redis_url, redis_server) = match redis {
            Ok((url, server, lines)) => {
                report.extend(lines);
                (url, server)
            }
            Err(problem) => {
                problems.push(format!("Redis: {problem}"));
                packages.push("redis-server");
                (String::new(), None)
            }
        };
        let (database_url, postgres_server) = match postgres {
            Ok((url, server, lines)) => {
                report.extend(lines);
                (url, server)
            }
            Err(problem) => {
                problems.push(format!("PostgreSQL: {problem}"));
                packages.push("postgresql");
                (String::new(), None)
            }
        };
        if !problems.is_empty() {
            let list = problems
                .iter()
                .map(|p| format!("  - {p}"))
                .collect::<Vec<_>>()
                .join("\n");
            let names = packages
                .iter()
                .map(|p| format!("`{p}`"))
                .collect::<Vec<_>>()
                .join(" and ");
            bail!(
                "the tests need a real Redis and PostgreSQL:\n{list}\n\
                 Install the Debian package{s} {names} (apt-get install {pkgs}), \
                 or point REDIS_URL / DATABASE_URL at running servers.",
                s = if packages.len() > 1 { "s" } else { "" },
                pkgs = packages.join(" "),
            );
        }
        for line in report {
            println!("{line}");
        }
        Ok(Self {
            redis_url,
            database_url,
            redis_server,
            postgres_server,
        })
    }

    /// Exports `REDIS_URL` and `DATABASE_URL` to `cmd`.
    pub fn export(&self, cmd: &mut Command) {
        cmd.env("REDIS_URL", &self.redis_url)
            .env("DATABASE_URL", &self.database_url);
    }

    /// Stops the throwaway servers (if any), saying so.
    pub fn shutdown(mut self) {
        if let Some(server) = self.redis_server.take() {
            let pid = server
                .pid()
                .map_or_else(|| "-".to_owned(), |p| p.to_string());
            drop(server);
            println!("redis:    stopped throwaway redis-server (pid {pid})");
        }
        if let Some(server) = self.postgres_server.take() {
            let pid = server
                .pid()
                .map_or_else(|| "-".to_owned(), |p| p.to_string());
            drop(server);
            println!("postgres: stopped throwaway PostgreSQL (pid {pid})");
        }
    }
}

/// Chooses one service. `Ok` has the URL, the throwaway server if one was started
/// and the lines to print; `Err` is a human-readable reason.
fn pick<S>(
    label: &str,
    env_var: &str,
    local_url: &str,
    throwaway: bool,
    answers: fn(&str) -> bool,
    start: fn() -> anyhow::Result<S>,
    describe: fn(&S) -> (String, Option<u32>),
) -> Result<(String, Option<S>, Vec<String>), String> {
    let head = format!("{label}:");
    let mut tried = Vec::new();
    let mut lines = Vec::new();
    if throwaway {
        tried.push("--throwaway given".to_owned());
    } else {
        match std::env::var(env_var) {
            Ok(url) if !url.trim().is_empty() => {
                if answers(&url) {
                    lines.push(format!("{head:<9} ${env_var} {}", redact(&url)));
                    return Ok((url, None, lines));
                }
                lines.push(format!(
                    "{head:<9} ${env_var} {} does not answer, ignoring it",
                    redact(&url)
                ));
                tried.push(format!("${env_var} ({}) does not answer", redact(&url)));
            }
            _ => tried.push(format!("${env_var} is not set")),
        }
        if answers(local_url) {
            lines.push(format!("{head:<9} local {local_url}"));
            return Ok((local_url.to_owned(), None, lines));
        }
        tried.push(format!("nothing answers at {local_url}"));
    }
    match start() {
        Ok(server) => {
            let (url, pid) = describe(&server);
            let pid = pid.map_or_else(|| "-".to_owned(), |p| p.to_string());
            lines.push(format!(
                "{head:<9} throwaway {url} (pid {pid}, stopped at the end)"
            ));
            Ok((url, Some(server), lines))
        }
        Err(e) => Err(format!(
            "{}, and starting a throwaway server failed: {e:#}",
            tried.join(", ")
        )),
    }
}

/// Runs `probe` on a helper thread, giving up after [`PROBE_TIMEOUT`] (plus slack)
/// so that a server that accepts connections but never replies cannot hang us.
fn bounded(probe: impl FnOnce() -> bool + Send + 'static) -> bool {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(probe());
    });
    rx.recv_timeout(PROBE_TIMEOUT + Duration::from_secs(1))
        .unwrap_or(false)
}

/// Whether the Redis at `url` answers `PING` (honours passwords and TLS-less URLs).
fn redis_answers(url: &str) -> bool {
    let url = url.to_owned();
    bounded(move || {
        let Ok(client) = redis::Client::open(url.as_str()) else {
            return false;
        };
        let Ok(mut con) = client.get_connection_with_timeout(PROBE_TIMEOUT) else {
            return false;
        };
        if con.set_read_timeout(Some(PROBE_TIMEOUT)).is_err() {
            return false;
        }
        redis::cmd("PING")
            .query::<String>(&mut con)
            .is_ok_and(|reply| reply == "PONG")
    })
}

/// Whether the PostgreSQL at `url` accepts connections: `pg_isready` when it is
/// installed, else a plain TCP connect to its host and port.
fn postgres_answers(url: &str) -> bool {
    let url = url.to_owned();
    bounded(move || {
        let timeout = PROBE_TIMEOUT.as_secs().to_string();
        match Command::new("pg_isready")
            .args(["-q", "-t", &timeout, "-d", &url])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
        {
            Ok(status) => status.success(),
            Err(_) => tcp_answers(&url),
        }
    })
}

fn tcp_answers(url: &str) -> bool {
    let Some((host, port)) = postgres_host_port(url) else {
        return false;
    };
    let Ok(addrs) = (host.as_str(), port).to_socket_addrs() else {
        return false;
    };
    addrs
        .into_iter()
        .any(|addr| TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).is_ok())
}

/// Host and port of a `postgres://` / `postgresql://` URL (default port 5432).
fn postgres_host_port(url: &str) -> Option<(String, u16)> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))?;
    let authority = rest.split(['/', '?']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']')?;
        (host, after.strip_prefix(':'))
    } else {
        match host_port.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => 5432,
    };
    Some((host.to_owned(), port))
}

/// `url` with the password (if any) replaced by `***`, for printing.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}{path}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_of_postgres_urls() {
        let hp = |u| postgres_host_port(u);
        assert_eq!(
            hp("postgres://postgres@127.0.0.1:5432/postgres"),
            Some(("127.0.0.1".into(), 5432))
        );
        assert_eq!(
            hp("postgresql://u:p@db.example/app?sslmode=disable"),
            Some(("db.example".into(), 5432))
        );
        assert_eq!(hp("postgres://[::1]:6000/x"), Some(("::1".into(), 6000)));
        assert_eq!(hp("postgres://h:notaport/x"), None);
        assert_eq!(hp("postgres:///db?host=/run/postgresql"), None);
        assert_eq!(hp("redis://127.0.0.1/"), None);
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("redis://:secret@10.0.0.1:6379/0"),
            "redis://:***@10.0.0.1:6379/0"
        );
        assert_eq!(
            redact("postgres://app:pw@db/app?x=1"),
            "postgres://app:***@db/app?x=1"
        );
        assert_eq!(
            redact("postgres://postgres@127.0.0.1:5432/postgres"),
            "postgres://postgres@127.0.0.1:5432/postgres"
        );
        assert_eq!(redact("redis://127.0.0.1:6379/"), "redis://127.0.0.1:6379/");
    }

    #[test]
    fn closed_ports_do_not_answer() {
        assert!(!redis_answers("redis://127.0.0.1:1/"));
        assert!(!postgres_answers(
            "postgres://postgres@127.0.0.1:1/postgres"
        ));
        assert!(!tcp_answers("postgres://postgres@127.0.0.1:1/postgres"));
    }

    #[test]
    fn falls_back_to_a_throwaway_server() {
        let (url, server, lines) = pick(
            "redis",
            "XTASK_TEST_VARIABLE_THAT_IS_NEVER_SET",
            "redis://127.0.0.1:1/",
            false,
            redis_answers,
            RedisServer::start,
            |s| (s.url(), s.pid()),
        )
        .unwrap();
        let server = server.unwrap();
        assert_eq!(url, server.url());
        assert!(redis_answers(&url));
        assert_eq!(lines.len(), 1);
        assert!(lines[0].contains("throwaway"), "{lines:?}");
    }

    #[test]
    fn throwaway_servers_answer() {
        let redis = RedisServer::start().unwrap();
        assert!(redis_answers(&redis.url()));
        let pg = PostgresServer::start().unwrap();
        assert!(postgres_answers(&pg.url()));
        assert!(tcp_answers(&pg.url()));
    }
}
