-- Drops notifications_customer (013): no reader selects notifications by
-- customer (the feed and the sender read by position, replay by id or
-- derived_at), and keeping it cost every derived notification one more
-- random insert into a B-tree. Owned by projections.
DROP INDEX notifications_customer;

---- create above / drop below ----
CREATE INDEX notifications_customer ON notifications (account, customer_id, position);
