//! The stock-service's instruments (OpenTelemetry meter API; the binary installs the
//! exporter). The task that keeps `stock.oversold.units` current is in `oversold.rs`.
//!
//! docs/telemetry.md lists every instrument with its Prometheus name and labels.

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter};

use crate::store::ItemStock;
use crate::strategy::Strategy;

/// Counters, histograms and gauges of one instance.
#[derive(Debug, Clone)]
pub struct StockMetrics {
    outcomes: Counter<u64>,
    lock_wait: Histogram<f64>,
    lock_hold: Histogram<f64>,
    fence_rejections: Counter<u64>,
    fence_reseeds: Counter<u64>,
    sold_out_fast: Counter<u64>,
    optimistic_conflicts: Counter<u64>,
    atomic_drift: Counter<u64>,
    counters_reseeded: Counter<u64>,
    counters_reconciled: Counter<u64>,
    available: Gauge<i64>,
    oversold: Gauge<i64>,
    group_size: Histogram<u64>,
}

impl StockMetrics {
    /// Create the instruments on `meter`.
    pub fn new(meter: &Meter) -> Self {
        StockMetrics {
            outcomes: meter
                .u64_counter("stock.operations")
                .with_description("Deductions and releases by strategy and outcome")
                .build(),
            lock_wait: meter
                .f64_histogram("stock.lock.wait.duration")
                .with_unit("s")
                .with_description(
                    "Time to take the strategy's lock(s) for one critical section, by segment \
                     (`all` for one lock over the whole item); db-pessimistic: the row locks",
                )
                .with_boundaries(rlock::metrics::duration_buckets())
                .build(),
            lock_hold: meter
                .f64_histogram("stock.lock.hold.duration")
                .with_unit("s")
                .with_description(
                    "Time the strategy's lock(s) were held, from acquired to released, by segment",
                )
                .with_boundaries(rlock::metrics::duration_buckets())
                .build(),
            fence_rejections: meter
                .u64_counter("stock.fence.rejections")
                .with_description("Writes refused by the fencing token (lost locks)")
                .build(),
            fence_reseeds: meter
                .u64_counter("stock.fence.reseeds")
                .with_description(
                    "Fencing counters raised above the database after Redis lost them",
                )
                .build(),
            sold_out_fast: meter
                .u64_counter("stock.sold_out.fast_path")
                .with_description("Deductions answered sold out by the in-process flag")
                .build(),
            optimistic_conflicts: meter
                .u64_counter("stock.optimistic.conflicts")
                .with_description("Version conflicts of the optimistic strategy")
                .build(),
            atomic_drift: meter
                .u64_counter("stock.atomic.drift")
                .with_description(
                    "redis-atomic: Redis counters found out of step with the database",
                )
                .build(),
            counters_reseeded: meter
                .u64_counter("stock.atomic.reseeds")
                .with_description("redis-atomic: counters re-seeded from the database")
                .build(),
            counters_reconciled: meter
                .u64_counter("stock.atomic.reconciled")
                .with_description(
                    "redis-atomic: segment counters raised to the database's units (left too low by a request that died)",
                )
                .build(),
            available: meter
                .i64_gauge("stock.available")
                .with_description("Units left per item and segment")
                .build(),
            oversold: meter
                .i64_gauge("stock.oversold.units")
                .with_description(
                    "Units sold beyond the item's stock in its current generation (ledger \
                     deducted - released - initial, at least 0); anything but 0 is a bug",
                )
                .build(),
            group_size: meter
                .u64_histogram("stock.group.size")
                .with_unit("{deduction}")
                .with_description(
                    "Deductions applied in one transaction by a combining leader, by strategy",
                )
                .with_boundaries(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0])
                .build(),
        }
    }

    pub(crate) fn outcome(&self, strategy: Strategy, outcome: &'static str) {
        self.outcomes.add(
            1,
            &[
                KeyValue::new("strategy", strategy.as_str()),
                KeyValue::new("outcome", outcome),
            ],
        );
    }

    /// One lock wait: an observation per segment label (`segments` are the labels a
    /// [`lock_labels`] call gave).
    pub(crate) fn lock_wait(
        &self,
        strategy: Strategy,
        segments: &[String],
        waited: Duration,
        acquired: bool,
    ) {
        for segment in segments {
            self.lock_wait.record(
                waited.as_secs_f64(),
                &[
                    KeyValue::new("strategy", strategy.as_str()),
                    KeyValue::new("segment", segment.clone()),
                    KeyValue::new("acquired", acquired),
                ],
            );
        }
    }

    /// One critical section's hold time, an observation per segment label.
    pub(crate) fn lock_hold(&self, strategy: Strategy, segments: &[String], held: Duration) {
        for segment in segments {
            self.lock_hold.record(
                held.as_secs_f64(),
                &[
                    KeyValue::new("strategy", strategy.as_str()),
                    KeyValue::new("segment", segment.clone()),
                ],
            );
        }
    }

    /// One group of combined deductions, `size` of them.
    pub(crate) fn group_size(&self, strategy: Strategy, size: usize) {
        self.group_size.record(
            u64::try_from(size).unwrap_or(u64::MAX),
            &[KeyValue::new("strategy", strategy.as_str())],
        );
    }

    pub(crate) fn oversold(&self, sku: &str, units: i64) {
        self.oversold
            .record(units.max(0), &[KeyValue::new("sku", sku.to_owned())]);
    }

    pub(crate) fn fence_rejected(&self, strategy: Strategy) {
        self.fence_rejections
            .add(1, &[KeyValue::new("strategy", strategy.as_str())]);
    }

    pub(crate) fn fence_reseeded(&self) {
        self.fence_reseeds.add(1, &[]);
    }

    pub(crate) fn sold_out_fast(&self) {
        self.sold_out_fast.add(1, &[]);
    }

    pub(crate) fn optimistic_conflict(&self) {
        self.optimistic_conflicts.add(1, &[]);
    }

    pub(crate) fn atomic_drift(&self) {
        self.atomic_drift.add(1, &[]);
    }

    pub(crate) fn counters_reconciled(&self, segments: usize) {
        self.counters_reconciled
            .add(u64::try_from(segments).unwrap_or(u64::MAX), &[]);
    }

    pub(crate) fn counters_reseeded(&self) {
        self.counters_reseeded.add(1, &[]);
    }

    pub(crate) fn segment_levels(&self, sku: &str, values: &[(i32, i64)]) {
        for (segment, value) in values {
            self.available.record(
                *value,
                &[
                    KeyValue::new("sku", sku.to_owned()),
                    KeyValue::new("segment", i64::from(*segment)),
                ],
            );
        }
    }

    pub(crate) fn stock_level(&self, item: &ItemStock) {
        let values: Vec<(i32, i64)> = item
            .segments
            .iter()
            .map(|s| (s.segment, s.available))
            .collect();
        self.segment_levels(&item.sku, &values);
    }
}

/// The `segment` label values of a lock over `segments`: `all` when one lock covers the whole
/// item (`item_wide`, or no segment list), else each segment's number.
pub(crate) fn lock_labels(item_wide: bool, segments: &[i32]) -> Vec<String> {
    if item_wide || segments.is_empty() {
        vec!["all".to_owned()]
    } else {
        segments.iter().map(i32::to_string).collect()
    }
}
