//! The oversold watch: items whose books changed are re-audited in the background, and
//! `stock.oversold.units` set from what PostgreSQL says (a SQL check, not an instrument, so it
//! lives apart from `metrics.rs`).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use crate::metrics::StockMetrics;

/// Items whose books changed since the last check; a background task recomputes their
/// `stock.oversold.units` from the database every interval.
#[derive(Debug, Clone, Default)]
pub struct OversoldWatch {
    touched: Arc<Mutex<HashSet<String>>>,
}

impl OversoldWatch {
    /// Note that `sku`'s ledger or segments changed.
    pub(crate) fn touch(&self, sku: &str) {
        let mut touched = self.touched.lock().unwrap_or_else(PoisonError::into_inner);
        if !touched.contains(sku) {
            touched.insert(sku.to_owned());
        }
    }

    /// Start the background check (every `interval`); it stops when every clone of this
    /// watch is dropped.
    pub(crate) fn spawn(
        &self,
        pool: sqlx::PgPool,
        metrics: StockMetrics,
        interval: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let touched = Arc::downgrade(&self.touched);
        tokio::spawn(watch_oversold(touched, pool, metrics, interval))
    }
}

async fn watch_oversold(
    touched: Weak<Mutex<HashSet<String>>>,
    pool: sqlx::PgPool,
    metrics: StockMetrics,
    interval: Duration,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(touched) = touched.upgrade() else {
            return;
        };
        let skus = std::mem::take(&mut *touched.lock().unwrap_or_else(PoisonError::into_inner));
        drop(touched);
        for sku in skus {
            match crate::store::oversold(&pool, &sku).await {
                Ok(Some(units)) => metrics.oversold(&sku, units),
                Ok(None) => {}
                Err(error) => tracing::debug!(%sku, %error, "oversold check failed"),
            }
        }
    }
}
