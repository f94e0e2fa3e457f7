//! The recovery worker: nothing stays half-done.
//!
//! Every tick it (1) rebuilds the Redis replay records if Redis lost them, (2) cancels
//! reserved orders past their payment window, (3) releases the stock of cancelled orders whose
//! release has not been confirmed, (4) re-drives pending orders nobody owns (a request that
//! died between deducting and recording, or gave up on an unknown outcome), (5) prunes expired
//! idempotency keys. Every step is idempotent, so several instances may run it at once.

use std::time::Duration;

use crate::orders::{KeyContext, Orders};
use crate::store;

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pass {
    /// Reserved orders cancelled for want of payment.
    pub expired: u64,
    /// Cancelled orders whose stock release was confirmed.
    pub released: usize,
    /// Pending orders driven to a final state.
    pub redriven: usize,
    /// Expired idempotency keys deleted.
    pub pruned: u64,
}

/// Run one pass.
pub async fn run_once(orders: &Orders) -> anyhow::Result<Pass> {
    let mut pass = Pass::default();
    if let Err(err) = orders.replay.ensure_complete(&orders.pool).await {
        tracing::warn!(error = %err, "replay records not rebuilt");
    }
    pass.expired = store::expire_unpaid(&orders.pool, 500).await?;
    for (order_id, sku) in store::unreleased(&orders.pool, 200).await? {
        if orders.release_stock(order_id, &sku).await? {
            pass.released += 1;
        }
    }
    let stuck = store::stuck_pending(
        &orders.pool,
        orders.config.order_lease,
        orders.config.order_lease,
        100,
    )
    .await?;
    for order in stuck {
        let Some((user, key)) = store::key_of_order(&orders.pool, order.order_id).await? else {
            tracing::warn!(order_id = %order.order_id, "pending order without its key");
            continue;
        };
        let mut conn = orders.pool.acquire().await?;
        let Some(row) = store::key_row(&mut conn, &user, &key).await? else {
            continue;
        };
        drop(conn);
        let ctx = KeyContext {
            user,
            key,
            fingerprint: row.fingerprint,
        };
        match orders.drive(&ctx, order, true).await {
            Ok(_) => pass.redriven += 1,
            Err(err) => tracing::info!(error = %err, "pending order not settled yet"),
        }
    }
    pass.pruned = store::prune_keys(&orders.pool).await?;
    Ok(pass)
}

/// Run passes every `interval` until the task is dropped.
pub async fn run(orders: Orders, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match run_once(&orders).await {
            Ok(pass) if pass != Pass::default() => tracing::info!(?pass, "recovery pass"),
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "recovery pass failed"),
        }
    }
}
