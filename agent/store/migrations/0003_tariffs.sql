-- evpay-agent journal, schema 3 (issue 10): tariffs persist across restarts. Every tariff that priced
-- a session or became the station's is kept once, by fingerprint; each payment names the tariff its
-- session started with; one row holds the station's tariff set by `set_tariff`.

CREATE TABLE tariffs (
    fingerprint   TEXT PRIMARY KEY,              -- agent.money.tariff.tariff_fingerprint (sha256 hex)
    tariff_json   TEXT NOT NULL,                 -- tariff_to_builtins, canonical JSON
    stored_at     TEXT NOT NULL                  -- UTC ISO 8601, first stored
);

-- the tariff the session started with (STOP-8: a session restored after a restart keeps it);
-- NULL for a payment of schema 2 (priced by the station's tariff at the restart, as before)
ALTER TABLE payments ADD COLUMN tariff_fingerprint TEXT REFERENCES tariffs (fingerprint);

CREATE TABLE station_tariff (                    -- at most one row: the tariff of the last set_tariff
    id                      INTEGER PRIMARY KEY CHECK (id = 1),
    fingerprint             TEXT NOT NULL REFERENCES tariffs (fingerprint),
    configured_fingerprint  TEXT NOT NULL,       -- the configured tariff it replaced: a changed
                                                 -- configuration wins at the next start
    set_at                  TEXT NOT NULL
);
