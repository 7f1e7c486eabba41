"""The journal: the agent's write-ahead record of every money-relevant fact (DESIGN.md §2, §5.2).

Lives in the agent's one database (:class:`agent.store.db.Store`, SQLite in WAL mode with
``synchronous=FULL``) next to the outbox: :meth:`Journal.record` folds one typed engine record
(:data:`statemachines.effects.JournalRecord`) into the ``payments`` row and appends it to the
``events`` log inside the current transaction — the runtime opens one transaction per engine step,
so the step's records and the outbox rows of its upstream events commit together (integrity issue
B). Called outside a transaction, a write commits on its own. Durability: every money-relevant
fact is fsynced; a step that wrote only periodic meter values commits without its own fsync
(survives a process crash, fsynced with the next durable commit; docs/runtime.md "Journal
durability"). Schema changes are numbered SQL files in ``agent/store/migrations`` (``0001_journal.sql``
…) applied in order inside one transaction each, tracked in ``schema_version``.

One writer: the :class:`Journal` object writes through the store's only read-write connection,
from the event-loop thread only. Readers (the ``sessions`` command, reconciliation) open their own
read-only connection with :func:`read_payments` / :func:`read_window`, which work while the daemon
runs (WAL).

Tables: ``payments`` (one row per payment, keyed by the engine's ``session_ref``) and ``events``
(append-only log of every record and recovery action, with its JSON data).

Card data (PCI DSS, OPS-2): only the masked PAN and the card hash (EMV) / UID (RFID) are stored.
:func:`check_no_pan` refuses (raises :class:`JournalError`) any value with a run of 13 to 19 digits —
a possible full PAN — before anything is written; the error names the field, never the value.

Possible orphan approvals (psp-reference §10.4): a card read journaled as ``authorizing`` with no
outcome when the agent restarts may have been approved by the terminal after the journal saw it
(the approval was lost with the process). :meth:`Journal.suspect_orphan` closes such a row with
``orphan_suspected``; it stays a reconciliation discrepancy until :meth:`Journal.clear_orphan`
(an operator's ``clear_discrepancy`` command, or a P6X List Sessions that accounts for every open
terminal session).
"""

from __future__ import annotations

import dataclasses
import json
import re
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum, StrEnum
from importlib import resources
from pathlib import Path
from typing import Any, Final, assert_never

from agent import crashpoints
from agent.errors import AgentError
from agent.store.db import DB_FILE, METER_SYNC_INTERVAL_S, Store, StoreError
from agent.timefmt import normalize_timestamp, parse_timestamp, utc_timestamp
from statemachines.effects import (
    JournalRecord,
    RecordCardRead,
    RecordCommitConfirmed,
    RecordCommitDecided,
    RecordEnergyOn,
    RecordLimitReached,
    RecordMeter,
    RecordPaymentApproved,
    RecordPaymentDeclined,
    RecordPaymentIncremented,
    RecordPaymentRestored,
    RecordSessionEnded,
    RecordStop,
    RecordVoidConfirmed,
    RecordVoidDecided,
)
from statemachines.events import CardKind, CardToken, Disposal, PaymentMethod, RestoredPayment, StopSource
from statemachines.pricing import Period, Usage, UsageKind

JOURNAL_FILE: Final = DB_FILE
BUSY_TIMEOUT_MS: Final = 5000
__all__ = ["METER_SYNC_INTERVAL_S"]  # re-exported for callers that tune the store


class PaymentState(StrEnum):
    """The ``payments.state`` column: where a payment is, from card read to its end."""

    AUTHORIZING = "authorizing"  # card read, no outcome yet
    APPROVED = "approved"
    CHARGING = "charging"
    STOPPING = "stopping"
    SETTLING = "settling"  # Commit or Void decided, not yet confirmed
    COMMITTED = "committed"
    VOIDED = "voided"
    DECLINED = "declined"
    FAILED = "failed"  # no answer, or closed by the restart recovery before an outcome
    ENDED = "ended"  # a session with nothing to settle on the terminal


FINAL_STATES: Final = frozenset(
    {
        PaymentState.COMMITTED,
        PaymentState.VOIDED,
        PaymentState.DECLINED,
        PaymentState.FAILED,
        PaymentState.ENDED,
    }
)
# a full PAN is 13 to 19 digits (ISO/IEC 7812); a 40-hex card hash never has such a run alone
# A full PAN as it would leak: 13 to 19 digits standing alone (not inside a longer hex token such as
# a card hash or an RFID UID), a card-brand first digit (2 to 6) and a valid Luhn check digit.
PRUNE_BATCH: Final = 200  # payments per prune transaction: a few ms of the dispatcher, not seconds
_PAN_LIKE: Final = re.compile(r"(?<![0-9A-Za-z])[2-6][0-9]{12,18}(?![0-9A-Za-z])")
_CARD_HASH: Final = re.compile(r"^[0-9A-Fa-f]{40}$")


class JournalError(AgentError):
    """The journal cannot be opened, migrated or written; or a write was refused (card data)."""


def _utc_iso(at: datetime | None = None) -> str:
    """The journal's timestamps: the agent's one format (RFC 3339 UTC ``Z``, agent.timefmt), to
    the microsecond (restart pricing and ordering need the exact instants)."""
    return utc_timestamp(at or datetime.now(UTC), timespec="microseconds")


def _json_default(value: object) -> object:
    """``json.dumps`` fallback of :meth:`Journal.note`: datetimes in the one format, else text."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        return _utc_iso(value)
    return str(value)


def check_no_pan(kind: str, values: Mapping[str, object]) -> None:
    """Raise :class:`JournalError` when a value looks like a full PAN (see ``_PAN_LIKE``).

    A 40-hex-digit card hash is allowed as a whole (psp-reference §5.14); the message names the
    field only, never the value.
    """
    for name, value in values.items():
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int):
            text = str(abs(value))
        elif isinstance(value, str):
            if _CARD_HASH.match(value):
                continue
            text = value
        elif isinstance(value, Mapping):
            check_no_pan(kind, {f"{name}.{k}": v for k, v in value.items()})
            continue
        elif isinstance(value, list | tuple):
            check_no_pan(kind, {f"{name}[{i}]": v for i, v in enumerate(value)})
            continue
        else:
            text = str(value)
        if any(_luhn_ok(mo.group()) for mo in _PAN_LIKE.finditer(text)):
            raise JournalError(f"refused to journal {kind}: field {name} looks like a full PAN")


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 0x30
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


# --- usage (de)serialisation ------------------------------------------------------------------


def usage_to_json(usage: Usage) -> str:
    """``{"started_at", "periods": [[start, kind, energy_wh, duration_ms, power_w, current_a], …]}``."""
    return json.dumps(
        {
            "started_at": _utc_iso(usage.started_at) if usage.started_at else None,
            "periods": [
                [_utc_iso(p.start), p.kind.value, p.energy_wh, p.duration_ms, p.power_w, p.current_a]
                for p in usage.periods
            ],
        },
        separators=(",", ":"),
    )


def usage_from_json(text: str | None) -> Usage:
    """Reads what :func:`usage_to_json` wrote, and the bucket form of journals before OCPI tariffs
    (``"buckets": [[band, kind, energy_wh, duration_ms], …]``: periods one after the other from
    ``started_at``; the band split is not kept, the tariff re-splits what follows)."""
    if not text:
        return Usage()
    raw = json.loads(text)
    started_text = raw.get("started_at")
    started = parse_timestamp(started_text) if started_text else None
    if "periods" in raw:
        periods = tuple(
            Period(
                start=parse_timestamp(start),
                kind=UsageKind(kind),
                energy_wh=int(energy),
                duration_ms=int(ms),
                power_w=None if power is None else float(power),
                current_a=None if current is None else float(current),
            )
            for start, kind, energy, ms, power, current in raw["periods"]
        )
        return Usage(started_at=started, periods=periods)
    at = started or datetime.fromtimestamp(0, UTC)
    found: list[Period] = []
    for _band, kind, energy, ms in raw.get("buckets", []):
        found.append(Period(start=at, kind=UsageKind(kind), energy_wh=int(energy), duration_ms=int(ms)))
        at = found[-1].end
    return Usage(started_at=started, periods=tuple(found))


# --- rows ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PaymentRow:
    """One ``payments`` row, as the CLI and the recovery see it."""

    payment_id: str
    connector_id: int
    method: str | None
    terminal_session_id: str | None
    card_kind: str | None
    card_token: str | None
    masked_pan: str | None
    brand: str | None
    requested_minor: int | None
    authorized_minor: int | None
    state: PaymentState
    final_minor: int | None
    energy_wh: int
    cost_minor: int
    energy_on: bool
    last_meter_wh: int | None
    last_meter_at: str | None
    usage_json: str | None
    stop_reason: str | None
    disposal: str | None
    disposal_decided_at: str | None
    disposal_sent_at: str | None
    disposal_attempts: int
    disposal_confirmed_at: str | None
    disposal_outcome: str | None
    started_at: str
    updated_at: str
    ended_at: str | None
    recovered: bool
    session_started_at: str | None  # energy was first enabled (session.started was published)
    host_reference: str | None
    orphan_suspected: bool  # closed by the restart recovery without an outcome (psp-reference §10.4)
    orphan_cleared_at: str | None
    orphan_resolution: str | None
    tariff_fingerprint: str | None  # the tariff the session started with (``tariffs``), schema 3

    @property
    def is_open(self) -> bool:
        return self.state not in FINAL_STATES

    @property
    def approved(self) -> bool:
        """Authorized (the engine saw ``payment_approved``); an ``authorizing`` row never was."""
        return self.state is not PaymentState.AUTHORIZING

    @property
    def orphan_open(self) -> bool:
        """A possible orphan approval nobody has cleared yet (a reconciliation discrepancy)."""
        return self.orphan_suspected and self.orphan_cleared_at is None

    def to_restored(self) -> RestoredPayment:
        """The engine's view of this open payment for ``PaymentRestored`` (ERR-5)."""
        card = None
        if self.card_token:
            card = CardToken(CardKind(self.card_kind or "emv"), self.card_token, self.masked_pan, self.brand)
        return RestoredPayment(
            method=PaymentMethod(self.method or "emv"),
            session_ref=self.payment_id,
            session_id=self.terminal_session_id,
            card=card,
            authorized_minor=self.authorized_minor,
            usage=usage_from_json(self.usage_json),
            last_meter_wh=self.last_meter_wh,
            last_meter_at=parse_timestamp(self.last_meter_at) if self.last_meter_at else None,
            energy_on=self.energy_on,
            disposal=Disposal(self.disposal) if self.disposal else None,
            final_minor=self.final_minor or 0,
            started=self.session_started_at is not None,
            stop_reason=StopSource(self.stop_reason) if self.stop_reason else None,
        )

    def to_json(self) -> dict[str, object]:
        """The ``evpay-agent sessions --json`` object (a contract: keep the names)."""
        session_id: int | None = None
        if self.terminal_session_id is not None:
            try:
                session_id = int(self.terminal_session_id)
            except ValueError:
                session_id = None
        return {
            "payment_id": self.payment_id,
            "connector_id": self.connector_id,
            "method": self.method,
            "terminal_session_id": session_id,
            "state": self.state.value,
            "authorized_minor": self.authorized_minor,
            "final_minor": self.final_minor,
            "energy_wh": self.energy_wh,
            "cost_minor": self.cost_minor,
            "masked_pan": self.masked_pan,
            "brand": self.brand,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "disposal": self.disposal,
            "disposal_sent": self.disposal_sent_at is not None,
            "disposal_confirmed": self.disposal_confirmed_at is not None,
            "stop_reason": self.stop_reason,
            "recovered": self.recovered,
            "orphan_suspected": self.orphan_suspected,
            "orphan_cleared": self.orphan_cleared_at is not None,
            "tariff_fingerprint": self.tariff_fingerprint,
        }


_COLUMNS: Final = tuple(f.name for f in dataclasses.fields(PaymentRow))
_BOOLEAN_COLUMNS: Final = frozenset({"energy_on", "recovered", "orphan_suspected"})
_TIMESTAMP_COLUMNS: Final = frozenset(
    {
        "last_meter_at",
        "disposal_decided_at",
        "disposal_sent_at",
        "disposal_confirmed_at",
        "started_at",
        "updated_at",
        "ended_at",
        "session_started_at",
        "orphan_cleared_at",
    }
)


def _row(values: sqlite3.Row) -> PaymentRow:
    data: dict[str, Any] = dict(zip(_COLUMNS, values, strict=True))
    for name in _BOOLEAN_COLUMNS:
        data[name] = bool(data[name])
    for name in _TIMESTAMP_COLUMNS:  # schema < 4 (a read-only reader of a journal not migrated yet)
        data[name] = normalize_timestamp(data[name])
    if data["usage_json"]:
        data["usage_json"] = data["usage_json"].replace('+00:00"', 'Z"')
    data["state"] = PaymentState(data["state"])
    return PaymentRow(**data)


@dataclass(frozen=True, slots=True)
class StoredTariff:
    """A tariff as the journal keeps it: ``agent.money.tariff.tariff_to_builtins`` and its
    ``tariff_fingerprint`` (the journal stores and returns them; it never prices)."""

    fingerprint: str
    builtins: Mapping[str, object]

    def to_json(self) -> str:
        """The canonical JSON text (sorted keys, no spaces), the text the fingerprint digests."""
        return json.dumps(self.builtins, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class StationTariffRow:
    """The ``station_tariff`` row: the tariff of the last ``set_tariff`` and the fingerprint of the
    configured tariff it replaced (a restart with a changed configuration applies the configuration)."""

    tariff: StoredTariff
    configured_fingerprint: str
    set_at: str


@dataclass(frozen=True, slots=True)
class EventRow:
    id: int
    at: str
    kind: str
    connector_id: int | None
    payment_id: str | None
    data: dict[str, Any]


def record_data(record: JournalRecord) -> dict[str, object]:
    """The JSON object of ``record`` in the ``events`` log: its fields (the usage is kept in the
    payment row, not repeated), cards as kind/token/masked PAN/brand, enums as their values.

    Card facts the record does not know are left out rather than written as ``null``: a Card Read
    carries no brand (DFCA0A is an Auth-stage tag, psp-reference §6.4), the approval names it
    (``card_brand``); the payment row holds what is known, ``NULL`` only when the terminal never
    said (issue 11: "says VISA but journals brand: null")."""
    out: dict[str, object] = {}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if f.name in ("connector_id", "usage"):
            continue
        if f.name in ("card", "card_brand") and value is None:
            continue
        if isinstance(value, CardToken):
            out.update(card_kind=value.kind.value, token=value.token)
            out.update({k: v for k, v in (("masked_pan", value.masked_pan), ("brand", value.brand)) if v})
        elif isinstance(value, Enum):
            out[f.name] = value.value
        else:
            out[f.name] = value
    return out


# --- migrations ---------------------------------------------------------------------------------


def migrations() -> list[tuple[int, str]]:
    """``(version, sql)`` of every file ``agent/store/migrations/NNNN_*.sql``, ascending."""
    found: list[tuple[int, str]] = []
    for entry in resources.files("agent.store.migrations").iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            found.append((int(name[:4]), entry.read_text(encoding="utf-8")))
    found.sort()
    versions = [v for v, _ in found]
    if versions != list(range(1, len(versions) + 1)):
        raise JournalError(f"journal migrations must be numbered 1..N without gaps, found {versions}")
    return found


def _migrate(conn: sqlite3.Connection) -> int:
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    current = int(row[0] or 0)
    known = migrations()
    if current > len(known):
        raise JournalError(f"journal schema {current} is newer than this agent (knows {len(known)})")
    for version, sql in known[current:]:
        try:
            conn.execute("BEGIN IMMEDIATE")
            for statement in _statements(sql):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK")
            raise JournalError(f"journal migration {version:04d} failed: {exc}") from exc
        current = version
    return current


def _statements(sql: str) -> Iterable[str]:
    buffer = ""
    for line in sql.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                yield buffer
            buffer = ""
    if buffer.strip() and not all(
        ln.strip().startswith("--") or not ln.strip() for ln in buffer.splitlines()
    ):
        raise JournalError("incomplete SQL statement at the end of a migration")


# --- the journal --------------------------------------------------------------------------------


def migrate(store: Store) -> int:
    """Apply the journal's migrations to ``store``; returns the schema version."""
    try:
        return _migrate(store.conn)
    except sqlite3.Error as exc:
        raise JournalError(f"cannot migrate the journal in {store.path}: {exc}") from exc


class Journal:
    """The single writer of the journal tables. Built on a :class:`Store` (migrated here);
    :meth:`open` opens a store of its own (closed by :meth:`close`)."""

    def __init__(self, store: Store, *, owns_store: bool = False) -> None:
        self.store = store
        self.path = store.path
        self.schema_version = migrate(store)
        self._owns_store = owns_store

    @classmethod
    def open(cls, state_dir: Path | str, *, meter_sync_interval_s: float = METER_SYNC_INTERVAL_S) -> Journal:
        """Open (create, migrate) ``state_dir/journal.sqlite3`` on a store of its own; raises
        :class:`JournalError`."""
        try:
            store = Store.open(Path(state_dir), meter_sync_interval_s=meter_sync_interval_s)
        except StoreError as exc:
            raise JournalError(f"cannot open the journal in {state_dir}: {exc}") from exc
        try:
            return cls(store, owns_store=True)
        except BaseException:
            store.close()
            raise

    @property
    def _conn(self) -> sqlite3.Connection:
        return self.store.conn

    @property
    def unsynced_meter_commits(self) -> int:
        """Commits without their own fsync since the last durable one (periodic meter values)."""
        return self.store.unsynced_commits

    def close(self) -> None:
        if self._owns_store:
            self.store.close()

    # -- pragmas (for tests and `status`) --------------------------------------------------------

    def pragma(self, name: str) -> object:
        return self.store.pragma(name)

    # -- writes ----------------------------------------------------------------------------------

    def record(self, record: JournalRecord, *, at: datetime | None = None) -> None:
        """Persist ``record`` (event row + payment row update) in the current transaction (or in
        one of its own, fsynced unless it is a periodic meter value).

        Post, once the transaction is committed: the crash point ``journal:<KIND>``. Raises
        :class:`JournalError` (the transaction is then rolled back by the caller's ``atomic``)."""
        data = record_data(record)
        check_no_pan(record.KIND, data)
        when = _utc_iso(at)
        durable = not (isinstance(record, RecordMeter) and record.periodic)
        try:
            with self.store.atomic(durable=durable):
                self._conn.execute(
                    "INSERT INTO events (at, kind, connector_id, payment_id, data) VALUES (?, ?, ?, ?, ?)",
                    (when, record.KIND, record.connector_id, record.session_ref, json.dumps(data)),
                )
                self._apply(record, when)
                self.store.after_commit(lambda: crashpoints.reached(f"journal:{record.KIND}"))
        except (sqlite3.Error, StoreError) as exc:
            raise JournalError(f"journal write of {record.KIND} failed: {exc}") from exc

    def note(
        self,
        kind: str,
        connector_id: int | None,
        session_ref: str | None,
        data: Mapping[str, object],
        **changes: object,
    ) -> None:
        """Append an agent-side event (``recovery_*``, ``commit_sent`` …); ``changes`` update the
        payment ``session_ref`` (column=value). In the current transaction, or one of its own."""
        check_no_pan(kind, {**data, **changes})
        when = _utc_iso()
        try:
            with self.store.atomic():
                self._conn.execute(
                    "INSERT INTO events (at, kind, connector_id, payment_id, data) VALUES (?, ?, ?, ?, ?)",
                    (when, kind, connector_id, session_ref, json.dumps(dict(data), default=_json_default)),
                )
                if session_ref is not None and changes:
                    self._update(session_ref, when, **changes)
                self.store.after_commit(lambda: crashpoints.reached(f"journal:{kind}"))
        except (sqlite3.Error, StoreError) as exc:
            raise JournalError(f"journal write of {kind} failed: {exc}") from exc

    def disposal_sent(self, session_id: str) -> None:
        """The Commit/Void of terminal session ``session_id`` was sent (one attempt more)."""
        row = self._conn.execute(
            "SELECT payment_id, connector_id, disposal, disposal_attempts FROM payments "
            "WHERE terminal_session_id = ? AND ended_at IS NULL",
            (session_id,),
        ).fetchone()
        if row is None:
            return
        ref, connector_id, disposal, attempts = row
        self.note(
            f"{disposal or 'disposal'}_sent",
            connector_id,
            ref,
            {"session_id": session_id, "attempt": attempts + 1},
            disposal_sent_at=_utc_iso(),
            disposal_attempts=attempts + 1,
        )

    def close_unapproved(self, row: PaymentRow, *, orphan_suspected: bool) -> None:
        """Restart recovery: close a row that never reached an outcome (``authorizing``).
        ``orphan_suspected``: the terminal may hold an approval for it (an EMV card)."""
        self.note(
            "recovery_unapproved",
            row.connector_id,
            row.payment_id,
            {"reason": "crash before an outcome", "orphan_suspected": orphan_suspected},
            state=PaymentState.FAILED.value,
            ended_at=row.updated_at,
            recovered=1,
            orphan_suspected=int(orphan_suspected),
        )

    def clear_orphan(self, session_ref: str, resolution: str, *, note: str | None = None) -> PaymentRow:
        """An operator (or a P6X List Sessions) accounted for a possible orphan approval. Raises
        :class:`KeyError` for an unknown ref and :class:`ValueError` when it is no open orphan."""
        row = self.payment(session_ref)
        if row is None:
            raise KeyError(session_ref)
        if not row.orphan_open:
            raise ValueError(f"{session_ref} is not an open possible orphan approval")
        self.note(
            "orphan_cleared",
            row.connector_id,
            session_ref,
            {"resolution": resolution, "note": note},
            orphan_cleared_at=_utc_iso(),
            orphan_resolution=resolution,
        )
        cleared = self.payment(session_ref)
        assert cleared is not None
        return cleared

    def _rollback(self) -> None:
        try:
            self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def _update(self, ref: str, when: str, **changes: object) -> None:
        if not changes:
            return
        columns = ", ".join(f"{name} = ?" for name in changes)
        self._conn.execute(
            f"UPDATE payments SET {columns}, updated_at = ? WHERE payment_id = ?",
            (*changes.values(), when, ref),
        )

    def _ensure(self, ref: str, connector_id: int, when: str, state: PaymentState) -> None:
        self._conn.execute(
            "INSERT OR IGNORE INTO payments (payment_id, connector_id, state, started_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (ref, connector_id, state.value, when, when),
        )

    def _apply(self, record: JournalRecord, when: str) -> None:
        """Fold one engine record into the ``payments`` row (docs/state-machines.md record kinds)."""
        ref, cid = record.session_ref, record.connector_id
        changes: dict[str, object] = {}
        match record:
            case RecordCardRead(card=card, amount_minor=amount):
                self._ensure(ref, cid, when, PaymentState.AUTHORIZING)
                changes.update(
                    method=PaymentMethod.RFID.value
                    if card.kind is CardKind.RFID
                    else PaymentMethod.EMV.value,
                    card_kind=card.kind.value,
                    card_token=card.token,
                    masked_pan=card.masked_pan,
                    brand=card.brand,
                    requested_minor=amount,
                    state=PaymentState.AUTHORIZING.value,
                )
            case RecordPaymentDeclined(outcome=outcome):
                failed = outcome.value == "failed"
                state = PaymentState.FAILED if failed else PaymentState.DECLINED
                changes.update(state=state.value, ended_at=when, final_minor=0)
            case RecordPaymentApproved():
                self._ensure(ref, cid, when, PaymentState.APPROVED)
                changes.update(
                    state=PaymentState.APPROVED.value,
                    method=record.method.value,
                    terminal_session_id=record.session_id,
                    authorized_minor=record.authorized_minor,
                    host_reference=record.host_reference,
                )
                if record.card is not None:
                    changes.update(card_kind=record.card.kind.value, card_token=record.card.token)
                if record.card_brand is not None:
                    changes["brand"] = record.card_brand
            case RecordPaymentIncremented(authorized_minor=authorized):
                changes["authorized_minor"] = authorized
            case RecordEnergyOn():
                changes.update(
                    state=PaymentState.CHARGING.value, energy_on=1, usage_json=usage_to_json(record.usage)
                )
                if record.first:
                    changes["session_started_at"] = when
                if record.meter_wh is not None:
                    changes.update(last_meter_wh=record.meter_wh, last_meter_at=when)
            case RecordMeter():
                changes.update(
                    last_meter_wh=record.meter_wh,
                    last_meter_at=when,
                    energy_wh=record.energy_wh,
                    cost_minor=record.cost_minor,
                    usage_json=usage_to_json(record.usage),
                )
            case RecordLimitReached():
                pass
            case RecordStop():
                changes.update(
                    state=PaymentState.STOPPING.value,
                    energy_on=0,
                    stop_reason=record.reason.value,
                    energy_wh=record.energy_wh,
                    cost_minor=record.cost_minor,
                    usage_json=usage_to_json(record.usage),
                )
            case RecordCommitDecided():
                changes.update(
                    state=PaymentState.SETTLING.value,
                    energy_on=0,
                    disposal=Disposal.COMMIT.value,
                    final_minor=record.amount_minor,
                    energy_wh=record.energy_wh,
                    cost_minor=record.cost_minor,
                    usage_json=usage_to_json(record.usage),
                    disposal_decided_at=when,
                )
            case RecordVoidDecided():
                changes.update(
                    state=PaymentState.SETTLING.value,
                    energy_on=0,
                    disposal=Disposal.VOID.value,
                    final_minor=0,
                    usage_json=usage_to_json(record.usage),
                    disposal_decided_at=when,
                )
            case RecordCommitConfirmed() | RecordVoidConfirmed():
                state = (
                    PaymentState.COMMITTED
                    if isinstance(record, RecordCommitConfirmed)
                    else PaymentState.VOIDED
                )
                changes.update(
                    state=state.value,
                    disposal_confirmed_at=when,
                    disposal_outcome=record.outcome.value,
                    ended_at=when,
                )
            case RecordSessionEnded():
                changes.update(
                    state=PaymentState.ENDED.value,
                    energy_on=0,
                    energy_wh=record.energy_wh,
                    cost_minor=record.cost_minor,
                    final_minor=record.cost_minor,
                    usage_json=usage_to_json(record.usage),
                    ended_at=when,
                )
            case RecordPaymentRestored():
                changes["recovered"] = 1
            case _:
                assert_never(record)
        self._update(ref, when, **changes)

    # -- tariffs (schema 3) -------------------------------------------------------------------------

    def _store_tariff(self, tariff: StoredTariff, when: str) -> None:
        check_no_pan("tariff", {"tariff": tariff.builtins})
        self._conn.execute(
            "INSERT OR IGNORE INTO tariffs (fingerprint, tariff_json, stored_at) VALUES (?, ?, ?)",
            (tariff.fingerprint, tariff.to_json(), when),
        )

    def bind_session_tariff(self, session_ref: str, tariff: StoredTariff) -> None:
        """The session ``session_ref`` started with ``tariff``: kept (once per fingerprint) and named
        by its payment row, unless that row already names one (a session's tariff never changes).
        In the current transaction (the step that journals the session's first record)."""
        when = _utc_iso()
        try:
            with self.store.atomic():
                self._store_tariff(tariff, when)
                self._conn.execute(
                    "UPDATE payments SET tariff_fingerprint = ? "
                    "WHERE payment_id = ? AND tariff_fingerprint IS NULL",
                    (tariff.fingerprint, session_ref),
                )
        except (sqlite3.Error, StoreError) as exc:
            raise JournalError(f"journal write of the session tariff failed: {exc}") from exc

    def set_station_tariff(
        self, tariff: StoredTariff, *, configured_fingerprint: str, at: datetime | None = None
    ) -> None:
        """``set_tariff``: ``tariff`` is the station's from now on, replacing the configured tariff
        whose fingerprint is ``configured_fingerprint``. Journaled (``tariff_set``) in the current
        transaction (the step that applies the ``TariffChanged``)."""
        when = _utc_iso(at)
        data = {"fingerprint": tariff.fingerprint, "configured_fingerprint": configured_fingerprint}
        try:
            with self.store.atomic():
                self._store_tariff(tariff, when)
                self._conn.execute(
                    "INSERT OR REPLACE INTO station_tariff (id, fingerprint, configured_fingerprint, set_at) "
                    "VALUES (1, ?, ?, ?)",
                    (tariff.fingerprint, configured_fingerprint, when),
                )
                self._conn.execute(
                    "INSERT INTO events (at, kind, connector_id, payment_id, data) VALUES (?, ?, ?, ?, ?)",
                    (when, "tariff_set", None, None, json.dumps(data)),
                )
                self.store.after_commit(lambda: crashpoints.reached("journal:tariff_set"))
        except (sqlite3.Error, StoreError) as exc:
            raise JournalError(f"journal write of tariff_set failed: {exc}") from exc

    def clear_station_tariff(self, *, configured_fingerprint: str) -> None:
        """The configured tariff changed since the last ``set_tariff``: the configuration applies,
        and the journaled tariff never comes back (not even when the configuration is changed back).
        Journaled as ``tariff_config_applied``."""
        row = self.station_tariff()
        if row is None:
            return
        data = {
            "fingerprint": configured_fingerprint,
            "replaced_fingerprint": row.tariff.fingerprint,
            "previous_configured_fingerprint": row.configured_fingerprint,
        }
        try:
            with self.store.atomic():
                self._conn.execute("DELETE FROM station_tariff")
                self._conn.execute(
                    "INSERT INTO events (at, kind, connector_id, payment_id, data) VALUES (?, ?, ?, ?, ?)",
                    (_utc_iso(), "tariff_config_applied", None, None, json.dumps(data)),
                )
        except (sqlite3.Error, StoreError) as exc:
            raise JournalError(f"journal write of tariff_config_applied failed: {exc}") from exc

    def station_tariff(self) -> StationTariffRow | None:
        """The tariff of the last ``set_tariff`` still in effect, or ``None``."""
        row = self._conn.execute(
            "SELECT s.fingerprint, t.tariff_json, s.configured_fingerprint, s.set_at "
            "FROM station_tariff s JOIN tariffs t ON t.fingerprint = s.fingerprint WHERE s.id = 1"
        ).fetchone()
        if row is None:
            return None
        fingerprint, text, configured, set_at = row
        stored = StoredTariff(fingerprint, json.loads(text))
        return StationTariffRow(stored, configured, normalize_timestamp(set_at) or set_at)

    def tariff(self, fingerprint: str) -> StoredTariff | None:
        """A stored tariff by fingerprint."""
        row = self._conn.execute(
            "SELECT tariff_json FROM tariffs WHERE fingerprint = ?", (fingerprint,)
        ).fetchone()
        return None if row is None else StoredTariff(fingerprint, json.loads(row[0]))

    def session_tariff(self, session_ref: str) -> StoredTariff | None:
        """The tariff the session ``session_ref`` started with (``None``: none journaled)."""
        row = self._conn.execute(
            "SELECT t.fingerprint, t.tariff_json FROM payments p JOIN tariffs t "
            "ON t.fingerprint = p.tariff_fingerprint WHERE p.payment_id = ?",
            (session_ref,),
        ).fetchone()
        return None if row is None else StoredTariff(row[0], json.loads(row[1]))

    # -- retention (issue 12) ---------------------------------------------------------------------

    def prune(self, before: datetime, *, limit: int = PRUNE_BATCH) -> PruneResult:
        """Delete at most ``limit`` payments that **ended** before ``before`` and owe nothing —
        settled (no disposal, or its confirmation journaled) and no possible orphan approval left
        uncleared — with their events (a charger settlement among them is not offered again at a
        restart); then payment-less events (``recovery_*``) older than ``before``, at most
        ``limit``; and the tariffs no payment and no station tariff names any more.

        Open payments, orphans and the outbox (undelivered messages) are never touched. In the
        current transaction, or one of its own (not fsynced: losing a prune loses nothing).
        Raises :class:`JournalError`."""
        cutoff = _utc_iso(before)
        try:
            with self.store.atomic(durable=False):
                conn = self._conn
                refs = [
                    str(r[0])
                    for r in conn.execute(
                        "SELECT payment_id FROM payments WHERE ended_at IS NOT NULL AND ended_at < ? "
                        "AND (disposal IS NULL OR disposal_confirmed_at IS NOT NULL) "
                        "AND NOT (orphan_suspected = 1 AND orphan_cleared_at IS NULL) "
                        "ORDER BY ended_at LIMIT ?",
                        (cutoff, limit),
                    ).fetchall()
                ]
                events = 0
                if refs:
                    marks = ", ".join("?" for _ in refs)
                    events += conn.execute(f"DELETE FROM events WHERE payment_id IN ({marks})", refs).rowcount
                    conn.execute(f"DELETE FROM payments WHERE payment_id IN ({marks})", refs)
                    conn.execute(
                        "DELETE FROM tariffs WHERE NOT EXISTS "
                        "(SELECT 1 FROM payments p WHERE p.tariff_fingerprint = tariffs.fingerprint) "
                        "AND NOT EXISTS "
                        "(SELECT 1 FROM station_tariff s WHERE s.fingerprint = tariffs.fingerprint)"
                    )
                unowned = conn.execute(
                    "DELETE FROM events WHERE id IN "
                    "(SELECT id FROM events WHERE payment_id IS NULL AND at < ? ORDER BY at LIMIT ?)",
                    (cutoff, limit),
                ).rowcount
        except (sqlite3.Error, StoreError) as exc:
            raise JournalError(f"journal prune failed: {exc}") from exc
        return PruneResult(len(refs), events + unowned, more=len(refs) >= limit or unowned >= limit)

    # -- reads -----------------------------------------------------------------------------------

    def open_payments(self) -> list[PaymentRow]:
        """Every payment not in a final state, oldest first (the restart recovery's input)."""
        return _select(self._conn, "WHERE ended_at IS NULL ORDER BY started_at, payment_id", ())

    def open_orphans(self) -> list[PaymentRow]:
        """Possible orphan approvals nobody has cleared yet, oldest first."""
        return _select(
            self._conn,
            "WHERE orphan_suspected = 1 AND orphan_cleared_at IS NULL ORDER BY started_at, payment_id",
            (),
        )

    def payments(self, limit: int = 50, since: datetime | None = None) -> list[PaymentRow]:
        return _payments(self._conn, limit, since)

    def payment(self, payment_id: str) -> PaymentRow | None:
        rows = _select(self._conn, "WHERE payment_id = ?", (payment_id,))
        return rows[0] if rows else None

    def known_session_ids(self) -> set[str]:
        """Every terminal session id the journal ever saw (P6X List Sessions reconciliation)."""
        rows = self._conn.execute(
            "SELECT terminal_session_id FROM payments WHERE terminal_session_id IS NOT NULL "
            "UNION SELECT json_extract(data, '$.session_id') FROM events "
            "WHERE json_extract(data, '$.session_id') IS NOT NULL"
        ).fetchall()
        return {str(r[0]) for r in rows}

    def events(self, payment_id: str | None = None, kind: str | None = None) -> list[EventRow]:
        clauses, args = [], []
        if payment_id is not None:
            clauses.append("payment_id = ?")
            args.append(payment_id)
        if kind is not None:
            clauses.append("kind = ?")
            args.append(kind)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._conn.execute(
            f"SELECT id, at, kind, connector_id, payment_id, data FROM events {where} ORDER BY id", args
        ).fetchall()
        return [_event_row(r) for r in rows]

    def last_events_per_connector(self, kind: str) -> list[EventRow]:
        """The newest event of ``kind`` of each connector (index ``events_kind``, schema 4: the
        cost follows the number of connectors, not the journal's age)."""
        rows = self._conn.execute(
            "SELECT id, at, kind, connector_id, payment_id, data FROM events WHERE id IN "
            "(SELECT max(id) FROM events WHERE kind = ? AND connector_id IS NOT NULL GROUP BY connector_id) "
            "ORDER BY id",
            (kind,),
        ).fetchall()
        return [_event_row(r) for r in rows]


@dataclass(frozen=True, slots=True)
class PruneResult:
    """What one :meth:`Journal.prune` deleted; ``more``: the batch was full (prune again)."""

    payments: int
    events: int
    more: bool


def _event_row(r: sqlite3.Row) -> EventRow:
    return EventRow(r[0], normalize_timestamp(r[1]) or r[1], r[2], r[3], r[4], json.loads(r[5]))


def _select(conn: sqlite3.Connection, where: str, args: tuple[object, ...]) -> list[PaymentRow]:
    columns = ", ".join(_COLUMNS)
    return [_row(r) for r in conn.execute(f"SELECT {columns} FROM payments {where}", args).fetchall()]


def _payments(conn: sqlite3.Connection, limit: int, since: datetime | None) -> list[PaymentRow]:
    if since is not None:
        return _select(
            conn,
            "WHERE started_at >= ? ORDER BY started_at DESC, payment_id DESC LIMIT ?",
            (_utc_iso(since), limit),
        )
    return _select(conn, "ORDER BY started_at DESC, payment_id DESC LIMIT ?", (limit,))


def read_payments(
    state_dir: Path | str, *, limit: int = 50, since: datetime | None = None, open_only: bool = False
) -> list[PaymentRow]:
    """Read-only view for the CLI (works while the daemon writes; WAL). Raises :class:`JournalError`."""
    path = Path(state_dir) / JOURNAL_FILE
    if not path.exists():
        raise JournalError(f"no journal at {path}")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            if open_only:
                return _select(conn, "WHERE ended_at IS NULL ORDER BY started_at, payment_id", ())
            return _payments(conn, limit, since)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise JournalError(f"cannot read the journal {path}: {exc}") from exc


def read_window(
    source: Path | str, *, since: datetime, until: datetime
) -> tuple[list[PaymentRow], list[EventRow]]:
    """Read-only snapshot for reconciliation (works while the daemon writes; WAL).

    ``source`` is the state directory or the journal file. Returns the payments started in
    ``[since, until)`` plus every payment still open (and every possible orphan approval not yet
    cleared) that started before ``until``, oldest first,
    and the events of those payments and every payment-less event (``recovery_*``) in the window,
    in journal order — both from one read transaction. Raises :class:`JournalError`.
    """
    path = Path(source)
    if path.is_dir() or not path.suffix:
        path = path / JOURNAL_FILE
    if not path.is_file():
        raise JournalError(f"no journal at {path}")
    lo, hi = _utc_iso(since), _utc_iso(until)
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            conn.execute("BEGIN")  # one snapshot for both reads
            payments = _select(
                conn,
                "WHERE (started_at >= ? AND started_at < ?) OR (ended_at IS NULL AND started_at < ?) "
                "OR (orphan_suspected = 1 AND orphan_cleared_at IS NULL AND started_at < ?) "
                "ORDER BY started_at, payment_id",
                (lo, hi, hi, hi),
            )
            refs = [p.payment_id for p in payments]
            marks = ", ".join("?" for _ in refs) or "NULL"
            rows = conn.execute(
                "SELECT id, at, kind, connector_id, payment_id, data FROM events "
                f"WHERE payment_id IN ({marks}) OR (payment_id IS NULL AND at >= ? AND at < ?) ORDER BY id",
                (*refs, lo, hi),
            ).fetchall()
            conn.execute("COMMIT")
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise JournalError(f"cannot read the journal {path}: {exc}") from exc
    return payments, [_event_row(r) for r in rows]
