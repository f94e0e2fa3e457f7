//! `redis-lock`: one watchdog lock per item (`<prefix>:<sku>`) around the read-modify-write,
//! whatever segment it touches, and fenced writes. The segments buy no parallelism.

use super::Strategy;
use super::fenced::FencedLock;
use crate::engine::Stock;

/// One lock for the whole item.
#[derive(Debug)]
pub(crate) struct RedisLock;

impl FencedLock for RedisLock {
    fn strategy(&self) -> Strategy {
        Strategy::RedisLock
    }

    fn lock_name(&self, stock: &Stock, sku: &str, _segment: i32) -> String {
        stock.item_lock(sku)
    }

    fn item_wide(&self) -> bool {
        true
    }
}
