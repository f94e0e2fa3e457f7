//! The verdict: did the shop oversell, duplicate an order, break the purchase limit, or let
//! its books drift apart? Pure functions of the facts gathered after the attack.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::record::ClientFacts;
use crate::shop::{OrderAudit, StockAudit};

/// Everything the verdict looks at.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Facts {
    /// Units the item was seeded with.
    pub stock: i64,
    /// Whether buyers took part (a browse-only run places no orders).
    pub buyers: bool,
    /// What the clients saw.
    pub client: ClientFacts,
    /// Buyers holding more than the purchase limit by the clients' account.
    pub client_users_over_limit: u64,
    /// The stock-service's audit.
    pub stock_audit: StockAudit,
    /// The order-service's audit.
    pub order_audit: OrderAudit,
    /// Fail when the share of order requests that ended in errors is above this.
    pub max_error_rate: Option<f64>,
}

/// One check with its numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// Stable name (for scripts).
    pub name: String,
    /// Whether it passed.
    pub passed: bool,
    /// One line for humans.
    pub detail: String,
    /// The numbers it compared.
    pub numbers: Value,
}

/// The verdict of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// True when every check passed.
    pub passed: bool,
    /// Units sold beyond the stock (the largest excess any source shows; 0 when none).
    pub oversold: i64,
    /// Orders made twice for one key, or replays that changed the answer (client and
    /// server side together).
    pub duplicates: i64,
    /// The checks, in order.
    pub checks: Vec<Check>,
}

impl Verdict {
    /// The checks that failed.
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| !c.passed)
    }
}

fn check(name: &str, passed: bool, detail: String, numbers: Value) -> Check {
    Check {
        name: name.to_owned(),
        passed,
        detail,
        numbers,
    }
}

/// The first few problems of the stock audit (one per segment can be many).
fn first_problems(problems: &[String]) -> String {
    const SHOWN: usize = 3;
    let mut text = problems
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if problems.len() > SHOWN {
        text.push_str(&format!("; {} more", problems.len() - SHOWN));
    }
    text
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Judge `facts`.
pub fn judge(facts: &Facts) -> Verdict {
    let sold_by_ledger = facts.stock_audit.deducted - facts.stock_audit.released;
    let (oversell, oversold) = no_oversell(facts, sold_by_ledger);
    let (keys, duplicates) = one_order_per_key(facts);
    let mut checks = vec![
        ledger_balances(facts),
        oversell,
        orders_match_ledger(facts, sold_by_ledger),
        keys,
        purchase_limit(facts),
    ];
    checks.extend(orders_were_placed(facts));
    checks.extend(error_rate(facts));
    Verdict {
        passed: checks.iter().all(|c| c.passed),
        oversold,
        duplicates,
        checks,
    }
}

/// 1. The stock-service's own books.
fn ledger_balances(facts: &Facts) -> Check {
    let s = &facts.stock_audit;
    check(
        "stock_ledger_balances",
        s.ok && s.oversold == 0 && s.initial == facts.stock,
        if s.ok && s.oversold == 0 && s.initial == facts.stock {
            format!(
                "initial {} = available {} + deducted {} - released {}",
                s.initial, s.available, s.deducted, s.released
            )
        } else if s.initial != facts.stock {
            format!(
                "the item holds {} units, not the {} seeded (reset during the run?)",
                s.initial, facts.stock
            )
        } else {
            format!(
                "the stock audit fails: oversold {} ({})",
                s.oversold,
                first_problems(&s.problems)
            )
        },
        json!({
            "ok": s.ok, "initial": s.initial, "available": s.available, "deducted": s.deducted,
            "released": s.released, "oversold": s.oversold, "problems": s.problems,
        }),
    )
}

/// 2. Nothing sold beyond the stock, by every account; also the largest excess.
fn no_oversell(facts: &Facts, sold_by_ledger: i64) -> (Check, i64) {
    let s = &facts.stock_audit;
    let o = &facts.order_audit;
    let c = &facts.client;
    let held_by_orders = o.orders.reserved.qty + o.orders.paid.qty;
    let held_by_clients = i(c.orders_seen) - i(c.orders_cancelled);
    let oversold = [
        s.oversold,
        sold_by_ledger - facts.stock,
        held_by_orders - facts.stock,
        held_by_clients - facts.stock,
    ]
    .into_iter()
    .max()
    .unwrap_or(0)
    .max(0);
    let verdict = check(
        "no_oversell",
        oversold == 0,
        format!(
            "stock {}: sold by the ledger {sold_by_ledger}, held by reserved+paid orders \
             {held_by_orders}, held by orders clients saw {held_by_clients} ({} seen - {} \
             cancelled){}",
            facts.stock,
            c.orders_seen,
            c.orders_cancelled,
            if oversold > 0 {
                format!(": OVERSOLD by {oversold}")
            } else {
                String::new()
            }
        ),
        json!({
            "stock": facts.stock, "sold_by_ledger": sold_by_ledger,
            "held_by_orders": held_by_orders, "held_by_clients": held_by_clients,
            "audit_oversold": s.oversold, "oversold": oversold,
        }),
    );
    (verdict, oversold)
}

/// 3. The order books and the stock ledger tell the same story.
fn orders_match_ledger(facts: &Facts, sold_by_ledger: i64) -> Check {
    let s = &facts.stock_audit;
    let o = &facts.order_audit;
    let c = &facts.client;
    let settled = o.orders.pending.count == 0;
    let server_orders = o.orders.reserved.count + o.orders.paid.count + o.orders.cancelled.count;
    let books_match = settled && o.holding_stock_qty == sold_by_ledger;
    let clients_within = i(c.orders_seen) <= server_orders;
    check(
        "orders_match_ledger",
        books_match && clients_within,
        if !settled {
            format!(
                "{} orders still pending after the settle time",
                o.orders.pending.count
            )
        } else if !books_match {
            format!(
                "orders hold {} units (reserved {} + paid {} + cancelled-unreleased {}) but \
                 the ledger says deducted {} - released {} = {sold_by_ledger}",
                o.holding_stock_qty,
                o.orders.reserved.qty,
                o.orders.paid.qty,
                o.cancelled_unreleased.qty,
                s.deducted,
                s.released
            )
        } else if !clients_within {
            format!(
                "clients saw {} orders, the order-service has {server_orders}",
                c.orders_seen
            )
        } else {
            format!(
                "reserved {} + paid {} + cancelled-unreleased {} = deducted {} - released {}",
                o.orders.reserved.qty,
                o.orders.paid.qty,
                o.cancelled_unreleased.qty,
                s.deducted,
                s.released
            )
        },
        json!({
            "reserved": o.orders.reserved.qty, "paid": o.orders.paid.qty,
            "cancelled": o.orders.cancelled.qty,
            "cancelled_unreleased": o.cancelled_unreleased.qty,
            "pending": o.orders.pending.count, "holding_stock": o.holding_stock_qty,
            "deducted": s.deducted, "released": s.released, "sold_by_ledger": sold_by_ledger,
            "orders_seen_by_clients": c.orders_seen, "orders_on_server": server_orders,
        }),
    )
}

/// 4. One key, one order; also how many duplicates there were.
fn one_order_per_key(facts: &Facts) -> (Check, i64) {
    let o = &facts.order_audit;
    let c = &facts.client;
    let duplicates = i(c.key_conflicts)
        + i(c.replay_mismatches)
        + o.keys_with_several_orders
        + o.orders_without_key;
    let verdict = check(
        "one_order_per_key",
        duplicates == 0,
        format!(
            "{} resends; keys answered with two orders {}, resends answered differently {}; \
             server: keys with several orders {}, orders without a key {}",
            c.resends,
            c.key_conflicts,
            c.replay_mismatches,
            o.keys_with_several_orders,
            o.orders_without_key
        ),
        json!({
            "resends": c.resends, "client_key_conflicts": c.key_conflicts,
            "client_replay_mismatches": c.replay_mismatches,
            "replays_unmarked": c.replays_unmarked,
            "server_keys_with_several_orders": o.keys_with_several_orders,
            "server_orders_without_key": o.orders_without_key, "duplicates": duplicates,
        }),
    );
    (verdict, duplicates)
}

/// 5. The purchase limit held.
fn purchase_limit(facts: &Facts) -> Check {
    let o = &facts.order_audit;
    let c = &facts.client;
    let over = o.users_over_limit + i(facts.client_users_over_limit);
    check(
        "purchase_limit",
        over == 0,
        format!(
            "limit {} per user: over it by the server's count {}, by the clients' {} (most \
             held by one buyer: {})",
            o.purchase_limit,
            o.users_over_limit,
            facts.client_users_over_limit,
            c.max_orders_held_by_one_user
        ),
        json!({
            "purchase_limit": o.purchase_limit, "server_users_over_limit": o.users_over_limit,
            "client_users_over_limit": facts.client_users_over_limit,
            "max_held_by_one_user": c.max_orders_held_by_one_user, "users": o.users,
        }),
    )
}

/// 6. The run proves something only if it sold (when there were buyers and stock).
fn orders_were_placed(facts: &Facts) -> Option<Check> {
    let c = &facts.client;
    if !(facts.buyers && facts.stock > 0) {
        return None;
    }
    Some(check(
        "orders_were_placed",
        c.orders_seen > 0,
        format!(
            "{} order requests, {} orders",
            c.order_requests, c.orders_seen
        ),
        json!({ "order_requests": c.order_requests, "orders_seen": c.orders_seen }),
    ))
}

/// 7. Optionally, availability.
fn error_rate(facts: &Facts) -> Option<Check> {
    let c = &facts.client;
    let max = facts.max_error_rate?;
    let rate = if c.order_requests == 0 {
        0.0
    } else {
        c.errors as f64 / c.order_requests as f64
    };
    Some(check(
        "error_rate",
        rate <= max,
        format!(
            "{} errors over {} order requests = {:.2}% (max {:.2}%)",
            c.errors,
            c.order_requests,
            rate * 100.0,
            max * 100.0
        ),
        json!({ "errors": c.errors, "order_requests": c.order_requests, "rate": rate, "max": max }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shop::{StatusTallies, Tally};

    /// A clean sell-out: 50 units, 5 cancelled and sold again, 30 paid.
    fn clean() -> Facts {
        Facts {
            stock: 50,
            buyers: true,
            client: ClientFacts {
                order_requests: 900,
                orders_seen: 55,
                orders_cancelled: 5,
                orders_paid: 30,
                resends: 11,
                max_orders_held_by_one_user: 1,
                ..ClientFacts::default()
            },
            client_users_over_limit: 0,
            stock_audit: StockAudit {
                ok: true,
                initial: 50,
                available: 0,
                deducted: 55,
                released: 5,
                oversold: 0,
                problems: vec![],
            },
            order_audit: OrderAudit {
                orders: StatusTallies {
                    reserved: Tally { count: 20, qty: 20 },
                    paid: Tally { count: 30, qty: 30 },
                    cancelled: Tally { count: 5, qty: 5 },
                    rejected: Tally { count: 40, qty: 40 },
                    ..StatusTallies::default()
                },
                holding_stock_qty: 50,
                users: 70,
                purchase_limit: 1,
                ..OrderAudit::default()
            },
            max_error_rate: None,
        }
    }

    fn failed(v: &Verdict) -> Vec<&str> {
        v.failures().map(|c| c.name.as_str()).collect()
    }

    #[test]
    fn a_clean_sell_out_passes() {
        let v = judge(&clean());
        assert!(v.passed, "{v:#?}");
        assert_eq!((v.oversold, v.duplicates), (0, 0));
        assert_eq!(v.checks.len(), 6);
    }

    #[test]
    fn an_oversell_fails_with_its_size() {
        let mut f = clean();
        // Naive: 60 orders recorded, the segments only went down by 50.
        f.stock_audit.ok = false;
        f.stock_audit.deducted = 65;
        f.stock_audit.oversold = 10;
        f.stock_audit.problems = vec!["segment 0: 10 units unaccounted".into()];
        f.order_audit.orders.reserved = Tally { count: 30, qty: 30 };
        f.order_audit.holding_stock_qty = 60;
        f.client.orders_seen = 65;
        let v = judge(&f);
        assert!(!v.passed);
        assert_eq!(v.oversold, 10);
        assert_eq!(failed(&v), ["stock_ledger_balances", "no_oversell"]);
        let no_oversell = &v.checks[1];
        assert!(
            no_oversell.detail.contains("OVERSOLD by 10"),
            "{}",
            no_oversell.detail
        );
        assert_eq!(no_oversell.numbers["held_by_orders"], 60);

        f.stock_audit.problems = (0..5).map(|n| format!("segment {n} off")).collect();
        let v = judge(&f);
        assert!(
            v.checks[0].detail.ends_with("segment 2 off; 2 more)"),
            "{}",
            v.checks[0].detail
        );
        assert_eq!(v.checks[0].numbers["problems"].as_array().unwrap().len(), 5);
    }

    #[test]
    fn duplicates_and_limit_breaks_fail_their_checks() {
        let mut f = clean();
        f.client.key_conflicts = 1;
        f.order_audit.keys_with_several_orders = 2;
        let v = judge(&f);
        assert_eq!(failed(&v), ["one_order_per_key"]);
        assert_eq!(v.duplicates, 3);

        let mut f = clean();
        f.client.replay_mismatches = 1;
        assert_eq!(failed(&judge(&f)), ["one_order_per_key"]);

        let mut f = clean();
        f.order_audit.users_over_limit = 1;
        assert_eq!(failed(&judge(&f)), ["purchase_limit"]);
        let mut f = clean();
        f.client_users_over_limit = 2;
        assert_eq!(failed(&judge(&f)), ["purchase_limit"]);
    }

    #[test]
    fn books_that_disagree_or_have_not_settled_fail() {
        let mut f = clean();
        f.order_audit.holding_stock_qty = 49;
        assert_eq!(failed(&judge(&f)), ["orders_match_ledger"]);
        let mut f = clean();
        f.order_audit.orders.pending = Tally { count: 2, qty: 2 };
        let v = judge(&f);
        assert_eq!(failed(&v), ["orders_match_ledger"]);
        assert!(v.checks[2].detail.contains("pending"));
        let mut f = clean();
        f.client.orders_seen = 56;
        f.client.orders_cancelled = 6;
        assert_eq!(failed(&judge(&f)), ["orders_match_ledger"]);
    }

    #[test]
    fn a_reset_item_or_no_sales_or_errors_fail() {
        let mut f = clean();
        f.stock_audit.initial = 60;
        assert_eq!(failed(&judge(&f)), ["stock_ledger_balances"]);

        let mut f = clean();
        f.client.orders_seen = 0;
        f.client.orders_cancelled = 0;
        f.order_audit = OrderAudit::default();
        f.stock_audit.deducted = 0;
        f.stock_audit.released = 0;
        f.stock_audit.available = 50;
        assert_eq!(failed(&judge(&f)), ["orders_were_placed"]);
        f.buyers = false;
        assert!(judge(&f).passed);

        let mut f = clean();
        f.client.errors = 90;
        f.max_error_rate = Some(0.05);
        assert_eq!(failed(&judge(&f)), ["error_rate"]);
        f.max_error_rate = Some(0.2);
        assert!(judge(&f).passed);
    }
}
