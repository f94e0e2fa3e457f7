//! The Lua scripts, kept as `.lua` files and sent with EVALSHA (redis-rs reloads a script
//! automatically when the server answers NOSCRIPT, e.g. after a restart).

use std::sync::LazyLock;

use redis::Script;

/// Acquire or re-enter (see `lua/acquire.lua`).
pub(crate) static ACQUIRE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/acquire.lua")));
/// Release one hold (see `lua/release.lua`).
pub(crate) static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/release.lua")));
/// Batched watchdog renewal (see `lua/renew.lua`).
pub(crate) static RENEW: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/renew.lua")));
/// Take back an acquisition whose outcome is unknown (see `lua/undo_acquire.lua`).
pub(crate) static UNDO_ACQUIRE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/undo_acquire.lua")));
/// Delete a lock regardless of hold count (see `lua/force_release.lua`).
pub(crate) static FORCE_RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/force_release.lua")));
/// RedLock's fence write-back (see `lua/redlock_fence.lua`).
pub(crate) static REDLOCK_FENCE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/redlock_fence.lua")));

/// Raise a fencing counter to a floor (see `lua/raise_fence.lua`).
pub(crate) static RAISE_FENCE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/raise_fence.lua")));

/// Message published on a lock's channel when it becomes free (Redisson's UNLOCK_MESSAGE).
pub(crate) const RELEASED_MESSAGE: &str = "0";

/// The fair lock's take-or-queue (see `lua/fair/acquire.lua`, after `lua/fair/common.lua`).
pub(crate) static FAIR_ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("../lua/fair/common.lua"),
        include_str!("../lua/fair/acquire.lua")
    ))
});
/// The fair lock's release with hand-off (see `lua/fair/release.lua`).
pub(crate) static FAIR_RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("../lua/fair/common.lua"),
        include_str!("../lua/fair/release.lua")
    ))
});
/// The fair lock's leave-the-queue-and-hand-on (see `lua/fair/leave.lua`).
pub(crate) static FAIR_LEAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("../lua/fair/common.lua"),
        include_str!("../lua/fair/leave.lua")
    ))
});
