//! What the fenced strategies (`redis-lock`, `segmented`, `redlock`) share: the write carries
//! the lock's fencing token and PostgreSQL refuses it once a newer holder wrote (see
//! [`WriteGuard::Fence`]); a refusal is either a lost lock or a fencing counter that went
//! backwards (Redis lost its data), which is repaired once by re-seeding the counter.

use super::concurrency::{Next, Refused};
use crate::engine::{Stock, StockError};
use crate::store::{SegmentRow, WriteGuard};

/// The fenced write of `row` under `token`; without a token (the lock was not held) there
/// is nothing to write with.
pub(crate) fn write_guard(
    row: &SegmentRow,
    token: Option<i64>,
    continuing: bool,
) -> Result<WriteGuard, StockError> {
    let token = token.ok_or(StockError::FenceRejected)?;
    Ok(WriteGuard::Fence {
        seen: row.last_fence,
        version: row.version,
        token,
        continuing,
    })
}

/// A lock still valid whose token is not above the row's fence: the counter went backwards;
/// re-seed it and retry, once. Anything else: the lock was lost, and the write is refused
/// for good (503 `lock-lost`).
pub(crate) fn after_refusal(stock: &Stock, refused: &Refused) -> Next {
    let stale_token = refused.token.is_some_and(|t| refused.row.last_fence >= t);
    if refused.lock_valid && stale_token && !refused.reseeded {
        return Next::Reseed;
    }
    let strategy = stock.strategy();
    stock.metrics.fence_rejected(strategy);
    tracing::warn!(segment = refused.row.segment, token = ?refused.token,
        fence = refused.row.last_fence, %strategy, "fenced write refused: the lock was lost");
    Next::Fail(StockError::FenceRejected)
}
