//! The per-process lock client: one Redis connection (multiplexed, reconnecting), one pub/sub
//! connection, one watchdog task. Cheap to clone; create one per process and per Redis.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry::metrics::Meter;
use redis::aio::ConnectionManagerConfig;
use tokio::task::AbortHandle;

use crate::config::LockConfig;
use crate::conn::{self, RedisConnection, RedisTarget, SingleConnection, Timeouts};
use crate::fair::{Cohorts, FairLock};
use crate::keys::{self, LockKeys};
use crate::lock::RLock;
use crate::metrics::LockMetrics;
use crate::multi::MultiLock;
use crate::pubsub::PubSubHub;
use crate::scripts::{self, Publishing};
use crate::watchdog::{self, Watchdog};
use crate::{LockError, Result};

/// A handle to the lock service of one Redis server. Clones share the connections, the
/// subscriptions and the watchdog.
#[derive(Debug, Clone)]
pub struct LockClient {
    pub(crate) inner: Arc<ClientInner>,
}

#[derive(Debug)]
pub(crate) struct ClientInner {
    /// Unique id of this client; owner ids are `<id>:<n>`.
    pub(crate) id: String,
    pub(crate) conn: RedisConnection,
    /// The publishing scripts of this deployment (`PUBLISH` or, on a cluster, `SPUBLISH`).
    pub(crate) scripts: &'static Publishing,
    pub(crate) config: LockConfig,
    pub(crate) pubsub: PubSubHub,
    pub(crate) watchdog: Watchdog,
    /// This process's side of each fair lock in use (local queue, current tenure).
    pub(crate) cohorts: Cohorts,
    pub(crate) metrics: LockMetrics,
    /// The runtime the client was made in: a guard dropped outside any runtime (a plain
    /// thread) still releases its hold there.
    pub(crate) runtime: tokio::runtime::Handle,
    owner_seq: AtomicU64,
    watchdog_task: AbortHandle,
}

impl Drop for ClientInner {
    fn drop(&mut self) {
        self.watchdog_task.abort();
    }
}

impl LockClient {
    /// Connect to Redis at `url` (e.g. `redis://127.0.0.1:6379/`), or to a Redis Cluster given
    /// as `redis+cluster://host1:port1,host2:port2/` or as several comma-separated `redis://`
    /// URLs of its nodes, recording metrics through the global OpenTelemetry meter provider.
    pub async fn connect(url: &str, config: LockConfig) -> Result<Self> {
        Self::connect_with_meter(url, config, &opentelemetry::global::meter("rlock")).await
    }

    /// Connect, recording metrics with `meter`.
    pub async fn connect_with_meter(url: &str, config: LockConfig, meter: &Meter) -> Result<Self> {
        config.validate()?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let (conn, pubsub) = match RedisTarget::parse(url) {
            RedisTarget::Single(url) => connect_single(&url, &config, &id).await?,
            RedisTarget::Cluster(nodes) => connect_cluster(&nodes, &config, &id).await?,
        };
        if conn.is_cluster() && config.replica_sync.is_some() {
            tracing::info!("replica_sync on a cluster: WAIT runs on each lock's own master");
        }
        let interval = config.renewal_interval();
        let inner = Arc::new_cyclic(|weak| ClientInner {
            id,
            scripts: scripts::publishing(conn.is_cluster()),
            conn,
            pubsub,
            cohorts: Cohorts::default(),
            watchdog: Watchdog::default(),
            metrics: LockMetrics::new(meter),
            owner_seq: AtomicU64::new(0),
            runtime: tokio::runtime::Handle::current(),
            watchdog_task: tokio::spawn(watchdog::run(weak.clone(), interval)).abort_handle(),
            config,
        });
        Ok(LockClient { inner })
    }

    /// A reentrant lock named `name` with a new owner identity. Acquisitions through the same
    /// [`RLock`] re-enter; another `RLock` of the same name (here or in another process) is
    /// excluded. Names must be non-empty and contain no braces.
    pub fn lock(&self, name: &str) -> Result<RLock> {
        keys::validate_name(name)?;
        Ok(RLock::new(
            Arc::clone(&self.inner),
            self.keys(name),
            self.new_owner(),
        ))
    }

    /// A fair lock named `name` with a new local owner identity: waiters are served in
    /// arrival order across processes, each release hands the lock straight to the next
    /// waiter (see [`FairLock`]). Names must be non-empty and contain no braces.
    pub fn fair_lock(&self, name: &str) -> Result<FairLock> {
        keys::validate_name(name)?;
        FairLock::new(&self.inner, name)
    }

    /// Several locks taken together, all or nothing, in a canonical order (see [`MultiLock`]).
    pub fn multi_lock<S: AsRef<str>>(&self, names: &[S]) -> Result<MultiLock> {
        let mut locks = names
            .iter()
            .map(|n| self.lock(n.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        locks.sort_by(|a, b| a.keys().lock.cmp(&b.keys().lock));
        locks.dedup_by(|a, b| a.keys().lock == b.keys().lock);
        if locks.is_empty() {
            return Err(LockError::InvalidArgument(
                "a multi-lock needs at least one name".into(),
            ));
        }
        Ok(MultiLock::new(locks))
    }

    /// The Redis key names used for the lock `name`.
    pub fn keys(&self, name: &str) -> LockKeys {
        LockKeys::new(&self.inner.config.key_prefix, name)
    }

    /// Raise the fencing counter of lock `name` to at least `floor`, so every later acquisition
    /// gets a token above `floor`; returns the counter's value. Use it when the resource
    /// refused a token from a lock that was still valid: Redis lost its data and the counter
    /// restarted low. It never lowers the counter, so it cannot make a stale token pass.
    pub async fn raise_fence(&self, name: &str, floor: u64) -> Result<u64> {
        keys::validate_name(name)?;
        let mut conn = self.inner.conn.clone();
        Ok(crate::scripts::RAISE_FENCE
            .key(self.keys(name).fence)
            .arg(floor)
            .invoke_async(&mut conn)
            .await?)
    }

    /// The settings this client runs with.
    pub fn config(&self) -> &LockConfig {
        &self.inner.config
    }

    /// This client's unique id (the prefix of its owner ids).
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// A clone of the client's Redis connection (one server or a cluster), for callers that
    /// want to run their own commands on the same deployment.
    pub fn connection(&self) -> RedisConnection {
        self.inner.conn.clone()
    }

    /// How many times the pub/sub connection was lost (or stopped answering pings) and was
    /// made again.
    pub fn pubsub_reconnects(&self) -> u64 {
        self.inner.pubsub.reconnects()
    }

    /// Whether this client talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.inner.conn.is_cluster()
    }

    /// Number of locks the watchdog is currently renewing.
    pub fn renewing(&self) -> usize {
        self.inner.watchdog.len()
    }

    /// Stop renewing leases, as a crashed process would. Locks still held are not released:
    /// they expire when their lease runs out. Guards of this client stay usable for release.
    pub fn shutdown(&self) {
        self.inner.watchdog_task.abort();
    }

    fn new_owner(&self) -> String {
        let n = self.inner.owner_seq.fetch_add(1, Ordering::Relaxed);
        format!("{}:{n}", self.inner.id)
    }
}

/// One server: a reconnecting command connection and a pub/sub connection.
async fn connect_single(
    url: &str,
    config: &LockConfig,
    id: &str,
) -> Result<(RedisConnection, PubSubHub)> {
    let client = redis::Client::open(url)?;
    let conn = SingleConnection::connect(
        client.clone(),
        manager_config(config),
        config.rebuild_after_timeouts,
    )
    .await?;
    let pubsub =
        PubSubHub::start(client, id, config.ping_interval, config.response_timeout).await?;
    Ok((RedisConnection::Single(conn), pubsub))
}

/// A cluster: a routing command connection, and a second RESP3 one for sharded pub/sub.
async fn connect_cluster(
    nodes: &[String],
    config: &LockConfig,
    id: &str,
) -> Result<(RedisConnection, PubSubHub)> {
    let timeouts = Timeouts {
        response: config.response_timeout,
        connect: config.connection_timeout,
    };
    let conn = conn::cluster_connection(nodes, timeouts, None).await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let sub = conn::cluster_connection(nodes, timeouts, Some(tx)).await?;
    Ok((
        RedisConnection::Cluster(conn),
        PubSubHub::start_sharded(sub, rx, id, config.response_timeout),
    ))
}

/// ConnectionManager settings from the lock config (see [`conn::manager_config`]).
pub(crate) fn manager_config(config: &LockConfig) -> ConnectionManagerConfig {
    conn::manager_config(config.response_timeout, config.connection_timeout)
}
