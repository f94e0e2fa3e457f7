//! Where a deduction looks first. Alone: a random segment, which spreads the lock contention.
//! Combining: this instance's home segment, the same for all of its requests, so that they
//! queue up together and its groups are as large as they can be, while other instances, with
//! other homes, mostly work on other segments.

use std::sync::atomic::Ordering;

use rand::Rng;

use crate::engine::Stock;

impl Stock {
    /// The order in which a deduction tries the segments. Alone: from a random one on, which
    /// spreads the lock contention. Combining: from this instance's home (`home`) on, the same
    /// for all of its requests, so that they queue up together and its groups are as large as
    /// they can be, while other instances, with other homes, mostly work on other segments.
    pub(crate) fn visit_order(&self, segments: i32, home: u32) -> impl Iterator<Item = i32> {
        let n = segments.max(1);
        let start = if self.combining() {
            i32::try_from(home % n.unsigned_abs()).unwrap_or(0)
        } else {
            rand::rng().random_range(0..n)
        };
        (0..n).map(move |i| (start + i) % n)
    }

    /// The home segment (as read: `seen`) had too little, or another instance holds its lock:
    /// move this instance's home, once however many requests found it so at the same time, to
    /// a random other segment of the `segments`. Random, not the next one: two instances whose
    /// homes met would otherwise walk on together, segment after segment, contending for each.
    pub(crate) fn move_home(&self, seen: u32, segments: i32) {
        let n = segments.max(1).unsigned_abs();
        if n < 2 {
            return;
        }
        let next = (seen % n + rand::rng().random_range(1..n)) % n;
        let _ = self
            .home
            .compare_exchange(seen, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// The instance's home is `segment` of `sku` and its lock was busy: another instance works
    /// there; move on (see [`Stock::move_home`]).
    pub(crate) fn leave_contended_home(&self, sku: &str, segment: i32) {
        // Only combined deductions have a home (alone, each request starts at random).
        if !self.combining() {
            return;
        }
        let Some(segments) = self.shapes.segments(sku) else {
            return;
        };
        let home = self.home.load(Ordering::Relaxed);
        if self.visit_order(segments, home).next() == Some(segment) {
            self.move_home(home, segments);
        }
    }

    /// Where redis-atomic's take starts: the first segment of [`Stock::visit_order`].
    pub(crate) fn first_segment(&self, segments: i32) -> i32 {
        self.visit_order(segments, self.home.load(Ordering::Relaxed))
            .next()
            .unwrap_or(0)
    }
}
