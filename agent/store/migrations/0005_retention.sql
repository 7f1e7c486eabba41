-- evpay-agent journal, schema 5 (issue 12): the retention rule (Journal.prune) finds the oldest
-- settled payments by their end time without a scan of the whole table, and the tariffs still
-- referenced by a payment without one either.

CREATE INDEX payments_ended ON payments (ended_at) WHERE ended_at IS NOT NULL;
CREATE INDEX payments_tariff ON payments (tariff_fingerprint) WHERE tariff_fingerprint IS NOT NULL;
-- payment-less events (recovery_*, alarms of the agent itself) by time
CREATE INDEX events_unowned ON events (at) WHERE payment_id IS NULL;
