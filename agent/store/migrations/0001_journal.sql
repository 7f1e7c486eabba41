-- evpay-agent journal, schema 1 (DESIGN.md §5.2). Applied inside one transaction by agent.journal.
-- Card data: only the terminal's masked PAN and the card hash (EMV) / UID (RFID) token; never a PAN.

CREATE TABLE payments (
    payment_id            TEXT PRIMARY KEY,      -- the engine's session_ref
    connector_id          INTEGER NOT NULL,
    method                TEXT,                  -- emv | rfid | remote | free_vend
    terminal_session_id   TEXT,                  -- PSP session id (EMV only)
    card_kind             TEXT,                  -- emv | rfid
    card_token            TEXT,                  -- card hash (EMV) or UID (RFID): tap-to-stop matching
    masked_pan            TEXT,
    brand                 TEXT,
    requested_minor       INTEGER,
    authorized_minor      INTEGER,
    state                 TEXT NOT NULL,         -- authorizing approved charging stopping settling
                                                 -- committed voided declined failed ended
    final_minor           INTEGER,
    energy_wh             INTEGER NOT NULL DEFAULT 0,
    cost_minor            INTEGER NOT NULL DEFAULT 0,
    energy_on             INTEGER NOT NULL DEFAULT 0,
    last_meter_wh         INTEGER,               -- the last persisted meter register value
    last_meter_at         TEXT,
    usage_json            TEXT,                  -- statemachines.pricing.Usage, for exact restart pricing
    stop_reason           TEXT,
    disposal              TEXT,                  -- commit | void
    disposal_decided_at   TEXT,
    disposal_sent_at      TEXT,
    disposal_attempts     INTEGER NOT NULL DEFAULT 0,
    disposal_confirmed_at TEXT,
    disposal_outcome      TEXT,                  -- ok | not_found
    started_at            TEXT NOT NULL,
    updated_at            TEXT NOT NULL,
    ended_at              TEXT,
    recovered             INTEGER NOT NULL DEFAULT 0
);

CREATE INDEX payments_open ON payments (state) WHERE ended_at IS NULL;
CREATE INDEX payments_started ON payments (started_at);

CREATE TABLE events (                            -- append-only: every JournalRecord and recovery action
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    at            TEXT NOT NULL,                 -- UTC ISO 8601
    kind          TEXT NOT NULL,
    connector_id  INTEGER,
    payment_id    TEXT,
    data          TEXT NOT NULL                  -- JSON
);

CREATE INDEX events_payment ON events (payment_id);
