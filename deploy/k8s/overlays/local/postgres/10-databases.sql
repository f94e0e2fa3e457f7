-- Run once by the postgres image's entrypoint, when the data volume is first initialised.
-- The stock-service and the order-service each own a database and apply their own
-- migrations to it at start; they never share tables.
CREATE DATABASE seckill_stock;
CREATE DATABASE seckill_orders;
