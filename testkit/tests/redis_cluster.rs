//! Throwaway Redis Cluster: start, hash slots, write through redirections, reshard one slot.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use testkit::RedisCluster;

/// Sends one inline command to one node (no redirection following) and returns the
/// first reply line without CRLF, or the body of a bulk string.
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

/// `redis-cli -c` (follows `MOVED`) against `port`; returns its trimmed stdout.
fn cli_following_redirects(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-c", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running redis-cli");
    assert!(out.status.success(), "redis-cli failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn cluster_forms_and_moves_a_slot_with_its_key() {
    let cluster = RedisCluster::start(3).unwrap();
    let ports = cluster.ports();
    assert_eq!(ports.len(), 3);
    assert_eq!(
        cluster.urls(),
        ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}/"))
            .collect::<Vec<_>>()
    );
    for &port in &ports {
        let info = command(port, "CLUSTER INFO").unwrap();
        assert!(info.contains("cluster_state:ok"), "{port}: {info}");
        assert!(
            info.contains("cluster_slots_assigned:16384"),
            "{port}: {info}"
        );
    }

    // Our hash agrees with the server's.
    for key in ["foo", "flash:stock:42", "{user1000}.following", "a{}b"] {
        let slot = RedisCluster::slot_of(key);
        assert_eq!(
            command(ports[0], &format!("CLUSTER KEYSLOT {key}")).unwrap(),
            format!(":{slot}"),
            "{key}"
        );
    }

    let key = "flash:stock:42";
    let slot = RedisCluster::slot_of(key);
    let owner = cluster.node_for_slot(slot).unwrap();
    // Written through whichever node redis-cli lands on first.
    let entry = *ports.iter().find(|&&p| p != owner).unwrap();
    assert_eq!(cli_following_redirects(entry, &["SET", key, "7"]), "OK");
    assert_eq!(command(owner, &format!("GET {key}")).unwrap(), "7");

    let target = *ports.iter().find(|&&p| p != owner).unwrap();
    cluster.move_slot(slot, target).unwrap();

    assert_eq!(cluster.node_for_slot(slot).unwrap(), target);
    assert_eq!(command(target, &format!("GET {key}")).unwrap(), "7");
    let moved = command(owner, &format!("GET {key}")).unwrap();
    assert_eq!(moved, format!("-MOVED {slot} 127.0.0.1:{target}"));
    assert_eq!(cli_following_redirects(owner, &["GET", key]), "7");
    // Moving to the current owner is a no-op.
    cluster.move_slot(slot, target).unwrap();
    assert!(cluster.move_slot(slot, 1).is_err(), "port 1 is no node");
    assert!(cluster.node_for_slot(16384).is_err());

    drop(cluster);
    for port in ports {
        assert!(command(port, "PING").is_err(), "port {port} still answers");
    }
}

#[test]
fn tagged_names_spread_over_all_masters() {
    let cluster = RedisCluster::start(3).unwrap();
    let owners: BTreeSet<u16> = (0..16)
        .map(|i| {
            let slot = RedisCluster::slot_of(&format!("{{s:{i}}}"));
            cluster.node_for_slot(slot).unwrap()
        })
        .collect();
    assert_eq!(owners, cluster.ports().into_iter().collect());
}
