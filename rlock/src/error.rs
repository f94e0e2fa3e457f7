//! Errors returned by the lock library.

use std::time::Duration;

/// What can go wrong while taking, holding or releasing a lock.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// Redis answered with an error, or could not be reached before anything was sent.
    /// The outcome of the operation is known: nothing changed.
    #[error("redis error: {0}")]
    Redis(#[from] redis::RedisError),

    /// Redis did not answer in time or the connection broke while a command was in flight,
    /// so the command may or may not have run. For an acquisition the library has already
    /// taken back whatever the attempt may have added (or, if Redis stayed unreachable,
    /// left it to expire with its lease); nothing is held on the caller's behalf.
    #[error("outcome of `{operation}` unknown: {source}")]
    OutcomeUnknown {
        /// The operation whose outcome is unknown.
        operation: &'static str,
        /// The transport error.
        #[source]
        source: redis::RedisError,
    },

    /// The caller does not hold the lock (never did, already released it, or lost it when
    /// its lease expired). Nothing was changed.
    #[error("lock `{name}` is not held by this owner")]
    NotHeld {
        /// The lock name.
        name: String,
    },

    /// The acquisition was written, but fewer replicas than required acknowledged it within
    /// the timeout; the lock was released again.
    #[error("only {acked} of {wanted} replicas acknowledged the acquisition")]
    ReplicaSync {
        /// Replicas that acknowledged.
        acked: usize,
        /// Replicas required.
        wanted: usize,
    },

    /// RedLock could not reach a quorum of masters within the lease's validity.
    #[error("redlock quorum not reached: {acquired} of {masters} masters (need {quorum})")]
    NoQuorum {
        /// Masters on which the lock was acquired.
        acquired: usize,
        /// Masters configured.
        masters: usize,
        /// Masters required.
        quorum: usize,
    },

    /// A lease, wait or lock name that cannot be used.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// A script returned something the library does not understand.
    #[error("unexpected reply from {script}: {detail}")]
    UnexpectedReply {
        /// The script.
        script: &'static str,
        /// What was wrong.
        detail: String,
    },

    /// The background task that ran a command was lost (runtime shutting down).
    #[error("lock operation aborted: the runtime is shutting down")]
    Aborted,

    /// The wait budget ran out before the lock could be taken. Only returned by
    /// operations that have no `Option` to say "not acquired" (e.g. [`crate::MultiLock`]
    /// helpers); [`crate::RLock::try_acquire`] returns `Ok(None)` instead.
    #[error("timed out after {0:?} waiting for the lock")]
    Timeout(Duration),
}

impl LockError {
    /// Classify a redis error: a reply from the server means the outcome is known; an I/O
    /// error, timeout or dropped connection means the command may have run.
    pub(crate) fn from_redis(operation: &'static str, err: redis::RedisError) -> Self {
        if outcome_known(&err) {
            LockError::Redis(err)
        } else {
            LockError::OutcomeUnknown {
                operation,
                source: err,
            }
        }
    }
}

/// True when Redis itself answered with an error (so the command did not take effect).
pub(crate) fn outcome_known(err: &redis::RedisError) -> bool {
    matches!(err.kind(), redis::ErrorKind::Server(_))
        || err.is_connection_refusal()
        || matches!(
            err.kind(),
            redis::ErrorKind::InvalidClientConfig | redis::ErrorKind::AuthenticationFailed
        )
}

/// Result alias for the lock library.
pub type Result<T, E = LockError> = std::result::Result<T, E>;
