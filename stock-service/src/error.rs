//! Why a stock operation did not happen: one error type for the engine, mapped to problem
//! types in `api.rs`.

use std::sync::Arc;

use rlock::LockError;

/// Why a stock operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum StockError {
    /// Bad input; nothing was changed.
    #[error("{0}")]
    Invalid(String),
    /// No such item.
    #[error("unknown item {0:?}")]
    NotFound(String),
    /// Every segment is empty.
    #[error("item {0:?} is sold out")]
    SoldOut(String),
    /// Some stock left, but less than asked for.
    #[error("only {available} left of item {sku:?}, {requested} requested")]
    Insufficient {
        /// The item.
        sku: String,
        /// Units left.
        available: i64,
        /// Units asked for.
        requested: i64,
    },
    /// A release for an order that has no deduction of this item.
    #[error("order {order_id:?} has no deduction of item {sku:?}")]
    NoDeduction {
        /// The order.
        order_id: String,
        /// The item.
        sku: String,
    },
    /// The order id was already used for another item.
    #[error("order {order_id:?} was used for item {other:?}")]
    OrderConflict {
        /// The order.
        order_id: String,
        /// The item it was used for.
        other: String,
    },
    /// The restock id was already used for another item.
    #[error("restock {restock_id:?} was for item {other:?}")]
    RestockIdReused {
        /// The restock.
        restock_id: String,
        /// The item it was for.
        other: String,
    },
    /// The item was reset after the order's deduction; its stock cannot go back.
    #[error("item {0:?} was reset after this order's deduction")]
    ResetSince(String),
    /// The lock could not be had within the configured wait.
    #[error("lock wait timed out")]
    LockTimeout,
    /// The database refused a fenced write: this holder's lock was lost.
    #[error("write refused by the fencing token: the lock was lost")]
    FenceRejected,
    /// The optimistic strategy kept losing the race.
    #[error("too many write conflicts")]
    Conflict,
    /// PostgreSQL failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The lock failed.
    #[error("lock: {0}")]
    Lock(#[from] LockError),
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A failure of a whole group of combined deductions, given to each of its requests.
    #[error("{0}")]
    Shared(Arc<StockError>),
}

impl StockError {
    /// The error itself, looking through [`StockError::Shared`].
    pub fn root(&self) -> &StockError {
        match self {
            StockError::Shared(inner) => inner.root(),
            other => other,
        }
    }
}
