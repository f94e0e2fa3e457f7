//! How many segments an item has, remembered for a moment.
//!
//! A combined deduction needs only the segment count before it joins a segment's queue (the
//! group reads the generation, and finds a repeated order id, inside its own transaction), so a
//! request need not ask PostgreSQL anything on its own. A count that went stale because another
//! instance reset the item is harmless: a segment that no longer exists has no units for
//! anyone, and the request goes on to the next one or to the all-segments fallback, which reads
//! the database.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Segment counts by SKU, each trusted for `ttl`.
#[derive(Debug)]
pub struct ShapeCache {
    ttl: Duration,
    known: Mutex<HashMap<String, (i32, Instant)>>,
}

impl ShapeCache {
    /// An empty cache whose entries are trusted for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        ShapeCache {
            ttl,
            known: Mutex::new(HashMap::new()),
        }
    }

    fn known(&self) -> MutexGuard<'_, HashMap<String, (i32, Instant)>> {
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The segment count of `sku`, if seen within the TTL.
    pub fn segments(&self, sku: &str) -> Option<i32> {
        self.known()
            .get(sku)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(segments, _)| *segments)
    }

    /// Remember `sku`'s segment count.
    pub fn remember(&self, sku: &str, segments: i32) {
        self.known()
            .insert(sku.to_owned(), (segments, Instant::now()));
    }

    /// Forget `sku` (this instance reset it).
    pub fn forget(&self, sku: &str) {
        self.known().remove(sku);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_until_the_ttl_or_forgotten() {
        let c = ShapeCache::new(Duration::from_millis(50));
        assert_eq!(c.segments("a"), None);
        c.remember("a", 8);
        assert_eq!(c.segments("a"), Some(8));
        c.forget("a");
        assert_eq!(c.segments("a"), None);
        c.remember("a", 4);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(c.segments("a"), None);
    }
}
