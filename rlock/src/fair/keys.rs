//! Redis names of one fair lock: the lock hash and fencing counter of [`crate::LockKeys`],
//! plus the waiter queue, the waiters' deadlines and the grant channel, all with one hash tag.

use crate::LockKeys;

/// The Redis names used by one fair lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FairKeys {
    /// The lock's logical name.
    pub name: String,
    /// The hash holding the owning client and the tenure's first token.
    pub lock: String,
    /// The fencing counter (shared with an [`crate::RLock`] of the same name).
    pub fence: String,
    /// The waiter queue, in arrival order.
    pub queue: String,
    /// The waiters' deadlines (a sorted set).
    pub waiters: String,
    /// The channel on which grants are announced.
    pub channel: String,
}

impl FairKeys {
    /// The names for `name` under `prefix`.
    pub fn new(prefix: &str, name: &str) -> Self {
        let base = LockKeys::new(prefix, name);
        FairKeys {
            queue: format!("{}:queue", base.lock),
            waiters: format!("{}:waiters", base.lock),
            channel: format!("{}:granted", base.lock),
            name: base.name,
            lock: base.lock,
            fence: base.fence,
        }
    }
}
