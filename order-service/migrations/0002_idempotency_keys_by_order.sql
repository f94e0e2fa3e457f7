-- Every settled order updates its key by order id (`finish`, `store_response`), and
-- abandon/discard delete by it: without an index each of those scanned the whole table, which
-- keeps 24 h of keys, so the order path slowed down as the table grew (seen in the shop bench:
-- throughput halved over a few thousand orders). An order is made by exactly one key, so the
-- index is unique.
CREATE UNIQUE INDEX idempotency_keys_by_order ON idempotency_keys (order_id);
