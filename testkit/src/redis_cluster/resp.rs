//! Just enough of a RESP2 client to administer the cluster's nodes: one command per
//! connection, binary-safe arguments, replies parsed into a tree.
//!
//! `redis-cli` in a pipe prints error replies like ordinary strings and exits 0, so it
//! cannot tell `ERR ...` from a key named `ERR ...`; this can, without a dependency.

use std::io::{BufRead, BufReader, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context as _, bail};

/// How long to wait for a connection to a node on loopback.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long to wait for a reply; above the 5 s `MIGRATE` timeout used by the cluster.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A parsed RESP2 reply (error replies become `Err` in [`call`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    /// `+OK` and the like.
    Status(String),
    /// `:n`.
    Int(i64),
    /// `$n` bulk string; `None` for the null bulk string `$-1`.
    Bulk(Option<Vec<u8>>),
    /// `*n` array; `None` for the null array `*-1`.
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The reply as text: a status or a (non-null) bulk string.
    pub(crate) fn into_text(self) -> anyhow::Result<String> {
        match self {
            Reply::Status(s) => Ok(s),
            Reply::Bulk(Some(b)) => Ok(String::from_utf8_lossy(&b).into_owned()),
            other => bail!("expected a string reply, got {other:?}"),
        }
    }

    /// The reply as a list of bulk strings (e.g. `CLUSTER GETKEYSINSLOT`).
    pub(crate) fn into_bulks(self) -> anyhow::Result<Vec<Vec<u8>>> {
        let Reply::Array(items) = self else {
            bail!("expected an array reply, got {self:?}");
        };
        items
            .unwrap_or_default()
            .into_iter()
            .map(|item| match item {
                Reply::Bulk(Some(b)) => Ok(b),
                other => bail!("expected a bulk string in the array, got {other:?}"),
            })
            .collect()
    }
}

/// Sends one command to `127.0.0.1:port` and reads its reply. An error reply
/// (`-ERR ...`, `-MOVED ...`) is returned as `Err` carrying the server's message.
pub(crate) fn call(port: u16, args: &[&[u8]]) -> anyhow::Result<Reply> {
    let name = args
        .first()
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .unwrap_or_default();
    exchange(port, args).with_context(|| format!("{name} on 127.0.0.1:{port}"))
}

/// [`call`] with text arguments.
pub(crate) fn call_str(port: u16, args: &[&str]) -> anyhow::Result<Reply> {
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    call(port, &args)
}

fn exchange(port: u16, args: &[&[u8]]) -> anyhow::Result<Reply> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).context("connecting")?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream
        .write_all(&encode(args))
        .context("sending the command")?;
    read_reply(&mut BufReader::new(stream))
}

/// The command as a RESP array of bulk strings.
fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reads one reply; a server error reply becomes `Err`.
fn read_reply(reader: &mut impl BufRead) -> anyhow::Result<Reply> {
    let mut line = String::new();
    reader.read_line(&mut line).context("reading a reply")?;
    let Some(line) = line.strip_suffix("\r\n") else {
        bail!("connection closed or malformed reply line {line:?}");
    };
    let (kind, rest) = line.split_at_checked(1).unwrap_or(("", ""));
    match kind {
        "+" => Ok(Reply::Status(rest.to_owned())),
        "-" => bail!("server replied: {rest}"),
        ":" => Ok(Reply::Int(parse_len(rest)?)),
        "$" => read_bulk(reader, parse_len(rest)?),
        "*" => read_array(reader, parse_len(rest)?),
        _ => bail!("unexpected reply line {line:?}"),
    }
}

fn parse_len(text: &str) -> anyhow::Result<i64> {
    text.parse()
        .with_context(|| format!("bad number {text:?} in a reply"))
}

fn read_bulk(reader: &mut impl BufRead, len: i64) -> anyhow::Result<Reply> {
    let Ok(len) = usize::try_from(len) else {
        return Ok(Reply::Bulk(None));
    };
    let mut body = vec![0; len + 2];
    reader
        .read_exact(&mut body)
        .context("reading a bulk string")?;
    body.truncate(len);
    Ok(Reply::Bulk(Some(body)))
}

fn read_array(reader: &mut impl BufRead, len: i64) -> anyhow::Result<Reply> {
    let Ok(len) = usize::try_from(len) else {
        return Ok(Reply::Array(None));
    };
    let items = (0..len)
        .map(|_| read_reply(reader))
        .collect::<anyhow::Result<_>>()?;
    Ok(Reply::Array(Some(items)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> anyhow::Result<Reply> {
        read_reply(&mut BufReader::new(bytes))
    }

    #[test]
    fn encodes_binary_safe_arrays() {
        assert_eq!(
            encode(&[&b"SET"[..], b"k\r\n", b""]),
            b"*3\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$0\r\n\r\n"
        );
    }

    #[test]
    fn parses_every_reply_kind() {
        assert_eq!(parse(b"+OK\r\n").unwrap(), Reply::Status("OK".into()));
        assert_eq!(parse(b":-7\r\n").unwrap(), Reply::Int(-7));
        assert_eq!(parse(b"$-1\r\n").unwrap(), Reply::Bulk(None));
        assert_eq!(parse(b"*-1\r\n").unwrap(), Reply::Array(None));
        assert_eq!(
            parse(b"*2\r\n$4\r\na\r\nb\r\n*1\r\n:1\r\n").unwrap(),
            Reply::Array(Some(vec![
                Reply::Bulk(Some(b"a\r\nb".to_vec())),
                Reply::Array(Some(vec![Reply::Int(1)])),
            ]))
        );
    }

    #[test]
    fn error_replies_and_truncation_are_errors() {
        let err = parse(b"-MOVED 3999 127.0.0.1:7001\r\n").unwrap_err();
        assert!(format!("{err:#}").contains("MOVED 3999"), "{err:#}");
        assert!(parse(b"$5\r\nab").is_err());
        assert!(parse(b"").is_err());
        assert!(parse(b"?x\r\n").is_err());
    }

    #[test]
    fn reply_conversions() {
        assert_eq!(Reply::Status("ok".into()).into_text().unwrap(), "ok");
        assert!(Reply::Int(1).into_text().is_err());
        let keys = Reply::Array(Some(vec![Reply::Bulk(Some(b"k".to_vec()))]));
        assert_eq!(keys.into_bulks().unwrap(), vec![b"k".to_vec()]);
        assert_eq!(
            Reply::Array(None).into_bulks().unwrap(),
            Vec::<Vec<u8>>::new()
        );
    }
}
