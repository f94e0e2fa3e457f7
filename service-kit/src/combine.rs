//! Request combining: the queues behind group deduction (stock-service) and grouped order
//! claims and settles (order-service).
//!
//! Concurrent requests with the same key in one instance (a segment, an item) join that key's
//! queue. The first to find the queue idle starts a worker (a task of its own, so that no
//! caller's cancellation can stop a group half way); the worker drains up to `max` queued
//! requests, applies them as one group (one transaction), and drains again until the queue is
//! empty. A lone request therefore never waits for followers; under load the queue fills by
//! itself while the previous group commits (PolarDB's "one group collects while the other
//! commits").
//!
//! The bookkeeping is one `std::sync::Mutex` around a map: it is held for a push or a drain
//! only, never across an `.await` (the mini-redis `db.rs` reasoning).

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Per-key queues. A key is in the map exactly while a worker is draining it.
#[derive(Debug)]
pub struct Combiner<K, R> {
    queues: Mutex<HashMap<K, VecDeque<R>>>,
    max: usize,
    batches: AtomicU64,
    drained: AtomicU64,
}

/// How much combining happened so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CombineStats {
    /// Batches handed to workers.
    pub batches: u64,
    /// Requests in them.
    pub requests: u64,
}

impl<K: Hash + Eq + Clone, R> Combiner<K, R> {
    /// Queues whose groups hold at most `max` requests (at least 1).
    pub fn new(max: usize) -> Self {
        Combiner {
            queues: Mutex::new(HashMap::new()),
            max: max.max(1),
            batches: AtomicU64::new(0),
            drained: AtomicU64::new(0),
        }
    }

    fn queues(&self) -> MutexGuard<'_, HashMap<K, VecDeque<R>>> {
        // A panic while the lock is held leaves the map consistent (pushes and drains are
        // single steps), so a poisoned lock is still usable.
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queue `request` under `key`. `Some(worker)` when no worker was draining that key: the
    /// caller must run [`Worker::next_batch`] until it comes back empty (in a task of its own).
    pub fn push(self: &Arc<Self>, key: K, request: R) -> Option<Worker<K, R>> {
        let mut queues = self.queues();
        if let Some(queue) = queues.get_mut(&key) {
            queue.push_back(request);
            return None;
        }
        queues.insert(key.clone(), VecDeque::from([request]));
        Some(Worker {
            combiner: Arc::clone(self),
            key,
            done: false,
        })
    }

    /// Batches and requests drained so far (tests check that groups larger than one form).
    pub fn stats(&self) -> CombineStats {
        CombineStats {
            batches: self.batches.load(Ordering::Relaxed),
            requests: self.drained.load(Ordering::Relaxed),
        }
    }
}

/// The right and duty to drain one key's queue. Dropped early (its task panicked or was
/// aborted), it takes the queue with it: the queued requests' reply channels close, so every
/// waiter gets an answer (an error) instead of hanging, and the next push starts a new worker.
#[derive(Debug)]
pub struct Worker<K: Hash + Eq + Clone, R> {
    combiner: Arc<Combiner<K, R>>,
    key: K,
    done: bool,
}

impl<K: Hash + Eq + Clone, R> Worker<K, R> {
    /// The key this worker drains.
    pub fn key(&self) -> &K {
        &self.key
    }

    /// Whether nothing is queued right now (the worker is not finished by asking: a
    /// request may still arrive before the next [`Worker::next_batch`]). A worker that keeps a
    /// resource across batches lets go of it when its queue is idle, before that last call.
    pub fn is_idle(&self) -> bool {
        self.combiner
            .queues()
            .get(&self.key)
            .is_none_or(VecDeque::is_empty)
    }

    /// Up to `max` queued requests, oldest first. Empty when the queue is idle: the key is then
    /// released (the next push starts a new worker) and this worker is finished.
    pub fn next_batch(&mut self) -> Vec<R> {
        if self.done {
            return Vec::new();
        }
        let mut queues = self.combiner.queues();
        let Some(queue) = queues.get_mut(&self.key) else {
            self.done = true;
            return Vec::new();
        };
        if queue.is_empty() {
            queues.remove(&self.key);
            self.done = true;
            return Vec::new();
        }
        let n = queue.len().min(self.combiner.max);
        self.combiner.batches.fetch_add(1, Ordering::Relaxed);
        self.combiner
            .drained
            .fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
        queue.drain(..n).collect()
    }
}

impl<K: Hash + Eq + Clone, R> Drop for Worker<K, R> {
    fn drop(&mut self) {
        if !self.done {
            self.combiner.queues().remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_push_makes_the_worker_and_the_rest_queue_behind_it() {
        let c = Arc::new(Combiner::new(2));
        let mut worker = c.push("a", 1).expect("idle queue: a worker");
        assert!(c.push("a", 2).is_none());
        assert!(c.push("a", 3).is_none());
        assert!(c.push("b", 9).is_some(), "another key has its own worker");
        assert_eq!(worker.next_batch(), vec![1, 2]);
        assert_eq!(worker.next_batch(), vec![3]);
        assert!(c.push("a", 4).is_none(), "still draining");
        assert!(!worker.is_idle());
        assert_eq!(worker.next_batch(), vec![4]);
        assert!(worker.is_idle());
        assert!(worker.next_batch().is_empty());
        assert!(
            c.push("a", 5).is_some(),
            "drained: the next push leads again"
        );
    }

    #[test]
    fn a_dropped_worker_closes_its_queue() {
        let c = Arc::new(Combiner::new(8));
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let worker = c.push("a", tx.clone()).expect("worker");
        assert!(c.push("a", tx).is_none());
        drop(worker);
        assert!(rx.recv().is_err(), "every queued sender was dropped");
        assert!(c.push("a", std::sync::mpsc::channel().0).is_some());
    }
}
