//! `segmented` (the default): one watchdog lock per segment (`<prefix>:<sku>:<n>`), several
//! segments under a MultiLock (all or nothing, canonical order), fenced writes. Deductions of
//! different segments run in parallel.

use super::Strategy;
use super::fenced::FencedLock;
use crate::engine::Stock;

/// A lock per segment.
#[derive(Debug)]
pub(crate) struct Segmented;

impl FencedLock for Segmented {
    fn strategy(&self) -> Strategy {
        Strategy::Segmented
    }

    fn lock_name(&self, stock: &Stock, sku: &str, segment: i32) -> String {
        stock.segment_lock(sku, segment)
    }
}
