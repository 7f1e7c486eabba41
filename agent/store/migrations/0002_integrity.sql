-- evpay-agent journal, schema 2 (integrity issue): facts that can be unknown, the session start,
-- and possible orphan approvals (psp-reference §10.4).

-- energy was first enabled: session.started was published (a resumed session is not started again)
ALTER TABLE payments ADD COLUMN session_started_at TEXT;
-- the acquirer's reference of the approval, when the terminal gives one (receipts)
ALTER TABLE payments ADD COLUMN host_reference TEXT;
-- a card read without an outcome at a restart: the terminal may hold an approval the journal never saw
ALTER TABLE payments ADD COLUMN orphan_suspected INTEGER NOT NULL DEFAULT 0;
ALTER TABLE payments ADD COLUMN orphan_cleared_at TEXT;
ALTER TABLE payments ADD COLUMN orphan_resolution TEXT;

-- an open payment of schema 1 that had energy enabled: its session.started was published
UPDATE payments SET session_started_at = started_at
    WHERE ended_at IS NULL AND (state IN ('charging', 'stopping') OR (state = 'settling' AND disposal = 'commit'));

CREATE INDEX payments_orphans ON payments (orphan_suspected) WHERE orphan_cleared_at IS NULL;
