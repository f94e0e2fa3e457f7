//! Goose load tests of the flash-sale shop that prove it does not oversell.
//!
//! A run ([`run::run`]) goes through the gateway only:
//!
//! 1. checks the target answers, logs in as admin, seeds the hot item (`PUT /api/stock/{sku}`
//!    with the stock and segments) and checks both audits answer;
//! 2. scrapes the services' `/metrics` (`--scrape`), then attacks with goose: `flash-sale`
//!    buyers ([`scenarios::flash_sale`]) each log in as a distinct user and order the item
//!    with fresh Idempotency-Keys, resend some keys (the answer must be the same order), pay
//!    or cancel some orders; `browse` users read the stock; `mix` runs both;
//! 3. waits for pending orders and releases to settle, audits the stock-service's ledger
//!    (`GET /api/stock/{sku}/audit`) and the order-service's books
//!    (`GET /api/orders/audit/{sku}`, admin), scrapes again;
//! 4. judges ([`verdict::judge`]): no unit sold beyond the stock by any account, the books
//!    agree, one order per key, the purchase limit held;
//! 5. writes goose's HTML/JSON/Markdown reports and `summary.md`/`summary.json`
//!    ([`summary::Summary`]).
//!
//! The binary exits 0 when the verdict passed, 1 when it failed, 2 when the run could not
//! be made (see `loadtest/README.md`).

pub mod options;
pub mod record;
pub mod run;
pub mod scenarios;
pub mod scrape;
pub mod shop;
pub mod summary;
pub mod verdict;

pub use options::{Options, ScenarioKind};
pub use run::{Report, RunError, run};
pub use summary::Summary;
pub use verdict::Verdict;

/// Exit code of a run whose verdict passed.
pub const EXIT_PASSED: u8 = 0;
/// Exit code of a run whose verdict failed (oversold, duplicates, limit broken, books off).
pub const EXIT_FAILED: u8 = 1;
/// Exit code of a run that could not be made (bad options, target unreachable, admin login
/// refused, audits missing, goose error, reports not writable).
pub const EXIT_NOT_RUN: u8 = 2;
