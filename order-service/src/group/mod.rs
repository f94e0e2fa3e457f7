//! Grouped claims and settles: concurrent orders of one item in one instance share one claim
//! transaction and one settle transaction ([`service_kit::combine`]), instead of two
//! transactions each.
//!
//! A request queues its claim (or its settle) under the item; the worker draining that queue
//! runs up to `ORDER_BATCH_MAX` of them as one transaction ([`claim::claim_group`],
//! [`finish::finish_group`]) in a task of its own, and answers each with its own outcome. Every
//! row is decided by the same condition as alone, so every guarantee of docs/orders.md holds:
//! a key is claimed once (its primary key), the purchase limit is a conditional upsert, only a
//! pending order settles. A failed transaction changes nothing and fails each request of the
//! group as it would have failed alone.

pub mod claim;
pub mod finish;

use std::sync::Arc;

use service_kit::combine::{Combiner, Worker};
use tokio::sync::oneshot;
use tracing::{Instrument as _, Span};

use crate::orders::{OrderError, Orders};
use claim::{ClaimRequest, Claimed};
use finish::Finish;

/// Where a group's answer goes: the request's own outcome, or the group's shared failure.
type Reply<T> = oneshot::Sender<Result<T, Arc<sqlx::Error>>>;

/// One queued request of a group.
#[derive(Debug)]
pub struct Want<T, O> {
    item: T,
    span: Span,
    reply: Reply<O>,
}

/// The queues of one instance, per item.
#[derive(Debug)]
pub struct Groups {
    claims: Arc<Combiner<String, Want<ClaimRequest, Claimed>>>,
    finishes: Arc<Combiner<String, Want<Finish, bool>>>,
}

impl Groups {
    /// Queues whose groups hold at most `max` requests (1: every request alone).
    pub fn new(max: usize) -> Self {
        Groups {
            claims: Arc::new(Combiner::new(max)),
            finishes: Arc::new(Combiner::new(max)),
        }
    }

    /// Claim groups drained so far (tests check that groups larger than one form).
    pub fn claim_stats(&self) -> service_kit::combine::CombineStats {
        self.claims.stats()
    }

    /// Settle groups drained so far.
    pub fn finish_stats(&self) -> service_kit::combine::CombineStats {
        self.finishes.stats()
    }
}

impl Orders {
    /// Claim the request's key and create its order, in a group with the concurrent claims of
    /// the same item.
    pub(crate) async fn claim(&self, request: ClaimRequest) -> Result<Claimed, OrderError> {
        let (reply, answer) = oneshot::channel();
        let sku = request.sku.clone();
        let want = Want {
            item: request,
            span: Span::current(),
            reply,
        };
        if let Some(worker) = self.groups.claims.push(sku, want) {
            tokio::spawn(self.clone().drain_claims(worker));
        }
        answered(answer.await)
    }

    /// Settle the pending order, in a group with the concurrent settles of the same item.
    /// False when it was not pending (someone else settled it).
    pub(crate) async fn finish(&self, sku: &str, finish: Finish) -> Result<bool, OrderError> {
        let (reply, answer) = oneshot::channel();
        let want = Want {
            item: finish,
            span: Span::current(),
            reply,
        };
        if let Some(worker) = self.groups.finishes.push(sku.to_owned(), want) {
            tokio::spawn(self.clone().drain_finishes(worker));
        }
        answered(answer.await)
    }

    async fn drain_claims(self, mut worker: Worker<String, Want<ClaimRequest, Claimed>>) {
        let terms = self.claim_terms();
        loop {
            let (requests, replies, span) = split(worker.next_batch());
            if requests.is_empty() {
                return;
            }
            let outcome = claim::claim_group(&self.pool, &requests, terms)
                .instrument(span)
                .await;
            answer_each(replies, outcome);
        }
    }

    async fn drain_finishes(self, mut worker: Worker<String, Want<Finish, bool>>) {
        loop {
            let (finishes, replies, span) = split(worker.next_batch());
            if finishes.is_empty() {
                return;
            }
            let outcome = finish::finish_group(&self.pool, &finishes)
                .instrument(span)
                .await;
            answer_each(replies, outcome);
        }
    }
}

/// A batch's items and reply channels, and the span its transaction goes in: the first
/// request's (its trace shows the transaction the others shared).
fn split<T, O>(batch: Vec<Want<T, O>>) -> (Vec<T>, Vec<Reply<O>>, Span) {
    let span = batch.first().map_or_else(Span::none, |w| w.span.clone());
    let (items, replies) = batch.into_iter().map(|w| (w.item, w.reply)).unzip();
    (items, replies, span)
}

/// Each request its own outcome, or every request the group's failure.
fn answer_each<O>(replies: Vec<Reply<O>>, outcome: sqlx::Result<Vec<O>>) {
    match outcome {
        Ok(outcomes) => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                // A request that went away no longer needs its answer; what was done stands
                // and a retry with the same key finds it.
                let _ = reply.send(Ok(outcome));
            }
        }
        Err(err) => {
            let err = Arc::new(err);
            for reply in replies {
                let _ = reply.send(Err(Arc::clone(&err)));
            }
        }
    }
}

/// The request's answer from the group. A worker that dropped it without answering
/// panicked, maybe after its commit: the outcome is not known, and a retry with the same key
/// finds it out.
fn answered<O>(
    answer: Result<Result<O, Arc<sqlx::Error>>, oneshot::error::RecvError>,
) -> Result<O, OrderError> {
    match answer {
        Ok(Ok(outcome)) => Ok(outcome),
        Ok(Err(err)) => Err(OrderError::GroupDb(err)),
        Err(_) => Err(OrderError::Unknown(
            "the group of this request failed".into(),
        )),
    }
}
