//! redis-atomic's database write, grouped. Redis (the gate) has already decided who gets
//! units; the group records the ledger rows of one segment's requests in one statement and
//! takes their sum off the segment with the same guarded decrement as alone
//! (`available - sum >= 0`). If the database refuses the sum (Redis over-counted), the group
//! is rolled back and each request is written alone, so that only the ones that do not fit are
//! refused (the goodplayer/seckill fallback).

use tracing::Instrument as _;

use crate::engine::{Rmw, Stock, StockError, db_span};
use crate::group::{At, Want, answers, failed};
use crate::store::{self, SegmentRow};

impl Stock {
    /// The group's writes; one outcome per request.
    pub(crate) async fn write_group(
        &self,
        sku: &str,
        segment: i32,
        wants: &[Want],
    ) -> Vec<Result<Rmw, StockError>> {
        let grouped = self
            .write_group_tx(sku, segment, wants)
            .instrument(db_span("deduct", sku))
            .await;
        match grouped {
            Ok(Some(outcomes)) => outcomes.into_iter().map(Ok).collect(),
            Ok(None) => self.write_each(sku, segment, wants).await,
            Err(err) => failed(err, wants.len()),
        }
    }

    /// One transaction for the group; `None` when the segment had less than the sum.
    async fn write_group_tx(
        &self,
        sku: &str,
        segment: i32,
        wants: &[Want],
    ) -> Result<Option<Vec<Rmw>>, StockError> {
        let mut tx = self.pool.begin().await?;
        let Some((generation, _)) = store::item_shape(&mut tx, sku).await? else {
            return Ok(Some(
                wants
                    .iter()
                    .map(|_| Rmw::Insufficient(Vec::new()))
                    .collect(),
            ));
        };
        // Everyone fits: Redis handed out the units already. The plan only sorts out repeated
        // and already recorded order ids.
        let at = At {
            sku,
            row: SegmentRow {
                segment,
                available: i64::MAX,
                last_fence: 0,
                version: 0,
            },
            generation,
            token: None,
            continuing: false,
        };
        let (plan, recorded) = self.record_group(&mut tx, &at, wants).await?;
        let sum = i64::MAX - plan.left();
        if sum == 0 {
            tx.rollback().await?;
            return Ok(Some(answers(&plan, recorded, &[])));
        }
        let Some(value) = store::add_to_segment(&mut tx, sku, segment, -sum).await? else {
            tx.rollback().await?;
            return Ok(None);
        };
        tx.commit().await?;
        let after = [(segment, value)];
        self.written(sku, &after).await;
        let outcomes = answers(&plan, recorded, &after);
        Ok(Some(outcomes))
    }

    /// The database refused the group's sum: each request on its own.
    async fn write_each(
        &self,
        sku: &str,
        segment: i32,
        wants: &[Want],
    ) -> Vec<Result<Rmw, StockError>> {
        let mut outcomes = Vec::with_capacity(wants.len());
        for want in wants {
            let outcome = async {
                let generation = self.generation(sku, None).await?;
                self.write_atomic(sku, &want.order_id, generation, &[(segment, want.qty)])
                    .instrument(db_span("deduct", sku))
                    .await
            };
            outcomes.push(outcome.await);
        }
        outcomes
    }
}
