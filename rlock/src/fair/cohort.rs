//! One client's side of one fair lock: the local queue of tasks, the current tenure (the
//! client's hold in Redis) and who holds it locally. Every Redis operation of the client for
//! this lock goes through here, one at a time (the `Busy` phase), so the local view and
//! Redis agree.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::{Notify, OnceCell, oneshot, watch};
use tokio::time::Instant;

use super::commands::{FairCommands, Released, Taken};
use super::keys::FairKeys;
use super::{FairGuard, driver};
use crate::client::ClientInner;
use crate::config::lease_millis;
use crate::pubsub::Subscription;
use crate::watchdog::{LeaseSender, LeaseState};
use crate::{LockError, Result};

/// The cohorts of one client, by lock name (weak: a cohort lives while a handle or guard does).
#[derive(Debug, Default)]
pub(crate) struct Cohorts {
    by_name: Mutex<HashMap<String, Weak<Cohort>>>,
}

impl Cohorts {
    pub(crate) fn get_or_create(
        &self,
        client: &Arc<ClientInner>,
        name: &str,
    ) -> Result<Arc<Cohort>> {
        let mut map = self.by_name.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(cohort) = map.get(name).and_then(Weak::upgrade) {
            return Ok(cohort);
        }
        map.retain(|_, c| c.strong_count() > 0);
        let cohort = Arc::new(Cohort::new(client, name)?);
        map.insert(name.to_owned(), Arc::downgrade(&cohort));
        Ok(cohort)
    }
}

/// A local task waiting for its turn.
#[derive(Debug)]
struct Waiter {
    handle: u64,
    tx: oneshot::Sender<Result<FairGuard>>,
}

/// The client's hold of the lock in Redis and the local holder.
#[derive(Debug)]
struct Tenure {
    /// First token of the block Redis gave this tenure (what Redis knows it by).
    base: u64,
    /// The current holder's token (`base + passes`).
    token: u64,
    passes: u32,
    holder: u64,
    holds: u32,
    since: Instant,
    lease: LeaseSender,
}

#[derive(Debug)]
enum Phase {
    /// The client neither holds nor wants the lock.
    Idle,
    /// A task or the driver is talking to Redis for the client.
    Busy,
    Held(Tenure),
}

#[derive(Debug)]
struct State {
    phase: Phase,
    waiters: VecDeque<Waiter>,
    /// The highest tenure base seen: a grant at or below it is stale.
    last_base: u64,
}

/// What a task finds when it asks for the lock.
pub(super) enum Entry {
    /// It already holds it: one more hold.
    Reentered(FairGuard),
    /// Someone here holds it or is getting it: wait in the local queue.
    Queued(oneshot::Receiver<Result<FairGuard>>),
    /// Nobody here wants it: ask Redis (the phase is now `Busy`).
    ToRedis(oneshot::Sender<Result<FairGuard>>),
}

/// One client's side of one fair lock.
#[derive(Debug)]
pub(crate) struct Cohort {
    client: Arc<ClientInner>,
    commands: FairCommands,
    lease: Duration,
    pass_limit: u32,
    refresh: Duration,
    state: Mutex<State>,
    handles: AtomicU64,
    /// Wakes the driver when the local queue empties (everyone gave up).
    pub(super) driver_wake: Notify,
    /// The grant channel's subscription, taken when the client first has to wait.
    subscription: OnceCell<Option<Subscription>>,
}

impl Cohort {
    fn new(client: &Arc<ClientInner>, name: &str) -> Result<Self> {
        let config = &client.config;
        let lease = config.watchdog_timeout;
        let step = u64::from(config.fair_local_handoffs) + 1;
        let timeout_ms = lease_millis(config.fair_waiter_timeout)?;
        let keys = FairKeys::new(&config.key_prefix, name);
        Ok(Cohort {
            commands: FairCommands::new(
                keys,
                &client.id,
                lease_millis(lease)?,
                step,
                timeout_ms,
                client.scripts,
            ),
            lease,
            pass_limit: config.fair_local_handoffs,
            refresh: config.fair_waiter_timeout / 3,
            client: Arc::clone(client),
            state: Mutex::new(State {
                phase: Phase::Idle,
                waiters: VecDeque::new(),
                last_base: 0,
            }),
            handles: AtomicU64::new(1),
            driver_wake: Notify::new(),
            subscription: OnceCell::new(),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn client(&self) -> &ClientInner {
        &self.client
    }

    pub(super) fn keys(&self) -> &FairKeys {
        &self.commands.keys
    }

    pub(super) fn commands(&self) -> &FairCommands {
        &self.commands
    }

    pub(super) fn refresh_interval(&self) -> Duration {
        self.refresh
    }

    pub(super) fn new_handle(&self) -> u64 {
        self.handles.fetch_add(1, Ordering::Relaxed)
    }

    /// The grant channel's subscription (`None` if subscribing failed: the driver then
    /// relies on its refresh alone).
    pub(super) async fn subscription(&self) -> Option<&Subscription> {
        self.subscription
            .get_or_init(|| async {
                match self
                    .client
                    .pubsub
                    .subscribe(&self.commands.keys.channel)
                    .await
                {
                    Ok(sub) => Some(sub),
                    Err(err) => {
                        tracing::warn!(lock = %self.commands.keys.name, error = %err,
                            "fair lock: no grant subscription; waiting by refresh only");
                        None
                    }
                }
            })
            .await
            .as_ref()
    }

    pub(super) fn last_base(&self) -> u64 {
        self.state().last_base
    }

    /// A task asks for the lock.
    pub(super) fn enter(
        self: &Arc<Self>,
        handle: u64,
        tx: oneshot::Sender<Result<FairGuard>>,
    ) -> Entry {
        let mut s = self.state();
        match &mut s.phase {
            Phase::Held(t) if t.holder == handle => {
                t.holds += 1;
                let (token, lease) = (t.token, t.lease.subscribe());
                Entry::Reentered(self.guard(handle, token, lease))
            }
            Phase::Idle => {
                s.phase = Phase::Busy;
                Entry::ToRedis(tx)
            }
            Phase::Busy | Phase::Held(_) => {
                let (tx2, rx) = oneshot::channel();
                drop(tx);
                s.waiters.push_back(Waiter { handle, tx: tx2 });
                Entry::Queued(rx)
            }
        }
    }

    /// Try Redis from the asking task itself (no spawn on the uncontended path). `Ok(Err(()))`
    /// when not taken: queued in Redis with the task first in the local queue (`tx` answers
    /// it) and the driver started, or — without `queue` — nothing changed.
    pub(super) async fn take_inline(
        self: &Arc<Self>,
        handle: u64,
        queue: bool,
        tx: oneshot::Sender<Result<FairGuard>>,
    ) -> Result<Result<FairGuard, ()>> {
        let in_flight = InFlight::arm(self);
        let mut conn = self.client.conn.clone();
        let taken = match self.commands.take_fast(&mut conn).await {
            Ok(Taken::No) => self.commands.take(&mut conn, queue).await,
            other => other,
        };
        in_flight.disarm();
        match taken {
            Ok(Taken::Yes { token, sent }) => {
                let mut s = self.state();
                let lease = self.start_tenure(&mut s, token, sent, handle);
                Ok(Ok(self.guard(handle, token, lease)))
            }
            Ok(Taken::No) if queue => {
                self.state().waiters.push_front(Waiter { handle, tx });
                tokio::spawn(driver::drive(Arc::clone(self)));
                Ok(Err(()))
            }
            Ok(Taken::No) => {
                self.resume();
                Ok(Err(()))
            }
            Err(err @ LockError::Redis(_)) => {
                self.resume();
                Err(err)
            }
            Err(err) => {
                tokio::spawn(Arc::clone(self).abandon());
                Err(err)
            }
        }
    }

    /// Begin a tenure at `base` (state locked, phase `Busy`): lease, watchdog, holder.
    fn start_tenure(
        &self,
        s: &mut State,
        base: u64,
        sent: Instant,
        holder: u64,
    ) -> watch::Receiver<LeaseState> {
        let sender = Arc::new(
            watch::channel(LeaseState {
                valid_until: sent + self.lease,
                lost: false,
            })
            .0,
        );
        self.client.watchdog.register(
            &self.commands.keys.lock,
            &self.client.id,
            base,
            Arc::clone(&sender),
        );
        let lease = sender.subscribe();
        s.last_base = s.last_base.max(base);
        s.phase = Phase::Held(Tenure {
            base,
            token: base,
            passes: 0,
            holder,
            holds: 1,
            since: Instant::now(),
            lease: sender,
        });
        lease
    }

    /// Redis granted the client a tenure while the driver waited: give it to the first
    /// live local waiter, or give it back when none is left.
    pub(super) async fn granted(self: Arc<Self>, base: u64, sent: Instant) {
        let unwanted = {
            let mut s = self.state();
            self.start_tenure(&mut s, base, sent, 0);
            if self.hand_on(&mut s) {
                None
            } else {
                self.close_tenure(&mut s)
            }
        };
        if let Some(base) = unwanted {
            self.end_tenure_in_redis(base, false).await.ok();
        }
    }

    /// Pass the held tenure (state locked) to the first live local waiter. False when none
    /// is left (the phase stays `Held` with no holder).
    fn hand_on(self: &Arc<Self>, s: &mut State) -> bool {
        let Phase::Held(t) = &mut s.phase else {
            return false;
        };
        while let Some(w) = s.waiters.pop_front() {
            let guard = self.guard(w.handle, t.token, t.lease.subscribe());
            match w.tx.send(Ok(guard)) {
                Ok(()) => {
                    t.holder = w.handle;
                    t.holds = 1;
                    t.since = Instant::now();
                    return true;
                }
                Err(returned) => {
                    if let Ok(guard) = returned {
                        guard.defuse();
                    }
                }
            }
        }
        false
    }

    /// Release one hold of `handle` at `token`.
    pub(super) async fn release(self: Arc<Self>, handle: u64, token: u64) -> Result<()> {
        let requeue = {
            let mut guard = self.state();
            let s = &mut *guard;
            let Phase::Held(t) = &mut s.phase else {
                return Err(self.not_held());
            };
            if t.holder != handle || t.token != token {
                return Err(self.not_held());
            }
            t.holds -= 1;
            if t.holds > 0 {
                return Ok(());
            }
            self.client.metrics.held("fair", t.since.elapsed());
            let sound = !t.lease.borrow().is_lost();
            s.waiters.retain(|w| !w.tx.is_closed());
            if sound && t.passes < self.pass_limit && !s.waiters.is_empty() {
                t.passes += 1;
                t.token += 1;
                if self.hand_on(s) {
                    return Ok(());
                }
            }
            let requeue = !s.waiters.is_empty();
            (self.close_tenure(s), requeue)
        };
        match requeue {
            (Some(base), requeue) => self.end_tenure_in_redis(base, requeue).await,
            (None, _) => Err(self.not_held()),
        }
    }

    /// Take the held tenure out of the state (locked) for ending it in Redis: the phase is
    /// `Busy` from here, so no task re-enters or is handed a tenure being ended.
    fn close_tenure(&self, s: &mut State) -> Option<u64> {
        let Phase::Held(t) = std::mem::replace(&mut s.phase, Phase::Busy) else {
            return None;
        };
        self.client
            .watchdog
            .deregister(&self.commands.keys.lock, &self.client.id, t.base);
        Some(t.base)
    }

    /// End the tenure at `base` (already closed locally) in Redis (queueing the client again when local tasks wait) and
    /// carry on with whatever Redis answered.
    async fn end_tenure_in_redis(self: Arc<Self>, base: u64, requeue: bool) -> Result<()> {
        let in_flight = InFlight::arm(&self);
        let mut conn = self.client.conn.clone();
        let released = self.commands.release(&mut conn, base, requeue).await;
        in_flight.disarm();
        match released {
            Ok(Released::Done) => {
                self.resume();
                Ok(())
            }
            Ok(Released::NotHeld) => {
                self.resume();
                Err(self.not_held())
            }
            Ok(Released::Again { token, sent }) => {
                Box::pin(self.granted(token, sent)).await;
                Ok(())
            }
            Err(err) => {
                tokio::spawn(Arc::clone(&self).abandon());
                Err(err)
            }
        }
    }

    /// Redis holds nothing for the client (phase `Busy`): wait again for the local tasks
    /// still queued, or go idle.
    pub(super) fn resume(self: &Arc<Self>) {
        let mut s = self.state();
        s.waiters.retain(|w| !w.tx.is_closed());
        if s.waiters.is_empty() {
            s.phase = Phase::Idle;
        } else {
            drop(s);
            tokio::spawn(driver::drive(Arc::clone(self)));
        }
    }

    /// The client gives up whatever it has in Redis (an operation's outcome is unknown, or
    /// nobody here waits any more): leave, retried until answered, then resume.
    pub(super) async fn abandon(self: Arc<Self>) {
        let mut conn = self.client.conn.clone();
        let give_up = Instant::now() + self.lease;
        self.commands.leave_retrying(&mut conn, give_up).await;
        self.resume();
    }

    /// Whether any local task still waits.
    pub(super) fn has_waiters(&self) -> bool {
        let mut s = self.state();
        s.waiters.retain(|w| !w.tx.is_closed());
        !s.waiters.is_empty()
    }

    /// A waiting task timed out: if nobody else waits, wake the driver so it leaves now.
    pub(super) fn gave_up(&self) {
        if !self.has_waiters() {
            self.driver_wake.notify_one();
        }
    }

    /// Redis failed while the driver waited: every local waiter gets the error.
    pub(super) fn fail_waiters(&self, err: &LockError) {
        let waiters = std::mem::take(&mut self.state().waiters);
        for w in waiters {
            let _ = w.tx.send(Err(duplicate(err)));
        }
    }

    fn guard(
        self: &Arc<Self>,
        handle: u64,
        token: u64,
        lease: watch::Receiver<LeaseState>,
    ) -> FairGuard {
        FairGuard {
            cohort: Arc::clone(self),
            handle,
            token,
            lease,
            released: false,
        }
    }

    fn not_held(&self) -> LockError {
        LockError::NotHeld {
            name: self.commands.keys.name.clone(),
        }
    }
}

/// A copy of a Redis failure for each waiter it failed.
fn duplicate(err: &LockError) -> LockError {
    match err {
        LockError::Redis(e) => LockError::Redis(e.clone()),
        LockError::OutcomeUnknown { operation, source } => LockError::OutcomeUnknown {
            operation,
            source: source.clone(),
        },
        _ => LockError::Aborted,
    }
}

/// A Redis command in flight for the cohort: if the task running it is dropped before it
/// answers, the cohort leaves (in the background) whatever the command may have done.
struct InFlight<'a> {
    cohort: &'a Arc<Cohort>,
    armed: bool,
}

impl<'a> InFlight<'a> {
    fn arm(cohort: &'a Arc<Cohort>) -> Self {
        InFlight {
            cohort,
            armed: true,
        }
    }

    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.armed {
            let cohort = Arc::clone(self.cohort);
            let rt = tokio::runtime::Handle::try_current()
                .unwrap_or_else(|_| cohort.client.runtime.clone());
            rt.spawn(cohort.abandon());
        }
    }
}
