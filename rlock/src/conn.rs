//! The command connection of a [`crate::LockClient`]: one Redis server (a reconnecting
//! `ConnectionManager`) or a Redis Cluster (redis-rs's cluster client, which routes each
//! command and script by its first key and follows `MOVED`/`ASK`). Every key of one lock
//! carries the lock's hash tag, so each script and transaction stays in one slot.

use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

use crate::ReplicaSync;

pub use crate::rebuild::SingleConnection;

/// A connection to a single Redis or to a Redis Cluster; cheap to clone, usable with any
/// redis-rs command, script or pipeline.
#[derive(Clone)]
pub enum RedisConnection {
    /// One server, reconnecting (also after repeated response timeouts).
    Single(SingleConnection),
    /// A cluster, routing by key.
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisConnection::Single(_) => f.write_str("RedisConnection::Single"),
            RedisConnection::Cluster(_) => f.write_str("RedisConnection::Cluster"),
        }
    }
}

impl RedisConnection {
    /// Connect to `url` — one server, or a cluster in the forms [`RedisTarget::parse`]
    /// takes — with these reply and connect timeouts (a single server's connection is
    /// replaced after three response timeouts in a row, as the lock client's is).
    pub async fn open(url: &str, response: Duration, connect: Duration) -> RedisResult<Self> {
        let timeouts = Timeouts { response, connect };
        match RedisTarget::parse(url) {
            RedisTarget::Single(url) => {
                let client = redis::Client::open(url)?;
                let config = manager_config(response, connect);
                Ok(RedisConnection::Single(
                    SingleConnection::connect(client, config, 3).await?,
                ))
            }
            RedisTarget::Cluster(nodes) => Ok(RedisConnection::Cluster(
                cluster_connection(&nodes, timeouts, None).await?,
            )),
        }
    }

    /// Whether this is a cluster connection.
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConnection::Cluster(_))
    }

    /// Run `cmd` on the master that serves `key`'s slot (a single server runs it at once).
    /// For commands that name no key but concern one, such as `WAIT` after a write.
    pub async fn query_for_key<T: redis::FromRedisValue>(
        &mut self,
        cmd: &Cmd,
        key: &str,
    ) -> RedisResult<T> {
        match self {
            RedisConnection::Single(conn) => cmd.query_async(conn).await,
            RedisConnection::Cluster(conn) => {
                let route = Route::with_slot(Slot::for_key(key), SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                let value = conn.route_command(cmd.clone(), routing).await?;
                Ok(redis::from_redis_value(value)?)
            }
        }
    }

    /// `WAIT` on the master of `key`'s slot after a write of `key`: how many replicas
    /// acknowledged this connection's writes so far, waiting at most `sync.timeout` for
    /// `sync.replicas` of them.
    pub async fn wait_for_replicas(&mut self, key: &str, sync: ReplicaSync) -> RedisResult<usize> {
        let timeout_ms = u64::try_from(sync.timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut wait = redis::cmd("WAIT");
        wait.arg(sync.replicas).arg(timeout_ms);
        self.query_for_key(&wait, key).await
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConnection::Single(c) => c.req_packed_command(cmd),
            RedisConnection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConnection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConnection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConnection::Single(c) => c.get_db(),
            RedisConnection::Cluster(c) => c.get_db(),
        }
    }
}

/// Where a client connects: one server URL, or the seed nodes of a cluster.
#[derive(Debug, Clone)]
pub enum RedisTarget {
    /// One server (`redis://host:port/`).
    Single(String),
    /// A cluster, given by one or more of its nodes.
    Cluster(Vec<String>),
}

impl RedisTarget {
    /// Parse a URL the way the services take `REDIS_URL`: `redis+cluster://h1:p1,h2:p2/`
    /// (credentials, if any, once before the first host: `redis+cluster://:pw@h1:p1,h2:p2/`), or
    /// several `redis://` URLs separated by commas, is a cluster; one `redis://` URL is a single
    /// server.
    pub fn parse(url: &str) -> RedisTarget {
        if let Some(rest) = url.strip_prefix("redis+cluster://") {
            // `user:password@` before the first host applies to every node.
            let (auth, hosts) = match rest.rsplit_once('@') {
                Some((auth, hosts)) => (format!("{auth}@"), hosts),
                None => (String::new(), rest),
            };
            return RedisTarget::Cluster(
                hosts
                    .trim_end_matches('/')
                    .split(',')
                    .filter(|h| !h.is_empty())
                    .map(|h| format!("redis://{auth}{h}/"))
                    .collect(),
            );
        }
        let parts: Vec<&str> = url
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        if parts.len() > 1 {
            return RedisTarget::Cluster(parts.into_iter().map(str::to_owned).collect());
        }
        RedisTarget::Single(url.to_owned())
    }
}

/// ConnectionManager settings: bounded reply and connect times, reconnection with backoff.
pub(crate) fn manager_config(
    response: Duration,
    connect: Duration,
) -> redis::aio::ConnectionManagerConfig {
    redis::aio::ConnectionManagerConfig::new()
        .set_response_timeout(Some(response))
        .set_connection_timeout(Some(connect))
        .set_number_of_retries(3)
        .set_max_delay(Duration::from_millis(500))
}

/// Timeouts for every connection a client opens.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub(crate) response: Duration,
    pub(crate) connect: Duration,
}

/// A cluster connection with the client's timeouts; with `push` (RESP3), sharded pub/sub
/// messages go there.
pub(crate) async fn cluster_connection(
    nodes: &[String],
    timeouts: Timeouts,
    push: Option<tokio::sync::mpsc::UnboundedSender<redis::PushInfo>>,
) -> RedisResult<ClusterConnection> {
    let mut builder = redis::cluster::ClusterClientBuilder::new(nodes.to_vec())
        .response_timeout(timeouts.response)
        .connection_timeout(timeouts.connect)
        .retries(3);
    if let Some(tx) = push {
        builder = builder
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(tx);
    }
    builder.build()?.get_async_connection().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_are_recognised() {
        match RedisTarget::parse("redis+cluster://a:1,b:2/") {
            RedisTarget::Cluster(n) => assert_eq!(n, ["redis://a:1/", "redis://b:2/"]),
            other => panic!("{other:?}"),
        }
        match RedisTarget::parse("redis://a:1/,redis://b:2/") {
            RedisTarget::Cluster(n) => assert_eq!(n.len(), 2),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            RedisTarget::parse("redis://a:1/"),
            RedisTarget::Single(_)
        ));
        // A password given once is every node's.
        match RedisTarget::parse("redis+cluster://:s3cret@a:1,b:2/") {
            RedisTarget::Cluster(n) => {
                assert_eq!(n, ["redis://:s3cret@a:1/", "redis://:s3cret@b:2/"]);
            }
            other => panic!("{other:?}"),
        }
    }
}
