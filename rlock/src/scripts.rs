//! The Lua scripts, kept as `.lua` files and sent with EVALSHA (redis-rs reloads a script
//! automatically when the server answers NOSCRIPT, e.g. after a restart).
//!
//! The scripts that wake waiters come in two editions: `PUBLISH` for a single server, and
//! `SPUBLISH` (sharded pub/sub, Redis 7.0+) for a cluster, where a plain `PUBLISH` would be
//! broadcast to every node and the channel must live in the lock's own slot.

use std::sync::LazyLock;

use redis::Script;

/// Acquire or re-enter (see `lua/acquire.lua`).
pub(crate) static ACQUIRE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/acquire.lua")));
/// Batched watchdog renewal (see `lua/renew.lua`).
pub(crate) static RENEW: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/renew.lua")));
/// RedLock's fence write-back (see `lua/redlock_fence.lua`).
pub(crate) static REDLOCK_FENCE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/redlock_fence.lua")));

/// Raise a fencing counter to a floor (see `lua/raise_fence.lua`).
pub(crate) static RAISE_FENCE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/raise_fence.lua")));

/// Message published on a lock's channel when it becomes free (Redisson's UNLOCK_MESSAGE).
pub(crate) const RELEASED_MESSAGE: &str = "0";

/// The scripts that publish to a lock's channel, in one edition (see [`publishing`]).
#[derive(Debug)]
pub(crate) struct Publishing {
    /// Release one hold (see `lua/release.lua`).
    pub(crate) release: Script,
    /// Take back an acquisition whose outcome is unknown (see `lua/undo_acquire.lua`).
    pub(crate) undo_acquire: Script,
    /// Delete a lock regardless of hold count (see `lua/force_release.lua`).
    pub(crate) force_release: Script,
    /// The fair lock's take-or-queue (`lua/fair/acquire.lua` after `lua/fair/common.lua`).
    pub(crate) fair_acquire: Script,
    /// The fair lock's release with hand-off (`lua/fair/release.lua`).
    pub(crate) fair_release: Script,
    /// The fair lock's leave-the-queue-and-hand-on (`lua/fair/leave.lua`).
    pub(crate) fair_leave: Script,
    /// The fair lock's re-seeding of a fencing counter found absent (`lua/fair/seed.lua`).
    pub(crate) fair_seed: Script,
}

impl Publishing {
    fn new(sharded: bool) -> Self {
        let edition = |source: &str| {
            if sharded {
                Script::new(&source.replace("redis.call('publish'", "redis.call('spublish'"))
            } else {
                Script::new(source)
            }
        };
        const COMMON: &str = include_str!("../lua/fair/common.lua");
        Publishing {
            release: edition(include_str!("../lua/release.lua")),
            undo_acquire: edition(include_str!("../lua/undo_acquire.lua")),
            force_release: edition(include_str!("../lua/force_release.lua")),
            fair_acquire: edition(&format!(
                "{COMMON}{}",
                include_str!("../lua/fair/acquire.lua")
            )),
            fair_release: edition(&format!(
                "{COMMON}{}",
                include_str!("../lua/fair/release.lua")
            )),
            fair_leave: edition(&format!(
                "{COMMON}{}",
                include_str!("../lua/fair/leave.lua")
            )),
            fair_seed: edition(&format!("{COMMON}{}", include_str!("../lua/fair/seed.lua"))),
        }
    }
}

static PLAIN: LazyLock<Publishing> = LazyLock::new(|| Publishing::new(false));
static SHARDED: LazyLock<Publishing> = LazyLock::new(|| Publishing::new(true));

/// The publishing scripts for a single server (`PUBLISH`) or a cluster (`SPUBLISH`).
pub(crate) fn publishing(sharded: bool) -> &'static Publishing {
    if sharded { &SHARDED } else { &PLAIN }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_edition_publishes_sharded_and_nothing_else_differs() {
        let (plain, sharded) = (publishing(false), publishing(true));
        assert_ne!(plain.release.get_hash(), sharded.release.get_hash());
        assert_ne!(
            plain.fair_release.get_hash(),
            sharded.fair_release.get_hash()
        );
    }
}
