//! The client's stand-in in Redis's queue: one task per client and lock while local tasks
//! wait. It refreshes the client's place every third of the waiter timeout and hands a grant
//! (announced on the grant channel, or found by a refresh when the message was lost) to the
//! first local waiter.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::cohort::Cohort;
use super::commands::Taken;

/// Wait in Redis for the client until a local waiter has the lock, none is left, or Redis
/// fails (then the waiters get the error).
pub(super) async fn drive(cohort: Arc<Cohort>) {
    let mut conn = cohort.client().conn.clone();
    let mut backoff = Duration::from_millis(10);
    loop {
        if !cohort.has_waiters() {
            cohort.abandon().await;
            return;
        }
        // Subscribed before the refresh: a grant after it is announced to us, one before it
        // is what the refresh finds.
        let subscription = cohort.subscription().await;
        let sent = Instant::now();
        match cohort.commands().take(&mut conn, true).await {
            Ok(Taken::Yes { token, sent }) => {
                cohort.granted(token, sent).await;
                return;
            }
            Ok(Taken::No) => backoff = Duration::from_millis(10),
            Err(err) if err_is_lasting(&err, backoff) => {
                cohort.fail_waiters(&err);
                cohort.abandon().await;
                return;
            }
            Err(err) => {
                tracing::debug!(lock = %cohort.keys().name, error = %err, "fair lock refresh failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
                continue;
            }
        }
        let wait = cohort.refresh_interval();
        match subscription {
            Some(sub) => {
                tokio::select! {
                    () = sub.notified() => {}
                    () = cohort.driver_wake.notified() => {}
                    () = tokio::time::sleep(wait) => {}
                }
                let granted = sub.granted();
                if granted > cohort.last_base() {
                    // Granted after our refresh was sent: its lease is counted from then.
                    cohort.granted(granted, sent).await;
                    return;
                }
            }
            None => {
                tokio::select! {
                    () = cohort.driver_wake.notified() => {}
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// A failure worth giving up on: Redis refused the command, or it kept failing for a while.
fn err_is_lasting(err: &crate::LockError, backoff: Duration) -> bool {
    matches!(err, crate::LockError::Redis(_)) || backoff > Duration::from_millis(640)
}
