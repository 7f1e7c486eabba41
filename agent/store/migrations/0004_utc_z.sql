-- evpay-agent journal, schema 4 (issue 11): one timestamp format, RFC 3339 UTC with "Z"
-- (agent.timefmt.utc_timestamp), as upstream payloads and receipts have it. Journals of schemas
-- 1-3 wrote Python's isoformat, "…+00:00": the same instants, rewritten here (precision kept).
-- Readers normalise on read as well (a read-only CLI may see a journal not migrated yet).

UPDATE payments SET
    last_meter_at         = replace(last_meter_at, '+00:00', 'Z'),
    disposal_decided_at   = replace(disposal_decided_at, '+00:00', 'Z'),
    disposal_sent_at      = replace(disposal_sent_at, '+00:00', 'Z'),
    disposal_confirmed_at = replace(disposal_confirmed_at, '+00:00', 'Z'),
    started_at            = replace(started_at, '+00:00', 'Z'),
    updated_at            = replace(updated_at, '+00:00', 'Z'),
    ended_at              = replace(ended_at, '+00:00', 'Z'),
    session_started_at    = replace(session_started_at, '+00:00', 'Z'),
    orphan_cleared_at     = replace(orphan_cleared_at, '+00:00', 'Z'),
    usage_json            = replace(usage_json, '+00:00"', 'Z"');

UPDATE events SET at = replace(at, '+00:00', 'Z'), data = replace(data, '+00:00"', 'Z"');

UPDATE tariffs SET stored_at = replace(stored_at, '+00:00', 'Z');

UPDATE station_tariff SET set_at = replace(set_at, '+00:00', 'Z');

-- the newest event of one kind per connector (agent.runtime.charger_payment: the settlement a restart
-- offers the charger again) without a scan of the whole journal
CREATE INDEX events_kind ON events (kind, connector_id);
