//! Throwaway redis-server: start, ping, crash, restart on the same port.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use testkit::RedisServer;

/// Sends one inline command and returns the first reply line (without CRLF).
fn command(port: u16, cmd: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(format!("{cmd}\r\n").as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if let Some(len) = line
        .strip_prefix('$')
        .and_then(|n| n.trim().parse::<usize>().ok())
    {
        let mut body = vec![0; len + 2];
        std::io::Read::read_exact(&mut reader, &mut body)?;
        return Ok(String::from_utf8_lossy(&body[..len]).into_owned());
    }
    Ok(line.trim_end().to_owned())
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn start_ping_kill_restart_same_port() {
    let mut redis = RedisServer::start().unwrap();
    let port = redis.port();
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{port}/"));
    assert!(redis.is_running());
    assert_eq!(command(port, "PING").unwrap(), "+PONG");
    assert_eq!(command(port, "SET k v").unwrap(), "+OK");
    assert_eq!(command(port, "GET k").unwrap(), "v");
    assert_eq!(command(port, "CONFIG GET save").unwrap(), "*2");
    let first_pid = redis.pid().unwrap();

    redis.kill();
    assert!(!redis.is_running());
    assert_eq!(redis.pid(), None);
    assert!(
        !alive(first_pid),
        "killed redis-server {first_pid} still exists"
    );
    assert!(command(port, "PING").is_err(), "port {port} still answers");
    redis.kill(); // idempotent

    redis.restart().unwrap();
    assert_eq!(redis.port(), port);
    assert!(redis.is_running());
    assert_eq!(command(port, "PING").unwrap(), "+PONG");
    // No persistence: the data set is gone.
    assert_eq!(command(port, "EXISTS k").unwrap(), ":0");

    // Restarting a running server replaces it.
    let second_pid = redis.pid().unwrap();
    redis.restart().unwrap();
    assert!(!alive(second_pid));
    assert_eq!(command(port, "PING").unwrap(), "+PONG");

    let last_pid = redis.pid().unwrap();
    drop(redis);
    assert!(
        !alive(last_pid),
        "dropped redis-server {last_pid} still exists"
    );
}

#[test]
fn servers_get_distinct_ports() {
    let a = RedisServer::start().unwrap();
    let b = RedisServer::start().unwrap();
    assert_ne!(a.port(), b.port());
    assert_eq!(command(a.port(), "PING").unwrap(), "+PONG");
    assert_eq!(command(b.port(), "PING").unwrap(), "+PONG");
}

#[test]
fn extra_args_reach_the_server() {
    let primary = RedisServer::start().unwrap();
    let primary_port = primary.port().to_string();
    let replica =
        RedisServer::start_with_args(&["--replicaof", "127.0.0.1", &primary_port]).unwrap();
    let mut stream = TcpStream::connect(("127.0.0.1", replica.port())).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(b"INFO replication\r\n").unwrap();
    let mut reader = BufReader::new(stream);
    let mut header = String::new();
    reader.read_line(&mut header).unwrap();
    let len: usize = header[1..].trim().parse().unwrap();
    let mut body = vec![0; len];
    std::io::Read::read_exact(&mut reader, &mut body).unwrap();
    let info = String::from_utf8(body).unwrap();
    assert!(info.contains("role:slave"), "{info}");
    assert!(
        info.contains(&format!("master_port:{primary_port}")),
        "{info}"
    );
}

#[test]
fn is_running_notices_a_shutdown() {
    let mut redis = RedisServer::start().unwrap();
    let port = redis.port();
    // SHUTDOWN closes the connection instead of replying.
    let _ = command(port, "SHUTDOWN NOSAVE");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while redis.is_running() {
        assert!(std::time::Instant::now() < deadline, "still running");
        std::thread::sleep(Duration::from_millis(20));
    }
    redis.restart().unwrap();
    assert_eq!(command(port, "PING").unwrap(), "+PONG");
}

#[test]
fn bad_args_fail_with_the_log() {
    let err = RedisServer::start_with_args(&["--no-such-option", "1"]).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("exited during startup"), "{msg}");
    assert!(msg.contains("no-such-option"), "{msg}");
}
