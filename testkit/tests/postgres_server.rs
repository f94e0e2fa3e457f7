//! Throwaway PostgreSQL: start, then speak the wire protocol to it (no psql needed).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use testkit::PostgresServer;

/// Reads one backend message: (type byte, body).
fn read_message(stream: &mut TcpStream) -> io::Result<(u8, Vec<u8>)> {
    let mut header = [0u8; 5];
    stream.read_exact(&mut header)?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    let mut body = vec![0; len.saturating_sub(4)];
    stream.read_exact(&mut body)?;
    Ok((header[0], body))
}

/// Logs in as `postgres` (trust auth) and returns the text of `SELECT 40 + 2`.
fn select_42(port: u16) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;

    let params = b"user\0postgres\0database\0postgres\0\0";
    let mut startup = Vec::new();
    startup.extend_from_slice(&(8 + params.len() as u32).to_be_bytes());
    startup.extend_from_slice(&196_608u32.to_be_bytes()); // protocol 3.0
    startup.extend_from_slice(params);
    stream.write_all(&startup)?;

    let (kind, body) = read_message(&mut stream)?;
    ensure!(
        kind == b'R',
        "expected an authentication message, got {:?}",
        kind as char
    );
    ensure!(
        body == 0u32.to_be_bytes(),
        "expected AuthenticationOk (trust auth)"
    );
    loop {
        let (kind, body) = read_message(&mut stream)?;
        ensure!(kind != b'E', "{}", String::from_utf8_lossy(&body));
        if kind == b'Z' {
            break;
        }
    }

    let sql = b"SELECT 40 + 2\0";
    let mut query = vec![b'Q'];
    query.extend_from_slice(&(4 + sql.len() as u32).to_be_bytes());
    query.extend_from_slice(sql);
    stream.write_all(&query)?;

    let mut value = None;
    loop {
        let (kind, body) = read_message(&mut stream)?;
        match kind {
            b'E' => bail!("{}", String::from_utf8_lossy(&body)),
            b'D' => {
                // int16 column count, then int32 length and bytes of the first column
                ensure!(body.len() >= 6, "short DataRow");
                let len = u32::from_be_bytes([body[2], body[3], body[4], body[5]]) as usize;
                let bytes = body.get(6..6 + len).context("short DataRow")?;
                value = Some(String::from_utf8(bytes.to_vec())?);
            }
            b'Z' => break,
            _ => {}
        }
    }
    stream.write_all(&[b'X', 0, 0, 0, 4])?; // Terminate
    value.context("no DataRow")
}

#[test]
fn start_and_query() {
    let pg = PostgresServer::start().unwrap();
    let port = pg.port();
    assert_eq!(
        pg.url(),
        format!("postgres://postgres@127.0.0.1:{port}/postgres")
    );
    assert_eq!(select_42(port).unwrap(), "42");

    // pg_isready agrees, when the client tools are installed.
    if let Ok(status) = Command::new("pg_isready")
        .args(["-q", "-t", "5", "-d", &pg.url()])
        .status()
    {
        assert!(status.success(), "pg_isready: {status}");
    }

    let pid = pg.pid().unwrap();
    drop(pg);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn two_clusters_side_by_side() {
    let a = PostgresServer::start().unwrap();
    let b = PostgresServer::start().unwrap();
    assert_ne!(a.port(), b.port());
    assert_eq!(select_42(a.port()).unwrap(), "42");
    assert_eq!(select_42(b.port()).unwrap(), "42");
}
