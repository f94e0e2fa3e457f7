//! After a chaos scenario: the books read straight from PostgreSQL (not through the
//! services), and every client's last answer held against them.

use std::collections::HashMap;

use sqlx::{PgPool, Row as _};

use super::buyers::{Action, KeyOutcome};

/// What the audit found; any non-empty `violations` fails the scenario.
#[derive(Debug, Default)]
pub struct Findings {
    /// Units sold and held (reserved or paid orders).
    pub held: i64,
    /// Units sold beyond the stock.
    pub oversold: i64,
    /// Clients whose last answer contradicts the database.
    pub wrong_answers: usize,
    /// Keys that never got a final answer.
    pub unanswered: usize,
    /// Orders still pending after the settle time.
    pub pending: i64,
    /// One line per broken invariant.
    pub violations: Vec<String>,
}

/// Audit `sku` in the stock database and the orders database against the clients' `keys`.
pub async fn audit(
    stock_db: &str,
    orders_db: &str,
    sku: &str,
    purchase_limit: i64,
    keys: &[KeyOutcome],
) -> anyhow::Result<Findings> {
    let stock = PgPool::connect(stock_db).await?;
    let orders = PgPool::connect(orders_db).await?;
    let mut f = Findings::default();
    books(&stock, sku, &mut f).await?;
    let statuses = order_statuses(&orders, sku).await?;
    ledger_matches_orders(&stock, sku, &statuses, &mut f).await?;
    limits(&orders, sku, purchase_limit, &mut f).await?;
    answers(&orders, sku, keys, &statuses, &mut f).await?;
    f.pending = statuses.values().filter(|s| *s == "pending").count() as i64;
    if f.pending > 0 {
        f.violations
            .push(format!("{} orders still pending", f.pending));
    }
    f.held = statuses
        .values()
        .filter(|s| *s == "reserved" || *s == "paid")
        .count() as i64;
    stock.close().await;
    orders.close().await;
    Ok(f)
}

/// The segments against the ledger: initial − deducted + released = available, nothing below
/// zero, nothing sold beyond the stock.
async fn books(stock: &PgPool, sku: &str, f: &mut Findings) -> anyhow::Result<()> {
    let row = sqlx::query(
        "SELECT COALESCE(SUM(initial), 0)::bigint, COALESCE(SUM(available), 0)::bigint,
                COALESCE(MIN(available), 0)::bigint
         FROM stock_segments WHERE sku = $1",
    )
    .bind(sku)
    .fetch_one(stock)
    .await?;
    let (initial, available, lowest): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    let moved = sqlx::query(
        "SELECT COALESCE(SUM(qty) FILTER (WHERE kind = 'deduct'), 0)::bigint,
                COALESCE(SUM(qty) FILTER (WHERE kind = 'release'), 0)::bigint
         FROM stock_movements WHERE sku = $1",
    )
    .bind(sku)
    .fetch_one(stock)
    .await?;
    let (deducted, released): (i64, i64) = (moved.get(0), moved.get(1));
    f.oversold = (deducted - released - initial).max(0);
    if initial - deducted + released != available {
        f.violations.push(format!(
            "ledger and segments disagree: initial {initial} - deducted {deducted} + released {released} != available {available}"
        ));
    }
    if lowest < 0 || f.oversold > 0 {
        f.violations
            .push(format!("oversold {} (lowest segment {lowest})", f.oversold));
    }
    Ok(())
}

/// Every order of the item and its status, by order id.
async fn order_statuses(orders: &PgPool, sku: &str) -> anyhow::Result<HashMap<String, String>> {
    let rows = sqlx::query("SELECT id::text, status FROM orders WHERE sku = $1")
        .bind(sku)
        .fetch_all(orders)
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Every reserved or paid order holds a deduction that was not released; every deduction not
/// released belongs to a reserved or paid order.
async fn ledger_matches_orders(
    stock: &PgPool,
    sku: &str,
    statuses: &HashMap<String, String>,
    f: &mut Findings,
) -> anyhow::Result<()> {
    let held: Vec<String> = sqlx::query_scalar(
        "SELECT d.order_id FROM stock_movements d
         WHERE d.sku = $1 AND d.kind = 'deduct'
           AND NOT EXISTS (SELECT 1 FROM stock_movements r
                           WHERE r.order_id = d.order_id AND r.kind = 'release')",
    )
    .bind(sku)
    .fetch_all(stock)
    .await?;
    let live = |s: &str| s == "reserved" || s == "paid";
    let orphans = held
        .iter()
        .filter(|id| !statuses.get(*id).is_some_and(|s| live(s)))
        .count();
    if orphans > 0 {
        f.violations.push(format!(
            "{orphans} deductions without a live order (stock lost)"
        ));
    }
    let unheld = statuses
        .iter()
        .filter(|(id, s)| live(s) && !held.contains(id))
        .count();
    if unheld > 0 {
        f.violations
            .push(format!("{unheld} live orders without stock held"));
    }
    Ok(())
}

/// No user holds more than the purchase limit.
async fn limits(orders: &PgPool, sku: &str, limit: i64, f: &mut Findings) -> anyhow::Result<()> {
    let over: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT user_id FROM orders
          WHERE sku = $1 AND status IN ('pending', 'reserved', 'paid')
          GROUP BY user_id HAVING SUM(qty) > $2) o",
    )
    .bind(sku)
    .bind(limit)
    .fetch_one(orders)
    .await?;
    if over > 0 {
        f.violations
            .push(format!("{over} users over the purchase limit {limit}"));
    }
    Ok(())
}

/// Each key's last answer against the database: a 201 is a live order (paid or cancelled as
/// the client was told); a refusal is a key with no live order.
async fn answers(
    orders: &PgPool,
    sku: &str,
    keys: &[KeyOutcome],
    statuses: &HashMap<String, String>,
    f: &mut Findings,
) -> anyhow::Result<()> {
    let rows = sqlx::query(
        "SELECT k.user_id, k.key, o.status FROM idempotency_keys k JOIN orders o ON o.id = k.order_id
         WHERE o.sku = $1",
    )
    .bind(sku)
    .fetch_all(orders)
    .await?;
    let by_key: HashMap<(String, String), String> = rows
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect();
    let mut samples = Vec::new();
    for k in keys {
        if k.status == 0 || k.status >= 500 || k.problem == "/problems/request-in-progress" {
            f.unanswered += 1;
            continue;
        }
        let in_db = by_key.get(&(k.user.clone(), k.key.clone()));
        if !agrees(k, in_db.map(String::as_str), statuses) {
            f.wrong_answers += 1;
            if samples.len() < 3 {
                samples.push(format!(
                    "{}/{}: {} {} vs {:?}",
                    k.user, k.key, k.status, k.problem, in_db
                ));
            }
        }
    }
    if f.wrong_answers > 0 {
        f.violations.push(format!(
            "{} answers contradict the database, e.g. {}",
            f.wrong_answers,
            samples.join("; ")
        ));
    }
    if f.unanswered > 0 {
        f.violations
            .push(format!("{} keys without a final answer", f.unanswered));
    }
    Ok(())
}

/// Whether a key's last answer agrees with the database: a 201 is an order that exists, in the
/// state the client was last told (paid, cancelled, or still reserved); a 409 is a key without
/// a live order (`key_order`: the status of the key's order, if it has one).
fn agrees(k: &KeyOutcome, key_order: Option<&str>, statuses: &HashMap<String, String>) -> bool {
    match (k.status, &k.order_id) {
        (201, Some(id)) => {
            let want = match k.action {
                Action::Paid => Some("paid"),
                Action::Cancelled => Some("cancelled"),
                Action::None => Some("reserved"),
                Action::Unconfirmed => None,
            };
            let is = statuses.get(id).map(String::as_str);
            is.is_some() && (want.is_none() || want == is)
        }
        (409, _) => !matches!(key_order, Some("reserved" | "paid" | "pending")),
        _ => true,
    }
}
