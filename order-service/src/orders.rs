//! Placing orders and moving them through their states.
//!
//! ```text
//! pending --stock deducted--> reserved --paid--> paid
//!    |                            \--buyer cancels / unpaid timeout--> cancelled (stock released)
//!    \--sold out, limit, unknown item--> rejected
//! ```

use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::config::OrderConfig;
use crate::group::Groups;
use crate::group::claim::{ClaimRequest, ClaimTerms, Claimed};
use crate::group::finish::Finish;
use crate::idempotency::{FastPath, Record, ReplayCache};
use crate::metrics::OrderMetrics;
use crate::stock_client::{Deducted, Released, StockClient};
use crate::store::{self, Order, StoredResponse};

/// Largest quantity of one order.
pub const MAX_QTY: i64 = 10_000;

/// Body of `POST /orders`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrder {
    /// The item.
    pub sku: String,
    /// Units, 1 to 10000.
    pub qty: i64,
}

impl PlaceOrder {
    /// The canonical form compared when a key is reused.
    pub fn fingerprint(&self) -> String {
        json!({"sku": self.sku, "qty": self.qty}).to_string()
    }
}

/// Why an order operation failed (problem+json at the edge).
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    /// Bad input; nothing changed.
    #[error("{0}")]
    Invalid(String),
    /// The Idempotency-Key header is missing or malformed.
    #[error("{0}")]
    BadKey(String),
    /// The key was used with another request body.
    #[error("this Idempotency-Key was used with a different request")]
    KeyReused,
    /// A request with this key is still being processed.
    #[error("a request with this Idempotency-Key is still in progress; retry later")]
    InFlight,
    /// Sold out (fast path, nothing stored).
    #[error("item {0:?} is sold out")]
    SoldOut(String),
    /// The item does not exist; nothing was kept.
    #[error("unknown item: {0}")]
    UnknownItem(String),
    /// No such order for this user.
    #[error("no such order")]
    NotFound,
    /// The transition is not allowed from the order's state.
    #[error("order is {status}: {action} is not possible")]
    IllegalTransition {
        /// Current state.
        status: String,
        /// What was asked.
        action: &'static str,
    },
    /// The stock-service certainly did not deduct and cannot now; nothing was kept.
    #[error("stock-service unavailable: {0}")]
    StockUnavailable(String),
    /// The outcome is not known yet; retry with the same key.
    #[error("the order's outcome is not known yet ({0}); retry with the same Idempotency-Key")]
    Unknown(String),
    /// PostgreSQL failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The transaction of this request's group failed (nothing of it was written).
    #[error("database: {0}")]
    GroupDb(std::sync::Arc<sqlx::Error>),
    /// Redis failed where the answer depends on it (a key's in-flight marker); nothing was
    /// claimed.
    #[error("redis: {0}")]
    Redis(redis::RedisError),
}

/// An HTTP answer for a key: stored (and so replayable) or a replay.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The response.
    pub response: StoredResponse,
    /// True when it repeats a stored response.
    pub replayed: bool,
}

/// Who the request is from and which key it carries.
#[derive(Debug, Clone)]
pub struct KeyContext {
    /// The user (set by the gateway).
    pub user: String,
    /// The Idempotency-Key.
    pub key: String,
    /// The canonical request.
    pub fingerprint: String,
}

/// The order engine of one instance.
#[derive(Debug, Clone)]
pub struct Orders {
    /// PostgreSQL pool.
    pub pool: PgPool,
    /// The stock-service.
    pub stock: StockClient,
    /// Replay records and the sold-out fast path.
    pub replay: ReplayCache,
    /// Settings.
    pub config: OrderConfig,
    /// Instruments.
    pub metrics: OrderMetrics,
    /// Queues of concurrent claims and settles, per item.
    pub groups: std::sync::Arc<Groups>,
}

/// Check a SKU (same rule as the stock-service).
pub fn valid_sku(sku: &str) -> bool {
    !sku.is_empty()
        && sku.len() <= 64
        && sku
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

impl Orders {
    /// Place an order for `ctx.user` under `ctx.key`.
    pub async fn place(&self, ctx: &KeyContext, req: &PlaceOrder) -> Result<Reply, OrderError> {
        if !valid_sku(&req.sku) {
            return Err(OrderError::Invalid(
                "sku must be 1-64 characters of letters, digits, '.', '_' or '-'".into(),
            ));
        }
        if !(1..=MAX_QTY).contains(&req.qty) {
            return Err(OrderError::Invalid(format!(
                "qty must be between 1 and {MAX_QTY}"
            )));
        }
        match self.replay.lookup(&ctx.user, &ctx.key, &req.sku).await {
            FastPath::Replay(r) if r.fingerprint != ctx.fingerprint => {
                self.metrics.idempotency("mismatch");
                return Err(OrderError::KeyReused);
            }
            FastPath::Replay(r) => {
                self.metrics.idempotency("replayed");
                return Ok(Reply {
                    response: r.response(),
                    replayed: true,
                });
            }
            FastPath::SoldOut => {
                self.metrics.outcome("sold_out_fast");
                return Err(OrderError::SoldOut(req.sku.clone()));
            }
            FastPath::Miss => {}
        }
        self.replay
            .mark_in_flight(&ctx.user, &ctx.key)
            .await
            .map_err(OrderError::Redis)?;
        let request = ClaimRequest {
            user: ctx.user.clone(),
            key: ctx.key.clone(),
            fingerprint: ctx.fingerprint.clone(),
            sku: req.sku.clone(),
            qty: req.qty,
        };
        match self.claim(request).await? {
            Claimed::New(order) => self.start(ctx, order).await,
            Claimed::Taken => self.resume(ctx).await,
        }
    }

    /// A new key's order: rejected by the purchase limit already, or driven now.
    async fn start(&self, ctx: &KeyContext, order: Order) -> Result<Reply, OrderError> {
        self.metrics.idempotency("new");
        if order.status == "rejected" {
            self.metrics.outcome("limit");
            let response = response_for(&order);
            return self.finish_stored(ctx, order.order_id, response).await;
        }
        self.drive(ctx, order, false).await
    }

    /// A key used before: a mismatch, a replay of its stored response, an order still owned by
    /// a live request (409), or an abandoned one (taken over and driven).
    async fn resume(&self, ctx: &KeyContext) -> Result<Reply, OrderError> {
        let row = match store::existing(&self.pool, &ctx.user, &ctx.key).await {
            Err(sqlx::Error::RowNotFound) => {
                self.metrics.idempotency("in_flight");
                return Err(OrderError::InFlight);
            }
            other => other?,
        };
        if row.fingerprint != ctx.fingerprint {
            self.metrics.idempotency("mismatch");
            return Err(OrderError::KeyReused);
        }
        if row.done {
            self.metrics.idempotency("replayed");
            let response = StoredResponse {
                status: u16::try_from(row.status.unwrap_or(500)).unwrap_or(500),
                body: row.body.unwrap_or(Value::Null),
                location: row.location,
            };
            // Best effort: the record speeds up the next replay.
            let record = self.record(ctx, &response);
            if let Err(err) = self.replay.store(&ctx.user, &ctx.key, &record).await {
                tracing::debug!(error = %err, "replay record not cached");
            }
            return Ok(Reply {
                response,
                replayed: true,
            });
        }
        if let Some(order) =
            store::take_over(&self.pool, row.order_id, self.config.order_lease).await?
        {
            self.metrics.idempotency("taken_over");
            return self.drive(ctx, order, true).await;
        }
        match store::order(&self.pool, row.order_id).await? {
            Some(order) if order.status != "pending" => {
                // Final since the claim read the key: the request that settled it has
                // usually stored its response by now, and that stands.
                if let Some(reply) = self.stored_reply(ctx).await? {
                    self.metrics.idempotency("conflict");
                    return Ok(reply);
                }
                // Settled without a response (the worker): store one now.
                let response = response_for(&order);
                self.finish_stored(ctx, order.order_id, response).await
            }
            _ => {
                self.metrics.idempotency("in_flight");
                Err(OrderError::InFlight)
            }
        }
    }

    /// How this instance claims keys.
    pub(crate) fn claim_terms(&self) -> ClaimTerms {
        ClaimTerms {
            ttl: self.config.idempotency_ttl,
            lease: self.config.order_lease,
            limit: self.config.purchase_limit,
        }
    }

    fn record(&self, ctx: &KeyContext, response: &StoredResponse) -> Record {
        Record {
            fingerprint: ctx.fingerprint.clone(),
            status: response.status,
            body: response.body.clone(),
            location: response.location.clone(),
        }
    }

    /// Ask the stock-service for the order's stock and settle the order on what it proves.
    /// A takeover first asks whether an earlier attempt already deducted.
    pub async fn drive(
        &self,
        ctx: &KeyContext,
        order: Order,
        takeover: bool,
    ) -> Result<Reply, OrderError> {
        let id = order.order_id.to_string();
        let outcome = if takeover {
            match self.stock.has_deduction(&order.sku, &id).await {
                Some(true) => Deducted::Yes,
                Some(false) => self.stock.deduct(&order.sku, &id, order.qty).await,
                None => Deducted::Unknown("cannot ask the stock-service".into()),
            }
        } else {
            self.stock.deduct(&order.sku, &id, order.qty).await
        };
        match outcome {
            Deducted::Yes => {
                let pay_by = Utc::now()
                    + chrono::Duration::from_std(self.config.payment_timeout)
                        .unwrap_or(chrono::Duration::minutes(15));
                let reserved = Order {
                    status: "reserved".into(),
                    pay_by: Some(pay_by),
                    ..order
                };
                self.settle(ctx, &reserved).await
            }
            Deducted::Refused { reason, detail }
                if reason == "unknown-item" || reason == "422" || reason == "invalid-input" =>
            {
                store::discard(&self.pool, order.order_id).await?;
                self.metrics.outcome("invalid");
                Err(OrderError::UnknownItem(detail))
            }
            Deducted::Refused { reason, detail } => {
                let rejected = Order {
                    status: "rejected".into(),
                    reason: Some(format!("{reason}: {detail}")),
                    ..order
                };
                self.settle(ctx, &rejected).await
            }
            Deducted::NotNow(msg) => {
                store::abandon(&self.pool, order.order_id, "stock-unavailable").await?;
                self.metrics.outcome("stock_unavailable");
                Err(OrderError::StockUnavailable(msg))
            }
            Deducted::Unknown(msg) => {
                store::release_lease(&self.pool, order.order_id).await?;
                self.metrics.outcome("unknown");
                Err(OrderError::Unknown(msg))
            }
        }
    }

    /// Record a pending order's final state: the replay record first, then the database.
    async fn settle(&self, ctx: &KeyContext, order: &Order) -> Result<Reply, OrderError> {
        let response = response_for(order);
        let record = self.record(ctx, &response);
        if let Err(err) = self.replay.store(&ctx.user, &ctx.key, &record).await {
            store::release_lease(&self.pool, order.order_id).await?;
            return Err(OrderError::Unknown(format!(
                "cannot record the response: {err}"
            )));
        }
        let reason = order
            .reason
            .as_deref()
            .map(|r| r.split(':').next().unwrap_or(r));
        let finish = Finish {
            order_id: order.order_id,
            status: order.status.clone(),
            reason: reason.map(str::to_owned),
            pay_by: order.pay_by,
            response: response.clone(),
        };
        let finished = self.finish(&order.sku, finish).await?;
        if !finished {
            // Someone else settled it first: answer with what they stored.
            self.metrics.idempotency("conflict");
            return self.stored_reply(ctx).await?.ok_or(OrderError::InFlight);
        }
        self.metrics.outcome(if order.status == "reserved" {
            "reserved"
        } else {
            "rejected"
        });
        Ok(Reply {
            response,
            replayed: false,
        })
    }

    /// Store the response of an order that is already final, unless a concurrent request
    /// stored one first: then that one is the answer, replayed.
    async fn finish_stored(
        &self,
        ctx: &KeyContext,
        order_id: Uuid,
        response: StoredResponse,
    ) -> Result<Reply, OrderError> {
        let record = self.record(ctx, &response);
        if let Err(err) = self.replay.store(&ctx.user, &ctx.key, &record).await {
            return Err(OrderError::Unknown(format!(
                "cannot record the response: {err}"
            )));
        }
        if !store::store_response(&self.pool, order_id, &response).await? {
            self.metrics.idempotency("conflict");
            return self.stored_reply(ctx).await?.ok_or(OrderError::InFlight);
        }
        Ok(Reply {
            response,
            replayed: false,
        })
    }

    /// The response stored for the key, as a replay, when the key is done; Redis is set to
    /// it (best effort) so that the fast path answers the same.
    async fn stored_reply(&self, ctx: &KeyContext) -> Result<Option<Reply>, OrderError> {
        let mut conn = self.pool.acquire().await?;
        let Some(row) = store::key_row(&mut conn, &ctx.user, &ctx.key).await? else {
            return Ok(None);
        };
        drop(conn);
        if !row.done {
            return Ok(None);
        }
        let response = StoredResponse {
            status: u16::try_from(row.status.unwrap_or(500)).unwrap_or(500),
            body: row.body.unwrap_or(Value::Null),
            location: row.location,
        };
        if let Err(err) = self
            .replay
            .store(&ctx.user, &ctx.key, &self.record(ctx, &response))
            .await
        {
            tracing::warn!(error = %err, "replay record not corrected");
        }
        Ok(Some(Reply {
            response,
            replayed: true,
        }))
    }

    /// The user's order.
    pub async fn get(&self, user: &str, order_id: Uuid) -> Result<Order, OrderError> {
        store::order(&self.pool, order_id)
            .await?
            .filter(|o| o.user_id == user)
            .ok_or(OrderError::NotFound)
    }

    /// The user's newest orders.
    pub async fn list(&self, user: &str) -> Result<Vec<Order>, OrderError> {
        Ok(store::orders_of(&self.pool, user, 100).await?)
    }

    /// `reserved` -> `paid` (idempotent: paying a paid order answers the order).
    pub async fn pay(&self, user: &str, order_id: Uuid) -> Result<Order, OrderError> {
        let order = self.get(user, order_id).await?;
        if store::pay(&self.pool, order_id).await? {
            self.metrics.outcome("paid");
            return self.get(user, order_id).await;
        }
        let now = self.get(user, order_id).await?;
        match now.status.as_str() {
            "paid" => Ok(now),
            "reserved" => Err(OrderError::IllegalTransition {
                status: "reserved past its payment window".into(),
                action: "pay",
            }),
            _ => Err(OrderError::IllegalTransition {
                status: order.status,
                action: "pay",
            }),
        }
    }

    /// `reserved` -> `cancelled`, and the stock goes back (idempotent).
    pub async fn cancel(&self, user: &str, order_id: Uuid) -> Result<Order, OrderError> {
        let order = self.get(user, order_id).await?;
        if store::cancel(&self.pool, order_id, "cancelled-by-buyer").await? {
            self.metrics.outcome("cancelled");
            self.release_stock(order_id, &order.sku).await?;
            return self.get(user, order_id).await;
        }
        let now = self.get(user, order_id).await?;
        match now.status.as_str() {
            "cancelled" => Ok(now),
            status => Err(OrderError::IllegalTransition {
                status: status.to_owned(),
                action: "cancel",
            }),
        }
    }

    /// Release a cancelled order's stock; on failure the recovery worker tries again.
    pub async fn release_stock(&self, order_id: Uuid, sku: &str) -> Result<bool, OrderError> {
        match self.stock.release(sku, &order_id.to_string()).await {
            Released::Yes | Released::NothingToRelease => {
                store::mark_released(&self.pool, order_id).await?;
                Ok(true)
            }
            Released::Failed(msg) => {
                tracing::warn!(%order_id, %msg, "stock release failed; the recovery worker retries");
                Ok(false)
            }
        }
    }
}

/// The response a final order is answered with: 201 with the order when reserved, 409
/// problem+json (with the order id) when rejected.
pub fn response_for(order: &Order) -> StoredResponse {
    let location = format!("/orders/{}", order.order_id);
    if order.status == "rejected" {
        let reason = order.reason.clone().unwrap_or_else(|| "rejected".into());
        let slug = reason
            .split(':')
            .next()
            .unwrap_or("rejected")
            .trim()
            .to_owned();
        return StoredResponse {
            status: 409,
            body: json!({
                "type": format!("/problems/{slug}"),
                "title": "Conflict",
                "status": 409,
                "detail": reason,
                "order_id": order.order_id,
                "order_status": "rejected",
            }),
            location: Some(location),
        };
    }
    StoredResponse {
        status: 201,
        body: serde_json::to_value(order).unwrap_or(Value::Null),
        location: Some(location),
    }
}
