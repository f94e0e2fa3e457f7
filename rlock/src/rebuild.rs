//! A single-server connection that is rebuilt after repeated response timeouts (review
//! defect 4). redis-rs's `ConnectionManager` reconnects when the socket fails, but a response
//! timeout is not a failure to it: after a silent failover (the old primary frozen or cut off
//! without a reset, the address now leading to the promoted replica) every call would time out
//! on the old socket for minutes and every watchdog lock would be lost. After
//! [`crate::LockConfig::rebuild_after_timeouts`] timeouts in a row, a new manager (a new socket,
//! resolved again) replaces the old one for every clone.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

/// A rebuilding connection to one server; clones share the current manager.
#[derive(Clone)]
pub struct SingleConnection {
    shared: Arc<Shared>,
}

struct Shared {
    client: redis::Client,
    config: ConnectionManagerConfig,
    current: RwLock<ConnectionManager>,
    timeouts_in_a_row: AtomicU32,
    rebuild_after: u32,
    rebuilding: AtomicBool,
}

impl SingleConnection {
    /// Connect with `config`; rebuild after `rebuild_after` response timeouts in a row (0:
    /// never).
    pub(crate) async fn connect(
        client: redis::Client,
        config: ConnectionManagerConfig,
        rebuild_after: u32,
    ) -> RedisResult<Self> {
        let manager = client
            .get_connection_manager_with_config(config.clone())
            .await?;
        Ok(SingleConnection {
            shared: Arc::new(Shared {
                client,
                config,
                current: RwLock::new(manager),
                timeouts_in_a_row: AtomicU32::new(0),
                rebuild_after,
                rebuilding: AtomicBool::new(false),
            }),
        })
    }

    /// The manager in use now.
    fn current(&self) -> ConnectionManager {
        self.shared
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Count a reply: timeouts in a row start a rebuild; anything else resets the count.
    fn observe<T>(&self, reply: &RedisResult<T>) {
        let shared = &self.shared;
        match reply {
            Err(err) if err.is_timeout() => {
                let n = shared.timeouts_in_a_row.fetch_add(1, Ordering::AcqRel) + 1;
                if shared.rebuild_after > 0
                    && n >= shared.rebuild_after
                    && !shared.rebuilding.swap(true, Ordering::AcqRel)
                {
                    tokio::spawn(Arc::clone(shared).rebuild());
                }
            }
            _ => shared.timeouts_in_a_row.store(0, Ordering::Release),
        }
    }
}

impl Shared {
    async fn rebuild(self: Arc<Self>) {
        tracing::warn!(
            timeouts = self.timeouts_in_a_row.load(Ordering::Acquire),
            "redis: replies keep timing out; replacing the connection"
        );
        match self
            .client
            .get_connection_manager_with_config(self.config.clone())
            .await
        {
            Ok(manager) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = manager;
                self.timeouts_in_a_row.store(0, Ordering::Release);
                tracing::info!("redis: connection replaced");
            }
            Err(err) => tracing::warn!(error = %err, "redis: could not replace the connection yet"),
        }
        self.rebuilding.store(false, Ordering::Release);
    }
}

impl ConnectionLike for SingleConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let mut conn = self.current();
        Box::pin(async move {
            let reply = conn.req_packed_command(cmd).await;
            self.observe(&reply);
            reply
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let mut conn = self.current();
        Box::pin(async move {
            let reply = conn.req_packed_commands(pipeline, offset, count).await;
            self.observe(&reply);
            reply
        })
    }

    fn get_db(&self) -> i64 {
        self.current().get_db()
    }
}
