//! Wake-up of waiters: one pub/sub connection per client, one subscription per lock name
//! shared by all local waiters on that lock (Redisson's `LockPubSub`). A release publishes on
//! the lock's channel and one local waiter is woken (a stored permit if none is waiting yet,
//! so a message that arrives between a failed attempt and the wait is not lost). Waiters also
//! cap every wait at the holder's remaining TTL, so a lost message costs at most one TTL.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::Notify;
use tokio::task::AbortHandle;

#[derive(Debug)]
struct ChannelEntry {
    notify: Arc<Notify>,
    refs: usize,
}

#[derive(Debug)]
struct HubShared {
    client: redis::Client,
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
    pub(crate) async fn start(client: redis::Client) -> redis::RedisResult<Self> {
        let (sink, stream) = client.get_async_pubsub().await?.split();
        let shared = Arc::new(HubShared {
            client,
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
        let notify = {
            let mut channels = self.shared.channels();
            if let Some(entry) = channels.get_mut(channel) {
                entry.refs += 1;
                return Ok(Subscription::new(&self.shared, channel, &entry.notify));
            }
            let notify = Arc::new(Notify::new());
            channels.insert(
                channel.to_owned(),
                ChannelEntry {
                    notify: Arc::clone(&notify),
                    refs: 1,
                },
            );
            notify
        };
        if let Some(s) = sink.as_mut()
            && let Err(err) = s.subscribe(channel).await
        {
            // The connection is broken: the reader will notice, reconnect and
            // resubscribe everything in the map, including this channel. Until then the
            // waiter's TTL cap bounds its wait.
            tracing::debug!(%channel, error = %err, "subscribe failed; relying on resubscription");
        }
        Ok(Subscription::new(&self.shared, channel, &notify))
    }
}

/// One waiter's share of a channel subscription; dropping it unsubscribes when it was the
/// last local waiter.
#[derive(Debug)]
pub(crate) struct Subscription {
    shared: Arc<HubShared>,
    channel: String,
    notify: Arc<Notify>,
}

impl Subscription {
    fn new(shared: &Arc<HubShared>, channel: &str, notify: &Arc<Notify>) -> Self {
        Subscription {
            shared: Arc::clone(shared),
            channel: channel.to_owned(),
            notify: Arc::clone(notify),
        }
    }

    /// Wait for a release message (or a stored one).
    pub(crate) async fn notified(&self) {
        self.notify.notified().await;
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

/// Dispatch messages; on disconnect wake every waiter (they retry and fall back to their TTL
/// cap), reconnect with backoff and resubscribe every channel that still has waiters.
async fn read_loop(shared: Arc<HubShared>, mut stream: PubSubStream) {
    loop {
        while let Some(msg) = stream.next().await {
            let notify = shared
                .channels()
                .get(msg.get_channel_name())
                .map(|e| Arc::clone(&e.notify));
            if let Some(notify) = notify {
                notify.notify_one();
            }
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
