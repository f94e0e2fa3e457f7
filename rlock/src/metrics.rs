//! OpenTelemetry instruments recorded by the library (through the meter API only: the
//! application chooses the SDK and exporter).

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter};

/// Bucket boundaries in seconds: exponential from 0.5 ms, doubling, up to ~33 s (as TiKV's
/// lock-manager waiter histogram).
pub fn duration_buckets() -> Vec<f64> {
    (0..17).map(|i| 0.0005 * f64::from(1u32 << i)).collect()
}

/// The instruments, created once per client.
#[derive(Debug, Clone)]
pub(crate) struct LockMetrics {
    wait: Histogram<f64>,
    hold: Histogram<f64>,
    acquisitions: Counter<u64>,
    renewals: Counter<u64>,
    lost: Counter<u64>,
    tokens: Counter<u64>,
}

/// Outcome of one `try_acquire`/`acquire` call, recorded as attribute `outcome`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum AcquireOutcome {
    Acquired,
    Reentered,
    TimedOut,
    Failed,
}

impl AcquireOutcome {
    fn as_str(self) -> &'static str {
        match self {
            AcquireOutcome::Acquired => "acquired",
            AcquireOutcome::Reentered => "reentered",
            AcquireOutcome::TimedOut => "timeout",
            AcquireOutcome::Failed => "error",
        }
    }
}

impl LockMetrics {
    pub(crate) fn new(meter: &Meter) -> Self {
        LockMetrics {
            wait: meter
                .f64_histogram("rlock.wait.duration")
                .with_unit("s")
                .with_description("Time from asking for a lock to getting it or giving up")
                .with_boundaries(duration_buckets())
                .build(),
            hold: meter
                .f64_histogram("rlock.hold.duration")
                .with_unit("s")
                .with_description("Time a lock was held, from acquisition to release")
                .with_boundaries(duration_buckets())
                .build(),
            acquisitions: meter
                .u64_counter("rlock.acquisitions")
                .with_description("Lock acquisition attempts by outcome")
                .build(),
            renewals: meter
                .u64_counter("rlock.renewals")
                .with_description("Watchdog lease renewals by result")
                .build(),
            lost: meter
                .u64_counter("rlock.lost")
                .with_description("Locks lost while held (expired, deleted, or not renewable)")
                .build(),
            tokens: meter
                .u64_counter("rlock.tokens.issued")
                .with_description("Fencing tokens issued (new acquisitions)")
                .build(),
        }
    }

    pub(crate) fn acquire(&self, kind: &'static str, outcome: AcquireOutcome, waited: Duration) {
        let attrs = [
            KeyValue::new("lock.kind", kind),
            KeyValue::new("outcome", outcome.as_str()),
        ];
        self.wait.record(waited.as_secs_f64(), &attrs);
        self.acquisitions.add(1, &attrs);
        if matches!(outcome, AcquireOutcome::Acquired) {
            self.tokens.add(1, &[KeyValue::new("lock.kind", kind)]);
        }
    }

    pub(crate) fn held(&self, kind: &'static str, held: Duration) {
        self.hold
            .record(held.as_secs_f64(), &[KeyValue::new("lock.kind", kind)]);
    }

    pub(crate) fn renewed(&self, result: &'static str, n: u64) {
        if n > 0 {
            self.renewals.add(n, &[KeyValue::new("result", result)]);
        }
    }

    pub(crate) fn lost(&self) {
        self.lost.add(1, &[]);
    }
}
