//! The order-service's instruments (OpenTelemetry meter API).

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Meter};

/// Counters of one instance.
#[derive(Debug, Clone)]
pub struct OrderMetrics {
    outcomes: Counter<u64>,
    idempotency: Counter<u64>,
}

impl OrderMetrics {
    /// Create the instruments on `meter`.
    pub fn new(meter: &Meter) -> Self {
        OrderMetrics {
            outcomes: meter
                .u64_counter("orders.outcomes")
                .with_description("Order requests by outcome (reserved, rejected, limit, sold_out_fast, paid, cancelled, unknown, stock_unavailable)")
                .build(),
            idempotency: meter
                .u64_counter("orders.idempotency")
                .with_description("Idempotency-Key results (new, replayed, in_flight, mismatch, taken_over, conflict)")
                .build(),
        }
    }

    pub(crate) fn outcome(&self, outcome: &'static str) {
        self.outcomes.add(1, &[KeyValue::new("outcome", outcome)]);
    }

    pub(crate) fn idempotency(&self, result: &'static str) {
        self.idempotency.add(1, &[KeyValue::new("result", result)]);
    }
}
