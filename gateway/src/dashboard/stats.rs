//! The dashboard's arithmetic: per-interval deltas of cumulative counters and histogram
//! buckets (with counter resets), rates, and quantiles estimated from buckets the way
//! Prometheus' `histogram_quantile` does.

/// A cumulative histogram: `(upper bound, observations ≤ bound)`, sorted by bound; the last
/// bound is `+Inf` when the exporter wrote one (it always does).
pub type Buckets = Vec<(f64, f64)>;

/// Adds `count` to the bucket with upper bound `le` (inserting it in order if new).
pub fn add_bucket(buckets: &mut Buckets, le: f64, count: f64) {
    match buckets.binary_search_by(|(bound, _)| bound.total_cmp(&le)) {
        Ok(i) => buckets[i].1 += count,
        Err(i) => buckets.insert(i, (le, count)),
    }
}

/// Adds every bucket of `other` into `into`.
pub fn merge(into: &mut Buckets, other: &Buckets) {
    for &(le, count) in other {
        add_bucket(into, le, count);
    }
}

/// The observations between two scrapes of one cumulative histogram: `current - previous`
/// bucket by bucket. With no previous scrape there is no interval yet (`None`). When any
/// bucket went down the source restarted, and everything it has now is new: `current`.
pub fn delta(current: &Buckets, previous: Option<&Buckets>) -> Option<Buckets> {
    let previous = previous?;
    let before = |le: f64| {
        previous
            .iter()
            .find(|(bound, _)| bound.total_cmp(&le).is_eq())
            .map_or(0.0, |&(_, count)| count)
    };
    let mut out = Vec::with_capacity(current.len());
    for &(le, count) in current {
        let diff = count - before(le);
        if diff < 0.0 {
            return Some(current.clone());
        }
        out.push((le, diff));
    }
    Some(out)
}

/// The increase of a cumulative counter between two readings; a reading lower than the
/// previous means the counter restarted, so the whole current value is the increase.
pub fn counter_delta(current: f64, previous: f64) -> f64 {
    if current >= previous {
        current - previous
    } else {
        current
    }
}

/// `delta / seconds`; `None` for an empty or negative interval.
pub fn rate(delta: f64, seconds: f64) -> Option<f64> {
    (seconds > 0.0).then(|| delta / seconds)
}

/// The total number of observations of cumulative `buckets` (the highest bucket's count).
pub fn total(buckets: &Buckets) -> f64 {
    buckets.last().map_or(0.0, |&(_, count)| count)
}

/// Estimates the `q` quantile (0 ≤ q ≤ 1) of cumulative `buckets`, as Prometheus'
/// `histogram_quantile`: find the bucket holding rank `q × total` and interpolate linearly
/// inside it (the first bucket starts at 0 when its bound is positive). A rank in the `+Inf`
/// bucket answers the highest finite bound. `None` without observations.
pub fn quantile(q: f64, buckets: &Buckets) -> Option<f64> {
    if !(0.0..=1.0).contains(&q) {
        return None;
    }
    let total = total(buckets);
    if total <= 0.0 || total.is_nan() {
        return None;
    }
    let rank = q * total;
    let mut lower_bound = 0.0;
    let mut lower_count = 0.0;
    for (i, &(le, count)) in buckets.iter().enumerate() {
        if count >= rank && count > lower_count {
            if le.is_infinite() {
                // Prometheus answers the highest finite bound for the +Inf bucket.
                return Some(if i == 0 { 0.0 } else { lower_bound });
            }
            let start = if i == 0 && le <= 0.0 { le } else { lower_bound };
            let fraction = (rank - lower_count) / (count - lower_count);
            return Some(start + (le - start) * fraction);
        }
        lower_bound = le;
        lower_count = count;
    }
    // Counts not monotonic (should not happen): the highest bound seen.
    Some(lower_bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-9)
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        // 10 observations ≤ 1, 20 more in (1, 2], 10 more in (2, 4], none above.
        let b: Buckets = vec![(1.0, 10.0), (2.0, 30.0), (4.0, 40.0), (f64::INFINITY, 40.0)];
        // rank 20 is halfway through the (1, 2] bucket's 20 observations.
        assert!(close(quantile(0.5, &b), 1.5));
        // rank 39.6 is 9.6/10 of the way through (2, 4].
        assert!(close(quantile(0.99, &b), 2.0 + 2.0 * 0.96));
        // rank 5 is halfway through the first bucket, which starts at 0.
        assert!(close(quantile(0.125, &b), 0.5));
        assert!(close(quantile(0.0, &b), 0.0));
        assert!(close(quantile(1.0, &b), 4.0));
    }

    #[test]
    fn a_rank_in_the_inf_bucket_answers_the_highest_finite_bound() {
        let b: Buckets = vec![(0.5, 1.0), (1.0, 2.0), (f64::INFINITY, 10.0)];
        assert!(close(quantile(0.99, &b), 1.0));
        let only_inf: Buckets = vec![(f64::INFINITY, 3.0)];
        assert!(close(quantile(0.5, &only_inf), 0.0));
    }

    #[test]
    fn empty_histograms_and_bad_quantiles_have_no_answer() {
        assert_eq!(quantile(0.5, &vec![]), None);
        assert_eq!(quantile(0.5, &vec![(1.0, 0.0), (f64::INFINITY, 0.0)]), None);
        assert_eq!(quantile(1.5, &vec![(1.0, 1.0)]), None);
    }

    #[test]
    fn deltas_subtract_per_bucket_and_survive_restarts() {
        let before: Buckets = vec![(1.0, 5.0), (2.0, 8.0), (f64::INFINITY, 9.0)];
        let after: Buckets = vec![(1.0, 6.0), (2.0, 12.0), (f64::INFINITY, 14.0)];
        assert_eq!(
            delta(&after, Some(&before)),
            Some(vec![(1.0, 1.0), (2.0, 4.0), (f64::INFINITY, 5.0)])
        );
        assert_eq!(delta(&after, None), None);
        // The source restarted: its counts went down, all it has now is new.
        let restarted: Buckets = vec![(1.0, 1.0), (2.0, 1.0), (f64::INFINITY, 2.0)];
        assert_eq!(delta(&restarted, Some(&after)), Some(restarted.clone()));
        // A bucket the previous scrape did not have counts from zero.
        let wider: Buckets = vec![(0.5, 2.0), (1.0, 6.0), (2.0, 12.0), (f64::INFINITY, 14.0)];
        assert_eq!(
            delta(&wider, Some(&after)),
            Some(vec![
                (0.5, 2.0),
                (1.0, 0.0),
                (2.0, 0.0),
                (f64::INFINITY, 0.0)
            ])
        );
    }

    #[test]
    fn merged_instances_give_the_combined_quantile() {
        // Two instances with the same bounds (they share the bucket layout).
        let mut sum: Buckets = Vec::new();
        merge(
            &mut sum,
            &vec![(1.0, 10.0), (2.0, 10.0), (f64::INFINITY, 10.0)],
        );
        merge(
            &mut sum,
            &vec![(1.0, 0.0), (2.0, 10.0), (f64::INFINITY, 10.0)],
        );
        assert_eq!(sum, vec![(1.0, 10.0), (2.0, 20.0), (f64::INFINITY, 20.0)]);
        // 10 fast, 10 slow: the median is the boundary, p75 halfway into the slow bucket.
        assert!(close(quantile(0.5, &sum), 1.0));
        assert!(close(quantile(0.75, &sum), 1.5));
    }

    #[test]
    fn counters_and_rates() {
        assert_eq!(counter_delta(15.0, 10.0), 5.0);
        assert_eq!(counter_delta(3.0, 10.0), 3.0);
        assert_eq!(rate(10.0, 2.0), Some(5.0));
        assert_eq!(rate(10.0, 0.0), None);
    }
}
