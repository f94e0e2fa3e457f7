//! Wake-up of waiters: one pub/sub connection per client, one subscription per lock name
//! shared by all local waiters on that lock (Redisson's `LockPubSub`). A release publishes on
//! the lock's channel and one local waiter is woken (a stored permit if none is waiting yet,
//! so a message that arrives between a failed attempt and the wait is not lost). Waiters also
//! cap every wait at the holder's remaining TTL, so a lost message costs at most one TTL.
//!
//! A fair lock's grant (`<client id>:<token>` on its grant channel) wakes only the client it
//! names: the others ignore it, so a hand-off sets off no herd.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::Notify;
use tokio::task::AbortHandle;

#[derive(Debug)]
struct ChannelEntry {
    notify: Arc<Notify>,
    /// The highest token granted to this client on this channel (fair locks).
    granted: Arc<AtomicU64>,
    refs: usize,
}

#[derive(Debug)]
struct HubShared {
    client: redis::Client,
    /// `<client id>:`, the prefix of grants addressed to this client.
    grant_prefix: String,
    /// Channel name -> local waiters. Changed only while `sink` is locked, so the map and the
    /// server's subscriptions change in the same order.
    channels: Mutex<HashMap<String, ChannelEntry>>,
    /// `None` while the connection is down; the reader task reconnects and resubscribes.
    sink: tokio::sync::Mutex<Option<PubSubSink>>,
}

impl HubShared {
    fn channels(&self) -> MutexGuard<'_, HashMap<String, ChannelEntry>> {
        self.channels.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wake_all(&self) {
        for entry in self.channels().values() {
            entry.notify.notify_waiters();
            entry.notify.notify_one();
        }
    }
}

/// The per-client pub/sub connection and its subscriptions.
#[derive(Debug)]
pub(crate) struct PubSubHub {
    shared: Arc<HubShared>,
    reader: AbortHandle,
}

impl Drop for PubSubHub {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl PubSubHub {
    /// Connect and start the reader task.
    pub(crate) async fn start(client: redis::Client, client_id: &str) -> redis::RedisResult<Self> {
        let (sink, stream) = client.get_async_pubsub().await?.split();
        let shared = Arc::new(HubShared {
            client,
            grant_prefix: format!("{client_id}:"),
            channels: Mutex::new(HashMap::new()),
            sink: tokio::sync::Mutex::new(Some(sink)),
        });
        let reader = tokio::spawn(read_loop(Arc::clone(&shared), stream)).abort_handle();
        Ok(PubSubHub { shared, reader })
    }

    /// Subscribe this waiter to `channel`. The first local waiter sends SUBSCRIBE and waits
    /// for Redis to confirm it, so a release published after this returns is seen.
    pub(crate) async fn subscribe(&self, channel: &str) -> redis::RedisResult<Subscription> {
        let mut sink = self.shared.sink.lock().await;
        let subscription = {
            let mut channels = self.shared.channels();
            if let Some(entry) = channels.get_mut(channel) {
                entry.refs += 1;
                return Ok(Subscription::new(&self.shared, channel, entry));
            }
            let entry = ChannelEntry {
                notify: Arc::new(Notify::new()),
                granted: Arc::new(AtomicU64::new(0)),
                refs: 1,
            };
            let subscription = Subscription::new(&self.shared, channel, &entry);
            channels.insert(channel.to_owned(), entry);
            subscription
        };
        if let Some(s) = sink.as_mut()
            && let Err(err) = s.subscribe(channel).await
        {
            // The connection is broken: the reader will notice, reconnect and
            // resubscribe everything in the map, including this channel. Until then the
            // waiter's TTL cap bounds its wait.
            tracing::debug!(%channel, error = %err, "subscribe failed; relying on resubscription");
        }
        Ok(subscription)
    }
}

/// One waiter's share of a channel subscription; dropping it unsubscribes when it was the
/// last local waiter.
#[derive(Debug)]
pub(crate) struct Subscription {
    shared: Arc<HubShared>,
    channel: String,
    notify: Arc<Notify>,
    granted: Arc<AtomicU64>,
}

impl Subscription {
    fn new(shared: &Arc<HubShared>, channel: &str, entry: &ChannelEntry) -> Self {
        Subscription {
            shared: Arc::clone(shared),
            channel: channel.to_owned(),
            notify: Arc::clone(&entry.notify),
            granted: Arc::clone(&entry.granted),
        }
    }

    /// Wait for a release message or a grant to this client (or a stored one).
    pub(crate) async fn notified(&self) {
        self.notify.notified().await;
    }

    /// The highest token granted to this client on this channel so far (0: none).
    pub(crate) fn granted(&self) -> u64 {
        self.granted.load(Ordering::Acquire)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let shared = Arc::clone(&self.shared);
        let channel = std::mem::take(&mut self.channel);
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            let mut sink = shared.sink.lock().await;
            let last = {
                let mut channels = shared.channels();
                match channels.get_mut(&channel) {
                    Some(entry) if entry.refs > 1 => {
                        entry.refs -= 1;
                        false
                    }
                    Some(_) => {
                        channels.remove(&channel);
                        true
                    }
                    None => false,
                }
            };
            if last
                && let Some(s) = sink.as_mut()
                && let Err(err) = s.unsubscribe(&channel).await
            {
                tracing::debug!(%channel, error = %err, "unsubscribe failed");
            }
        });
    }
}

/// Wake the waiter a message is for: one local waiter for a release, the client's driver for
/// a grant to this client, nobody for a grant to another client.
fn dispatch(shared: &HubShared, msg: &redis::Msg) {
    let channels = shared.channels();
    let Some(entry) = channels.get(msg.get_channel_name()) else {
        return;
    };
    let payload = String::from_utf8_lossy(msg.get_payload_bytes());
    match payload.split_once(':') {
        None => entry.notify.notify_one(),
        Some(_) => {
            let Some(token) = payload
                .strip_prefix(shared.grant_prefix.as_str())
                .and_then(|t| t.parse::<u64>().ok())
            else {
                return;
            };
            entry.granted.fetch_max(token, Ordering::AcqRel);
            entry.notify.notify_one();
        }
    }
}

/// Dispatch messages; on disconnect wake every waiter (they retry and fall back to their TTL
/// cap), reconnect with backoff and resubscribe every channel that still has waiters.
async fn read_loop(shared: Arc<HubShared>, mut stream: PubSubStream) {
    loop {
        while let Some(msg) = stream.next().await {
            dispatch(&shared, &msg);
        }
        tracing::warn!("pub/sub connection lost; reconnecting");
        shared.sink.lock().await.take();
        shared.wake_all();
        let mut backoff = Duration::from_millis(50);
        stream = loop {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
            let Ok(pubsub) = shared.client.get_async_pubsub().await else {
                continue;
            };
            let (mut sink, stream) = pubsub.split();
            let mut guard = shared.sink.lock().await;
            let names: Vec<String> = shared.channels().keys().cloned().collect();
            if !names.is_empty() && sink.subscribe(&names).await.is_err() {
                continue;
            }
            *guard = Some(sink);
            drop(guard);
            tracing::info!(channels = names.len(), "pub/sub reconnected");
            // Releases may have been published while we were away.
            shared.wake_all();
            break stream;
        };
    }
}
