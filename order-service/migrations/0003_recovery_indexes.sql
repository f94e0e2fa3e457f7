-- The recovery worker asks every second, on every instance, for reserved orders past their
-- payment window and for cancelled orders whose stock is not yet released. Through
-- `orders_open (status, updated_at)` both looked at every reserved (or every cancelled) order
-- ever kept and filtered on the heap: after a 100 000-unit sale that was ~50 000 rows per
-- pass per instance, growing with history (seen in the shop bench: 64 000 rows read per
-- second while nothing happened). Each query now has a partial index holding exactly its
-- candidates, in the order it takes them, so a pass reads only what it will change.
CREATE INDEX orders_unpaid ON orders (pay_by) WHERE status = 'reserved';
CREATE INDEX orders_unreleased ON orders (updated_at) WHERE status = 'cancelled' AND NOT stock_released;
-- What is left of `orders_open` is the pending part (stuck orders to re-drive); the reserved
-- and cancelled entries only cost writes.
DROP INDEX orders_open;
CREATE INDEX orders_pending ON orders (updated_at) WHERE status = 'pending';
