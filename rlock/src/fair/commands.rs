//! The fair lock's three Redis operations, one script each: take or queue, release with
//! hand-off, leave.

use tokio::time::Instant;

use crate::LockError;
use crate::error::outcome_known;
use crate::scripts;

use super::keys::FairKeys;

/// How long a fencing counter is kept after its last use (a week, as in the scripts): one
/// that expired is re-seeded from Redis TIME, which is past every token it issued.
const FENCE_KEEP_MS: u64 = 604_800_000;

/// What the take-or-queue script answered.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Taken {
    /// This client owns the lock: a tenure starting at `token`. `sent` is when the command
    /// left, so a lease counted from it errs early.
    Yes { token: u64, sent: Instant },
    /// Someone else holds it (or waits first); the client is queued if it asked to be.
    No,
}

/// What the release script answered.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Released {
    /// The tenure ended (and the lock went to the next waiter, if any).
    Done,
    /// The tenure was already lost; nothing changed.
    NotHeld,
    /// The client was queued again and nobody was ahead: a new tenure at `token`.
    Again { token: u64, sent: Instant },
}

/// One client's view of one fair lock in Redis: its keys, its owner id and its queue entry.
#[derive(Debug)]
pub(crate) struct FairCommands {
    pub(crate) keys: FairKeys,
    pub(crate) owner: String,
    pub(crate) entry: String,
    pub(crate) waiter_timeout_ms: u64,
    lease_ms: u64,
    step: u64,
    scripts: &'static scripts::Publishing,
    /// The lock's value while the fast path's tenure holds it.
    fast_value: String,
}

impl FairCommands {
    pub(crate) fn new(
        keys: FairKeys,
        owner: &str,
        lease_ms: u64,
        step: u64,
        timeout_ms: u64,
        scripts: &'static scripts::Publishing,
    ) -> Self {
        FairCommands {
            entry: format!("{lease_ms}:{step}:{owner}"),
            fast_value: format!("{owner}:"),
            owner: owner.to_owned(),
            keys,
            waiter_timeout_ms: timeout_ms,
            lease_ms,
            step,
            scripts,
        }
    }

    fn invocation(&self, script: &'static redis::Script) -> redis::ScriptInvocation<'static> {
        let mut inv = script.prepare_invoke();
        inv.key(&self.keys.lock)
            .key(&self.keys.fence)
            .key(&self.keys.queue)
            .key(&self.keys.waiters)
            .key(&self.keys.channel);
        inv
    }

    /// The uncontended path without a script: `MULTI`, `INCRBY` the fence by a block,
    /// `SET NX PX`, `EXEC`. One transaction, so tokens follow the order of acquisitions; the
    /// block is spent even when the `SET` fails (tokens only need to rise). It does not look
    /// at the queue: it can only find the lock free with waiters queued after a holder's lease
    /// ran out, and then it goes first once.
    pub(crate) async fn take_fast(
        &self,
        conn: &mut crate::RedisConnection,
    ) -> Result<Taken, LockError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("INCRBY")
            .arg(&self.keys.fence)
            .arg(self.step)
            .cmd("SET")
            .arg(&self.keys.lock)
            .arg(&self.fast_value)
            .arg("NX")
            .arg("PX")
            .arg(self.lease_ms)
            .cmd("PEXPIRE")
            .arg(&self.keys.fence)
            .arg(FENCE_KEEP_MS);
        let sent = Instant::now();
        let (last, set, _): (u64, Option<String>, i64) = pipe
            .query_async(conn)
            .await
            .map_err(|e| LockError::from_redis("fair fast acquire", e))?;
        match set {
            // The counter was absent (first use, data lost, expired): INCRBY started it at
            // zero. Re-seed it from Redis TIME while this client holds the lock.
            Some(_) if last == self.step => Ok(Taken::Yes {
                token: self.seed(conn).await?,
                sent,
            }),
            Some(_) => Ok(Taken::Yes {
                token: last + 1 - self.step,
                sent,
            }),
            None => Ok(Taken::No),
        }
    }

    /// Re-seed the fencing counter from Redis TIME; the first token of this client's block.
    async fn seed(&self, conn: &mut crate::RedisConnection) -> Result<u64, LockError> {
        let mut inv = self.invocation(&self.scripts.fair_seed);
        inv.arg(self.step);
        let base: i64 = inv
            .invoke_async(conn)
            .await
            .map_err(|e| LockError::from_redis("fair seed", e))?;
        token(base, "fair seed")
    }

    /// Take the lock if it is free and nobody queues; else queue (when `queue`) or refresh
    /// this client's place in the queue.
    pub(crate) async fn take(
        &self,
        conn: &mut crate::RedisConnection,
        queue: bool,
    ) -> Result<Taken, LockError> {
        match self.take_once(conn, queue).await? {
            Some(taken) => Ok(taken),
            None => {
                // A fast-path tenure of this client was left behind (its release was lost
                // and so was the leave after it): give it back, then try again.
                self.leave(conn)
                    .await
                    .map_err(|e| LockError::from_redis("fair leave", e))?;
                Ok(self.take_once(conn, queue).await?.unwrap_or(Taken::No))
            }
        }
    }

    async fn take_once(
        &self,
        conn: &mut crate::RedisConnection,
        queue: bool,
    ) -> Result<Option<Taken>, LockError> {
        let mut inv = self.invocation(&self.scripts.fair_acquire);
        inv.arg(&self.owner)
            .arg(&self.entry)
            .arg(self.waiter_timeout_ms)
            .arg(if queue { "1" } else { "0" });
        let sent = Instant::now();
        let (held, value): (i64, i64) = inv
            .invoke_async(conn)
            .await
            .map_err(|e| LockError::from_redis("fair acquire", e))?;
        match held {
            1 => Ok(Some(Taken::Yes {
                token: token(value, "fair acquire")?,
                sent,
            })),
            2 => Ok(None),
            _ => Ok(Some(Taken::No)),
        }
    }

    /// End the tenure that started at `base`; with `requeue`, queue this client again at the
    /// back in the same step (it has more local waiters).
    pub(crate) async fn release(
        &self,
        conn: &mut crate::RedisConnection,
        base: u64,
        requeue: bool,
    ) -> Result<Released, LockError> {
        let mut inv = self.invocation(&self.scripts.fair_release);
        inv.arg(&self.owner)
            .arg(base)
            .arg(if requeue { self.entry.as_str() } else { "" })
            .arg(self.waiter_timeout_ms);
        let sent = Instant::now();
        let reply: Vec<i64> = inv
            .invoke_async(conn)
            .await
            .map_err(|e| LockError::from_redis("fair release", e))?;
        match reply.as_slice() {
            [-1] => Ok(Released::NotHeld),
            [0] => Ok(Released::Done),
            [1, t] => Ok(Released::Again {
                token: token(*t, "fair release")?,
                sent,
            }),
            other => Err(LockError::UnexpectedReply {
                script: "fair release",
                detail: format!("{other:?}"),
            }),
        }
    }

    /// Leave the queue and release the lock if this client holds it. Idempotent.
    pub(crate) async fn leave(
        &self,
        conn: &mut crate::RedisConnection,
    ) -> redis::RedisResult<bool> {
        let mut inv = self.invocation(&self.scripts.fair_leave);
        inv.arg(&self.owner).arg(&self.entry);
        let held: i64 = inv.invoke_async(conn).await?;
        Ok(held == 1)
    }

    /// [`FairCommands::leave`], retried until Redis answers or `give_up` passes.
    pub(crate) async fn leave_retrying(&self, conn: &mut crate::RedisConnection, give_up: Instant) {
        let unanswered = |e: &redis::RedisError| !outcome_known(e);
        let leave = || {
            let mut conn = conn.clone();
            async move { self.leave(&mut conn).await }
        };
        if let Err(err) = crate::retry::until_answered(give_up, unanswered, leave).await {
            tracing::warn!(lock = %self.keys.name, error = %err,
                "could not leave a fair lock's queue; the place times out, a hold expires");
        }
    }
}

fn token(value: i64, script: &'static str) -> Result<u64, LockError> {
    u64::try_from(value).map_err(|_| LockError::UnexpectedReply {
        script,
        detail: format!("token {value}"),
    })
}
