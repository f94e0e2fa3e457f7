//! A throwaway Redis Cluster: several `redis-server` children joined by `redis-cli --cluster create`.

mod resp;

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail, ensure};

use crate::RedisServer;
use crate::util::{self, ScratchDir};

/// Number of hash slots in a Redis Cluster.
const SLOTS: u16 = 16384;
/// `redis-cli --cluster create` refuses fewer masters.
const MIN_MASTERS: usize = 3;
/// How long `redis-cli --cluster create` may take before it is killed.
const CREATE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`RedisCluster::start`] and [`RedisCluster::move_slot`] wait for every node to agree.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(15);
/// Pause between two looks at the nodes while waiting for them to agree.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How many cluster bus ports a node start tries when another process steals the port.
const BUS_PORT_ATTEMPTS: usize = 5;
/// Keys moved per `MIGRATE` in [`RedisCluster::move_slot`].
const MIGRATE_BATCH: &str = "100";
/// `MIGRATE` timeout in milliseconds.
const MIGRATE_TIMEOUT_MS: &str = "5000";

/// A throwaway Redis Cluster of masters only (no replicas), each a [`RedisServer`]
/// with `--cluster-enabled yes` on a free 127.0.0.1 port.
///
/// Every node keeps its `nodes.conf` in its own private temp dir and is killed (by its
/// own pid) on drop. Slots are spread evenly by `redis-cli --cluster create`;
/// [`RedisCluster::move_slot`] reshards one slot, keys included, to test clients
/// against `MOVED`/`ASK` redirections.
///
/// ```no_run
/// # fn main() -> anyhow::Result<()> {
/// let cluster = testkit::RedisCluster::start(3)?;
/// let seeds = cluster.urls(); // ["redis://127.0.0.1:PORT/", ...]
/// let slot = testkit::RedisCluster::slot_of("{order:42}.items");
/// let owner = cluster.node_for_slot(slot)?;
/// let other = cluster.ports().into_iter().find(|&p| p != owner).unwrap_or(owner);
/// cluster.move_slot(slot, other)?;
/// # let _ = seeds;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Start `masters` (at least 3) cluster-enabled redis-servers on free 127.0.0.1
    /// ports, join them with `redis-cli --cluster create ... --cluster-replicas 0`,
    /// and wait (timeout 15 s) until every node reports `cluster_state:ok`, all 16384
    /// slots assigned, exactly `masters` known and connected nodes, and the same slot map.
    ///
    /// Fails with a message naming the Debian package `redis-tools` when `redis-cli`
    /// is not on `PATH` (and `redis-server`, as [`RedisServer::start`] does), and
    /// with the tail of the `redis-cli` output when the join fails.
    pub fn start(masters: usize) -> anyhow::Result<RedisCluster> {
        ensure!(
            masters >= MIN_MASTERS,
            "a Redis Cluster needs at least {MIN_MASTERS} masters, {masters} asked"
        );
        // Before any server starts, so that a missing client fails fast.
        let cli = find_redis_cli()?;
        let nodes = (0..masters)
            .map(|_| start_node())
            .collect::<anyhow::Result<Vec<_>>>()?;
        let cluster = RedisCluster { nodes };
        create_cluster(&cli, &cluster.ports())?;
        cluster.wait_until_settled()?;
        Ok(cluster)
    }

    /// The connection URL of every node, `"redis://127.0.0.1:PORT/"` (a seed list
    /// for cluster clients).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The cluster as one URL in the `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,…/` form the
    /// services' `REDIS_URL` takes.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .ports()
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}/", hosts.join(","))
    }

    /// The TCP port of every node (127.0.0.1 only), in start order.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisServer::port).collect()
    }

    /// The port of the master currently serving `slot` (0..16384), as the first node
    /// sees it in `CLUSTER NODES`.
    pub fn node_for_slot(&self, slot: u16) -> anyhow::Result<u16> {
        ensure!(slot < SLOTS, "slot {slot} is out of range 0..{SLOTS}");
        let port = self
            .ports()
            .first()
            .copied()
            .context("the cluster has no node")?;
        owner_seen_by(port, slot)
    }

    /// Migrate `slot`, with its keys, to the master on `to_port`, the way `redis-cli
    /// --cluster reshard` does: `IMPORTING` on the target, `MIGRATING` on the source,
    /// `MIGRATE` of the keys in batches of 100, then `SETSLOT ... NODE` on the target,
    /// the source and the other masters. Returns once every node sees the slot on
    /// `to_port` (timeout 15 s). Moving a slot to its current owner does nothing.
    pub fn move_slot(&self, slot: u16, to_port: u16) -> anyhow::Result<()> {
        ensure!(
            self.ports().contains(&to_port),
            "no node of this cluster listens on port {to_port}"
        );
        let from_port = self.node_for_slot(slot)?;
        if from_port == to_port {
            return Ok(());
        }
        self.reshard(slot, from_port, to_port).with_context(|| {
            format!("moving slot {slot} from 127.0.0.1:{from_port} to 127.0.0.1:{to_port}")
        })
    }

    /// The hash slot of `key`: CRC16/XMODEM of its hash tag (the text between the
    /// first `{` and the next `}`, if not empty) or else of the whole key, modulo 16384.
    pub fn slot_of(key: &str) -> u16 {
        crc16(hash_tag(key.as_bytes())) % SLOTS
    }

    fn reshard(&self, slot: u16, from_port: u16, to_port: u16) -> anyhow::Result<()> {
        let from_id = my_id(from_port)?;
        let to_id = my_id(to_port)?;
        set_slot(to_port, slot, &["IMPORTING", &from_id])?;
        set_slot(from_port, slot, &["MIGRATING", &to_id])?;
        migrate_keys(slot, from_port, to_port)?;
        // Target first, so that it serves the slot before the source starts sending
        // clients there; the other masters would learn it by gossip, but telling
        // them directly saves waiting for it.
        let others = self
            .ports()
            .into_iter()
            .filter(|&p| p != from_port && p != to_port);
        for port in [to_port, from_port].into_iter().chain(others) {
            set_slot(port, slot, &["NODE", &to_id])?;
        }
        self.wait_until_slot_on(slot, to_port)
    }

    /// Waits until every node sees a healthy cluster of all our nodes and they
    /// all report the same slot map.
    fn wait_until_settled(&self) -> anyhow::Result<()> {
        let ports = self.ports();
        wait_for("the cluster to settle", || {
            let maps = ports
                .iter()
                .map(|&port| settled_view(port, ports.len()))
                .collect::<anyhow::Result<Vec<_>>>()?;
            ensure!(
                maps.windows(2).all(|w| w[0] == w[1]),
                "the nodes disagree on the slot map: {maps:?}"
            );
            Ok(())
        })
    }

    fn wait_until_slot_on(&self, slot: u16, to_port: u16) -> anyhow::Result<()> {
        let ports = self.ports();
        wait_for("every node to see the new owner", || {
            for &port in &ports {
                let owner = owner_seen_by(port, slot)?;
                ensure!(
                    owner == to_port,
                    "127.0.0.1:{port} still sees slot {slot} on {owner}"
                );
            }
            Ok(())
        })
    }
}

/// The path of `redis-cli`, or an error naming the Debian package that has it.
fn find_redis_cli() -> anyhow::Result<PathBuf> {
    util::find_on_path("redis-cli").ok_or_else(|| {
        anyhow!(
            "`redis-cli` not found on PATH; install the Debian package `redis-tools` \
             (apt-get install redis-tools)"
        )
    })
}

/// Starts one cluster-enabled node. Its cluster bus needs a port too: the default
/// (port + 10000) may be taken or beyond 65535, so a free one is passed.
fn start_node() -> anyhow::Result<RedisServer> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let bus_port = crate::free_port()?.to_string();
        let args = [
            "--cluster-enabled",
            "yes",
            // Relative to the server's own temp dir (its `--dir` and working dir).
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
            "--cluster-port",
            &bus_port,
        ];
        match RedisServer::start_with_args(&args) {
            Ok(server) => return Ok(server),
            // Another process bound the bus port between `free_port` and the server.
            Err(e)
                if attempt < BUS_PORT_ATTEMPTS
                    && format!("{e:#}").contains("Address already in use") => {}
            Err(e) => return Err(e).context("starting a Redis Cluster node"),
        }
    }
}

/// Runs `redis-cli --cluster create` over `ports`, output to a log quoted on failure.
fn create_cluster(cli: &Path, ports: &[u16]) -> anyhow::Result<()> {
    let dir = ScratchDir::new("redis-cluster")?;
    let log_path = dir.path().join("cluster-create.log");
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut child = Command::new(cli)
        .args(["--cluster", "create"])
        .args(ports.iter().map(|p| format!("127.0.0.1:{p}")))
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("duplicating the log file handle")?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("spawning {}", cli.display()))?;
    let deadline = Instant::now() + CREATE_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for redis-cli")? {
            break status;
        }
        if Instant::now() >= deadline {
            // By its own pid; errors mean it has just exited.
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "`redis-cli --cluster create` did not finish within {CREATE_TIMEOUT:?}; output:\n{}",
                util::tail(&util::read_from(&log_path, 0), 20)
            );
        }
        thread::sleep(POLL_INTERVAL);
    };
    ensure!(
        status.success(),
        "`redis-cli --cluster create` failed ({status}); output:\n{}",
        util::tail(&util::read_from(&log_path, 0), 20)
    );
    Ok(())
}

/// Calls `check` every [`POLL_INTERVAL`] until it succeeds, or fails with its last
/// error after [`SETTLE_TIMEOUT`].
fn wait_for(what: &str, mut check: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<()> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        match check() {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("waiting {SETTLE_TIMEOUT:?} for {what}")));
            }
            Err(_) => thread::sleep(POLL_INTERVAL),
        }
    }
}

/// The slot map `port` reports, or an error saying why that node is not settled
/// yet: state not ok, slots unassigned, or not exactly `masters` healthy nodes known.
fn settled_view(port: u16, masters: usize) -> anyhow::Result<Vec<SlotRange>> {
    let info = resp::call_str(port, &["CLUSTER", "INFO"])?.into_text()?;
    let field = |name: &str| info_field(&info, name).unwrap_or("?");
    let expected = [
        ("cluster_state", "ok".to_owned()),
        ("cluster_slots_assigned", SLOTS.to_string()),
        ("cluster_known_nodes", masters.to_string()),
    ];
    for (name, want) in expected {
        ensure!(
            field(name) == want,
            "127.0.0.1:{port} reports {name}:{} (want {want})",
            field(name)
        );
    }
    let nodes = cluster_nodes(port)?;
    if let Some(bad) = nodes.iter().find(|n| !n.is_healthy()) {
        bail!("127.0.0.1:{port} sees node {bad:?} as not (yet) healthy");
    }
    Ok(slot_map(&nodes))
}

/// The value of `name` in a `CLUSTER INFO` reply.
fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        line.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::trim)
    })
}

/// The port of the master serving `slot` according to the node on `port`.
fn owner_seen_by(port: u16, slot: u16) -> anyhow::Result<u16> {
    cluster_nodes(port)?
        .iter()
        .find(|n| n.is_master() && n.slots.iter().any(|r| r.contains(slot)))
        .map(|n| n.port)
        .with_context(|| format!("127.0.0.1:{port} knows no master serving slot {slot}"))
}

fn cluster_nodes(port: u16) -> anyhow::Result<Vec<NodeLine>> {
    let text = resp::call_str(port, &["CLUSTER", "NODES"])?.into_text()?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(NodeLine::parse)
        .collect::<anyhow::Result<_>>()
        .with_context(|| format!("parsing CLUSTER NODES of 127.0.0.1:{port}"))
}

fn my_id(port: u16) -> anyhow::Result<String> {
    resp::call_str(port, &["CLUSTER", "MYID"])?.into_text()
}

/// `CLUSTER SETSLOT <slot> <rest...>` on `port`.
fn set_slot(port: u16, slot: u16, rest: &[&str]) -> anyhow::Result<()> {
    let slot = slot.to_string();
    let mut args = vec!["CLUSTER", "SETSLOT", &slot];
    args.extend_from_slice(rest);
    resp::call_str(port, &args)?;
    Ok(())
}

/// Moves every key of `slot` from `from_port` to `to_port`, a batch at a time,
/// until the source has none left.
fn migrate_keys(slot: u16, from_port: u16, to_port: u16) -> anyhow::Result<()> {
    let slot = slot.to_string();
    let to_port = to_port.to_string();
    loop {
        let keys = resp::call_str(
            from_port,
            &["CLUSTER", "GETKEYSINSLOT", &slot, MIGRATE_BATCH],
        )?
        .into_bulks()?;
        if keys.is_empty() {
            return Ok(());
        }
        // Empty key and db 0: the multi-key form; a cluster has only db 0.
        let mut args: Vec<&[u8]> = vec![
            b"MIGRATE",
            b"127.0.0.1",
            to_port.as_bytes(),
            b"",
            b"0",
            MIGRATE_TIMEOUT_MS.as_bytes(),
            b"KEYS",
        ];
        args.extend(keys.iter().map(Vec::as_slice));
        resp::call(from_port, &args)?;
    }
}

/// An inclusive range of slots served by the master on `port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct SlotRange {
    start: u16,
    end: u16,
    port: u16,
}

impl SlotRange {
    fn contains(&self, slot: u16) -> bool {
        (self.start..=self.end).contains(&slot)
    }
}

/// Every master's slot ranges, sorted: two nodes agree when their maps are equal.
fn slot_map(nodes: &[NodeLine]) -> Vec<SlotRange> {
    let mut map: Vec<SlotRange> = nodes
        .iter()
        .filter(|n| n.is_master())
        .flat_map(|n| n.slots.iter().copied())
        .collect();
    map.sort_unstable();
    map
}

/// One line of `CLUSTER NODES`:
/// `<id> <ip:port@cport> <flags> <master> <ping> <pong> <epoch> <link-state> <slot>...`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NodeLine {
    port: u16,
    flags: Vec<String>,
    connected: bool,
    slots: Vec<SlotRange>,
}

impl NodeLine {
    fn parse(line: &str) -> anyhow::Result<NodeLine> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [
            _id,
            addr,
            flags,
            _master,
            _ping,
            _pong,
            _epoch,
            link,
            slots @ ..,
        ] = &fields[..]
        else {
            bail!("too few fields in {line:?}");
        };
        let port = parse_port(addr).with_context(|| format!("bad address in {line:?}"))?;
        let slots = slots
            .iter()
            // `[slot->-id]` / `[slot-<-id]` mark a migration in progress, not ownership.
            .filter(|s| !s.starts_with('['))
            .map(|s| parse_slots(s, port))
            .collect::<anyhow::Result<_>>()
            .with_context(|| format!("bad slots in {line:?}"))?;
        Ok(NodeLine {
            port,
            flags: flags.split(',').map(str::to_owned).collect(),
            connected: *link == "connected",
            slots,
        })
    }

    fn is_master(&self) -> bool {
        self.flags.iter().any(|f| f == "master")
    }

    /// Connected and not in handshake, failing or address-less.
    fn is_healthy(&self) -> bool {
        self.connected
            && !self
                .flags
                .iter()
                .any(|f| matches!(f.as_str(), "handshake" | "fail" | "fail?" | "noaddr"))
    }
}

/// The port in `ip:port@cport[,hostname]`.
fn parse_port(addr: &str) -> anyhow::Result<u16> {
    let host_port = addr.split('@').next().unwrap_or(addr);
    let (_, port) = host_port
        .rsplit_once(':')
        .context("no ':' in the address")?;
    port.parse().with_context(|| format!("bad port {port:?}"))
}

/// A `start-end` or single `slot` entry of `CLUSTER NODES`.
fn parse_slots(entry: &str, port: u16) -> anyhow::Result<SlotRange> {
    let (start, end) = entry.split_once('-').unwrap_or((entry, entry));
    let start = start
        .parse()
        .with_context(|| format!("bad slot {entry:?}"))?;
    let end = end.parse().with_context(|| format!("bad slot {entry:?}"))?;
    Ok(SlotRange { start, end, port })
}

/// The part of `key` that is hashed: the bytes between the first `{` and the next
/// `}` when there are any, else the whole key (Redis Cluster spec, "hash tags").
fn hash_tag(key: &[u8]) -> &[u8] {
    let Some(open) = key.iter().position(|&b| b == b'{') else {
        return key;
    };
    let after = key.get(open + 1..).unwrap_or_default();
    match after.iter().position(|&b| b == b'}') {
        Some(len) if len > 0 => after.get(..len).unwrap_or(key),
        _ => key,
    }
}

/// CRC16/XMODEM (CCITT polynomial 0x1021, initial value 0, no reflection), the
/// checksum Redis Cluster hashes keys with.
fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 == 0 {
                crc << 1
            } else {
                (crc << 1) ^ 0x1021
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_matches_the_xmodem_check_value() {
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(crc16(b""), 0);
    }

    #[test]
    fn slot_of_known_keys() {
        assert_eq!(RedisCluster::slot_of("foo"), 12182);
        assert_eq!(RedisCluster::slot_of("123456789"), 12739);
        assert_eq!(
            RedisCluster::slot_of("{user1000}.following"),
            RedisCluster::slot_of("{user1000}.followers")
        );
        assert_eq!(
            RedisCluster::slot_of("{user1000}.following"),
            RedisCluster::slot_of("user1000")
        );
    }

    #[test]
    fn hash_tag_rules_of_the_cluster_spec() {
        assert_eq!(hash_tag(b"foo{bar}{zap}"), b"bar");
        assert_eq!(hash_tag(b"foo{{bar}}zap"), b"{bar");
        // An empty tag, or none closed, hashes the whole key.
        assert_eq!(hash_tag(b"foo{}{bar}"), b"foo{}{bar}");
        assert_eq!(hash_tag(b"{}"), b"{}");
        assert_eq!(hash_tag(b"foo{bar"), b"foo{bar");
        assert_eq!(hash_tag(b"}{x}"), b"x");
    }

    #[test]
    fn parses_cluster_nodes_lines() {
        let me = "07c37dfe 127.0.0.1:30004@31004,host myself,master - 0 0 1 connected \
                  0-5460 7000 [5461->-e7d1eecc] [5462-<-292f8b36]";
        let node = NodeLine::parse(me).unwrap();
        assert_eq!(node.port, 30004);
        assert!(node.is_master() && node.is_healthy());
        let range = |start, end| SlotRange {
            start,
            end,
            port: 30004,
        };
        assert_eq!(node.slots, vec![range(0, 5460), range(7000, 7000)]);
        assert!(node.slots[0].contains(5460) && !node.slots[0].contains(5461));

        let shaking = "6ec2 127.0.0.1:30005@31005 master,handshake - 0 0 0 disconnected";
        assert!(!NodeLine::parse(shaking).unwrap().is_healthy());
        assert!(NodeLine::parse("too few fields").is_err());
        assert!(NodeLine::parse("a :x@1 master - 0 0 0 connected 1-2").is_err());
    }

    #[test]
    fn reads_cluster_info_fields() {
        let info = "cluster_state:ok\r\ncluster_slots_assigned:16384\r\ncluster_known_nodes:3\r\n";
        assert_eq!(info_field(info, "cluster_state"), Some("ok"));
        assert_eq!(info_field(info, "cluster_known_nodes"), Some("3"));
        assert_eq!(info_field(info, "cluster_slots"), None);
    }

    #[test]
    fn start_rejects_fewer_than_three_masters() {
        let err = RedisCluster::start(2).unwrap_err();
        assert!(format!("{err:#}").contains("at least 3"), "{err:#}");
    }
}
