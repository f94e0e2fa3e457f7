//! The stock-service's instruments (OpenTelemetry meter API; the binary installs the
//! exporter).

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
    fence_rejections: Counter<u64>,
    fence_reseeds: Counter<u64>,
    sold_out_fast: Counter<u64>,
    optimistic_conflicts: Counter<u64>,
    atomic_drift: Counter<u64>,
    counters_reseeded: Counter<u64>,
    available: Gauge<i64>,
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
                .with_description("Time to take the strategy's lock(s) for one critical section")
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
            available: meter
                .i64_gauge("stock.available")
                .with_description("Units left per item and segment")
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

    pub(crate) fn lock_wait(&self, strategy: Strategy, waited: Duration, acquired: bool) {
        self.lock_wait.record(
            waited.as_secs_f64(),
            &[
                KeyValue::new("strategy", strategy.as_str()),
                KeyValue::new("acquired", acquired),
            ],
        );
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
