//! Retrying a compensation (an undo, a leave, a release whose reply was lost) until Redis
//! answers: every one of them is idempotent, and each matters only until the lease it cleans
//! up after would have run out anyway.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// Run `op` until it succeeds, an error is not worth retrying (`retry` says no), or the next
/// attempt would start after `give_up`. Backoff from 20 ms, doubling to 500 ms. The last
/// error when it gave up.
pub(crate) async fn until_answered<T, E, Fut>(
    give_up: Instant,
    retry: impl Fn(&E) -> bool,
    mut op: impl FnMut() -> Fut,
) -> Result<T, E>
where
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = Duration::from_millis(20);
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(err) if !retry(&err) || Instant::now() + backoff >= give_up => return Err(err),
            Err(_) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
        }
    }
}
