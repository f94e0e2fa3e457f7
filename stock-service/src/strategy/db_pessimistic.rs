//! `db-pessimistic`: the segment rows are locked by the read (`SELECT … FOR UPDATE`) and stay
//! locked until the transaction ends. PostgreSQL is the lock; no Redis lock, no write guard.

use super::Strategy;
use super::concurrency::Concurrency;

/// Row locks taken by the critical section's read.
#[derive(Debug)]
pub(crate) struct DbPessimistic;

impl Concurrency for DbPessimistic {
    fn strategy(&self) -> Strategy {
        Strategy::DbPessimistic
    }

    fn locks_rows(&self) -> bool {
        true
    }
}
