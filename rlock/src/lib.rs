//! A Redisson-style distributed lock for tokio programs, on redis-rs.
//!
//! - **Reentrant by owner**: one Redis hash per lock, owner id -> hold count
//!   ([`RLock`] is one owner).
//! - **Watchdog**: with [`Lease::Watchdog`] the lease (default 30 s) is renewed every third
//!   of it, in batches for all locks of the client, and renewal stops exactly at release.
//! - **Pub/sub wake-up**: waiters sleep until the release script publishes, sharing one
//!   subscription per lock name per process, and never longer than the holder's TTL.
//! - **Fencing tokens**: a counter beside the lock (same hash slot), incremented on each new
//!   acquisition, not on re-entry, and seeded from Redis TIME (µs) when absent;
//!   [`LockGuard::token`] is strictly increasing across clients, also after Redis lost its data.
//! - [`FairLock`]: FIFO across processes with direct hand-off and bounded local passes.
//! - Redis Cluster: [`LockClient::connect`] takes `redis+cluster://…`; sharded pub/sub.
//! - **Safe under cancellation and timeouts**: a dropped acquire leaves nothing held; a lost
//!   reply is treated as "unknown outcome" and compensated.
//! - [`MultiLock`] (all or nothing, canonical order) and [`RedLock`] (quorum of masters).
//! - Metrics through the OpenTelemetry meter API.
//!
//! ```no_run
//! # async fn demo() -> Result<(), rlock::LockError> {
//! use std::time::Duration;
//! use rlock::{Lease, LockClient, LockConfig};
//!
//! let client = LockClient::connect("redis://127.0.0.1:6379/", LockConfig::default()).await?;
//! let lock = client.lock("stock:sku-1:segment-3")?;
//! if let Some(guard) = lock.try_acquire(Duration::from_millis(500), Lease::Watchdog).await? {
//!     // ... write to the database with `WHERE last_fence < guard.token()` ...
//!     guard.release().await?;
//! }
//! # Ok(()) }
//! ```
//!
//! The scripts live in `lua/`; docs/locking.md explains the design and its limits.

mod client;
mod config;
mod conn;
mod error;
mod fair;
mod keys;
mod lock;
pub mod metrics;
mod multi;
mod pubsub;
mod rebuild;
mod redlock;
mod retry;
mod scripts;
mod watchdog;

pub use client::LockClient;
pub use config::{Lease, LockConfig, ReplicaSync};
pub use conn::{RedisConnection, RedisTarget, SingleConnection};
pub use error::{LockError, Result};
pub use fair::{FairGuard, FairKeys, FairLock};
pub use keys::LockKeys;
pub use lock::{LockGuard, RLock};
pub use multi::{MultiGuard, MultiLock};
pub use redlock::{RedGuard, RedLock, RedLockConfig};
