//! Who in a group gets units: the pure part of group deduction, separate from I/O so that its
//! rules can be tested on their own.
//!
//! The rules make each request's answer the one it would have got alone:
//! - requests are served in arrival order, each from what the ones before it left; one that no
//!   longer fits is short (its caller moves on to the next segment, as alone), and a later,
//!   smaller one may still fit;
//! - a second request with an order id already in the group is not a second deduction: it gets
//!   the first one's fate (a replay when the first took units, short when it was short);
//! - a request whose ledger row could not be inserted (the order already has a deduction,
//!   committed by another instance or an earlier request) is a duplicate: its units go back to
//!   the group and the short ones are tried again.

use std::collections::HashMap;

/// One request's fate in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not decided yet (only while planning).
    Pending,
    /// Takes its units.
    Take,
    /// Did not fit in what was left.
    Short,
    /// The order already has a deduction: replay it.
    Duplicate,
}

/// The allocation of one segment's units over a group.
#[derive(Debug, Clone)]
pub struct GroupPlan {
    qty: Vec<i64>,
    /// For a repeated order id, the index of its first occurrence.
    first: Vec<Option<usize>>,
    verdicts: Vec<Verdict>,
    left: i64,
}

impl GroupPlan {
    /// Plan `(order_id, qty)` requests, in arrival order, over `available` units.
    pub fn new<'a>(requests: impl IntoIterator<Item = (&'a str, i64)>, available: i64) -> Self {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut qty = Vec::new();
        let mut first = Vec::new();
        for (i, (order_id, q)) in requests.into_iter().enumerate() {
            qty.push(q);
            first.push(seen.get(order_id).copied());
            seen.entry(order_id).or_insert(i);
        }
        GroupPlan {
            verdicts: vec![Verdict::Pending; qty.len()],
            qty,
            first,
            left: available,
        }
    }

    /// Units left after everything taken so far.
    pub fn left(&self) -> i64 {
        self.left
    }

    /// Give units to every pending request (first occurrences, in order) that fits in what
    /// is left; their indices, empty when none fits.
    pub fn fit(&mut self) -> Vec<usize> {
        let mut picked = Vec::new();
        for i in 0..self.qty.len() {
            if self.verdicts[i] == Verdict::Pending
                && self.first[i].is_none()
                && self.qty[i] <= self.left
            {
                self.verdicts[i] = Verdict::Take;
                self.left -= self.qty[i];
                picked.push(i);
            }
        }
        picked
    }

    /// Of the `picked` requests, those for which `recorded` is false turn out to be duplicates
    /// and give their units back. True when any did (another `fit` may place more).
    pub fn settle(&mut self, picked: &[usize], recorded: impl Fn(usize) -> bool) -> bool {
        let mut freed = false;
        for &i in picked {
            if !recorded(i) {
                self.verdicts[i] = Verdict::Duplicate;
                self.left += self.qty[i];
                freed = true;
            }
        }
        freed
    }

    /// Every request's verdict: the pending ones are short, repeats follow their first.
    pub fn verdicts(&self) -> Vec<Verdict> {
        (0..self.qty.len())
            .map(|i| {
                let own = |v: Verdict| {
                    if v == Verdict::Pending {
                        Verdict::Short
                    } else {
                        v
                    }
                };
                match self.first[i] {
                    None => own(self.verdicts[i]),
                    Some(j) => match own(self.verdicts[j]) {
                        Verdict::Take => Verdict::Duplicate,
                        other => other,
                    },
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::Verdict::{Duplicate, Short, Take};
    use super::*;

    fn plan(requests: &[(&str, i64)], available: i64) -> GroupPlan {
        GroupPlan::new(requests.iter().copied(), available)
    }

    #[test]
    fn arrival_order_until_it_no_longer_fits_and_smaller_ones_after() {
        let mut p = plan(&[("a", 2), ("b", 3), ("c", 1), ("d", 1)], 4);
        assert_eq!(p.fit(), vec![0, 2, 3]);
        assert!(!p.settle(&[0, 2, 3], |_| true));
        assert_eq!(p.left(), 0);
        assert_eq!(p.verdicts(), vec![Take, Short, Take, Take]);
    }

    #[test]
    fn a_repeated_order_id_follows_its_first() {
        let mut p = plan(&[("a", 1), ("a", 1), ("b", 5), ("b", 5)], 3);
        assert_eq!(p.fit(), vec![0]);
        p.settle(&[0], |_| true);
        assert_eq!(p.left(), 2, "the repeat takes nothing");
        assert_eq!(p.verdicts(), vec![Take, Duplicate, Short, Short]);
    }

    #[test]
    fn an_order_already_recorded_gives_its_units_to_the_next() {
        let mut p = plan(&[("old", 2), ("new", 2)], 2);
        let picked = p.fit();
        assert_eq!(picked, vec![0]);
        assert!(
            p.settle(&picked, |i| i != 0),
            "old was already in the ledger"
        );
        assert_eq!(p.fit(), vec![1]);
        assert!(!p.settle(&[1], |_| true));
        assert_eq!(p.left(), 0);
        assert_eq!(p.verdicts(), vec![Duplicate, Take]);
        assert!(p.fit().is_empty());
    }

    #[test]
    fn nothing_left_means_everyone_is_short() {
        let mut p = plan(&[("a", 1), ("b", 1)], 0);
        assert!(p.fit().is_empty());
        assert_eq!(p.verdicts(), vec![Short, Short]);
    }
}
