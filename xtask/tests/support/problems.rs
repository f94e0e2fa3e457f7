//! How the offline checks report: every problem found, then one failure listing them.

use std::collections::BTreeSet;

/// Fails with `headline` and the list when `problems` is not empty. Repeats are dropped:
/// overlays repeat the base's findings, instances of one service and containers of one
/// workload repeat theirs.
pub fn assert_problems(headline: &str, mut problems: Vec<String>) {
    let mut seen = BTreeSet::new();
    problems.retain(|p| seen.insert(p.clone()));
    assert!(
        problems.is_empty(),
        "{headline}:\n  - {}",
        problems.join("\n  - ")
    );
}
