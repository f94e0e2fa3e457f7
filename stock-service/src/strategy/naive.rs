//! `naive`: read-modify-write with no concurrency control at all. It oversells: the negative
//! control that shows the audit can fail.

use super::Strategy;
use super::concurrency::Concurrency;

/// No lock, no guard, and no combining: a group would serialize one segment's deductions
/// within an instance, which is concurrency control, and the negative control must have none.
#[derive(Debug)]
pub(crate) struct Naive;

impl Concurrency for Naive {
    fn strategy(&self) -> Strategy {
        Strategy::Naive
    }

    fn combines(&self) -> bool {
        false
    }
}
