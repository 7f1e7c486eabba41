"""The journal: the agent's write-ahead record of every money-relevant fact (DESIGN.md §2, §5.2).

SQLite in WAL mode with ``synchronous=FULL``: a transaction that :meth:`Journal.record` commits is
on disk (fsync) when the call returns — for every money-relevant fact. The one exception is a
**periodic meter value** (a ``meter`` record while the payment is ``charging``; not the final meter
value of a stop): its transaction is committed with ``synchronous=NORMAL``, i.e. written to the WAL
(it reaches the OS at once and survives a crash or SIGKILL of the process) without waiting for its
own fsync; the next FULL commit fsyncs the WAL including it, and a meter value is committed with FULL
anyway when the last FULL commit is older than ``meter_sync_interval_s`` (5 s). After a power loss
at most the meter values of that interval are lost (the recovery then commits a total up to a few
seconds older). See docs/runtime.md "Journal durability". Schema changes are numbered SQL files in
``agent/migrations`` (``0001_journal.sql`` …) applied in order inside one transaction each, tracked
in ``schema_version``.

One writer: the :class:`Journal` object owns the only read-write connection and is used from the
event-loop thread only (each write is a few milliseconds including fsync, measured in
``tests/agent/test_journal.py``; running it inline keeps the write-ahead ordering trivial: the
runtime executes the next effect only after :meth:`record` returned). Readers (the ``sessions``
command) open their own read-only connection with :func:`read_payments`, which works while the
daemon runs (WAL).

Tables: ``payments`` (one row per payment, keyed by the engine's ``session_ref``) and ``events``
(append-only log of every ``JournalRecord`` and recovery action, with its JSON data).

Card data (PCI DSS, OPS-2): only the masked PAN and the card hash (EMV) / UID (RFID) are stored.
:func:`check_no_pan` refuses (raises :class:`JournalError`) any value with a run of 13 to 19 digits —
a possible full PAN — before anything is written; the error names the field, never the value.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, Final

from agent import crashpoints
from agent.errors import AgentError
from statemachines.effects import JournalRecord
from statemachines.events import CardKind, CardToken, Disposal, PaymentMethod, RestoredPayment
from statemachines.pricing import Usage, UsageBucket, UsageKind

JOURNAL_FILE: Final = "journal.sqlite3"
BUSY_TIMEOUT_MS: Final = 5000
# A periodic meter value is committed with synchronous=FULL anyway when the last FULL commit is older
# than this: the bound on meter values lost to a power cut (never to a process crash).
METER_SYNC_INTERVAL_S: Final = 5.0
# payment state in which a ``meter`` record is a periodic value, not money-relevant on its own
_PERIODIC_METER_STATE: Final = "charging"

FINAL_STATES: Final = frozenset({"committed", "voided", "declined", "failed", "ended"})
# a full PAN is 13 to 19 digits (ISO/IEC 7812); a 40-hex card hash never has such a run alone
# A full PAN as it would leak: 13 to 19 digits standing alone (not inside a longer hex token such as
# a card hash or an RFID UID), a card-brand first digit (2 to 6) and a valid Luhn check digit.
_PAN_LIKE: Final = re.compile(r"(?<![0-9A-Za-z])[2-6][0-9]{12,18}(?![0-9A-Za-z])")
_CARD_HASH: Final = re.compile(r"^[0-9A-Fa-f]{40}$")


class JournalError(AgentError):
    """The journal cannot be opened, migrated or written; or a write was refused (card data)."""


def _utc_iso(at: datetime | None = None) -> str:
    return (at or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="microseconds")


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
    return json.dumps(
        {
            "started_at": usage.started_at.isoformat() if usage.started_at else None,
            "buckets": [[b.band, b.kind.value, b.energy_wh, b.duration_ms] for b in usage.buckets],
        },
        separators=(",", ":"),
    )


def usage_from_json(text: str | None) -> Usage:
    if not text:
        return Usage()
    raw = json.loads(text)
    started = raw.get("started_at")
    return Usage(
        started_at=datetime.fromisoformat(started) if started else None,
        buckets=tuple(
            UsageBucket(str(band), UsageKind(kind), int(energy), int(ms))
            for band, kind, energy, ms in raw["buckets"]
        ),
    )


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
    state: str
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

    @property
    def is_open(self) -> bool:
        return self.state not in FINAL_STATES

    @property
    def approved(self) -> bool:
        """Authorized (the engine saw ``payment_approved``); an ``authorizing`` row never was."""
        return self.state != "authorizing"

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
            last_meter_at=datetime.fromisoformat(self.last_meter_at) if self.last_meter_at else None,
            energy_on=self.energy_on,
            disposal=Disposal(self.disposal) if self.disposal else None,
            final_minor=self.final_minor or 0,
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
            "state": self.state,
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
        }


_COLUMNS: Final = tuple(PaymentRow.__dataclass_fields__)


def _row(values: sqlite3.Row) -> PaymentRow:
    data = dict(zip(_COLUMNS, values, strict=True))
    data["energy_on"] = bool(data["energy_on"])
    data["recovered"] = bool(data["recovered"])
    return PaymentRow(**data)


@dataclass(frozen=True, slots=True)
class EventRow:
    id: int
    at: str
    kind: str
    connector_id: int | None
    payment_id: str | None
    data: dict[str, Any]


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


class Journal:
    """The single writer. Use :meth:`open`; call :meth:`close` at the end."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        schema_version: int,
        *,
        meter_sync_interval_s: float = METER_SYNC_INTERVAL_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._conn = conn
        self.path = path
        self.schema_version = schema_version
        self._meter_sync_interval_s = meter_sync_interval_s
        self._monotonic = monotonic
        self._last_full_commit = monotonic()
        self.unsynced_meter_commits = 0  # NORMAL meter commits since the last FULL commit

    @classmethod
    def open(cls, state_dir: Path | str, *, meter_sync_interval_s: float = METER_SYNC_INTERVAL_S) -> Journal:
        """Open (create, migrate) ``state_dir/journal.sqlite3``; raises :class:`JournalError`."""
        directory = Path(state_dir)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            path = directory / JOURNAL_FILE
            # isolation_level=None: explicit BEGIN/COMMIT only; check_same_thread stays on: one thread
            conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise JournalError(f"{path}: cannot switch to WAL mode (got {mode})")
            conn.execute("PRAGMA synchronous=FULL")  # fsync the WAL on every commit
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            version = _migrate(conn)
        except (OSError, sqlite3.Error) as exc:
            raise JournalError(f"cannot open the journal in {directory}: {exc}") from exc
        return cls(conn, path, version, meter_sync_interval_s=meter_sync_interval_s)

    def close(self) -> None:
        try:
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error:
            pass
        self._conn.close()

    # -- pragmas (for tests and `status`) --------------------------------------------------------

    def pragma(self, name: str) -> object:
        return self._conn.execute(f"PRAGMA {name}").fetchone()[0]

    # -- writes ----------------------------------------------------------------------------------

    def record(
        self,
        record: JournalRecord,
        *,
        at: datetime | None = None,
        usage: Usage | None = None,
    ) -> None:
        """Persist ``record`` (event row + payment row update) in one transaction.

        Post: the transaction is committed — fsynced (``synchronous=FULL``) unless it is a periodic
        meter value (see :meth:`_periodic_meter` and the module docstring), which is committed with
        ``synchronous=NORMAL`` (in the OS, not yet on disk); then the crash point ``journal:<kind>``.
        ``usage`` (the session's accumulated usage after the event) is kept for restart pricing.
        """
        data = dict(record.data)
        check_no_pan(record.kind, data)
        when = _utc_iso(at)
        ref = str(data.get("session_ref") or "") or None
        full = not self._periodic_meter(record.kind, ref)
        try:
            if not full:
                self._conn.execute("PRAGMA synchronous=NORMAL")
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.execute(
                    "INSERT INTO events (at, kind, connector_id, payment_id, data) VALUES (?, ?, ?, ?, ?)",
                    (when, record.kind, record.connector_id, ref, json.dumps(data, default=str)),
                )
                if ref is not None and record.connector_id is not None:
                    self._apply(record.kind, ref, record.connector_id, data, when, usage)
                self._conn.execute("COMMIT")
            finally:
                if not full:
                    self._conn.execute("PRAGMA synchronous=FULL")  # every other write fsyncs again
        except sqlite3.Error as exc:
            self._rollback()
            raise JournalError(f"journal write of {record.kind} failed: {exc}") from exc
        self._committed(full)
        crashpoints.reached(f"journal:{record.kind}")

    def _periodic_meter(self, kind: str, ref: str | None) -> bool:
        """Whether ``kind`` for payment ``ref`` may be committed without its own fsync: a ``meter``
        record while the payment is ``charging`` (the final meter value of a stop comes in
        ``stopping`` and stays FULL), and the last FULL commit is recent enough."""
        if kind != "meter" or ref is None:
            return False
        if self._monotonic() - self._last_full_commit >= self._meter_sync_interval_s:
            return False
        row = self._conn.execute("SELECT state FROM payments WHERE payment_id = ?", (ref,)).fetchone()
        return row is not None and row[0] == _PERIODIC_METER_STATE

    def _committed(self, full: bool) -> None:
        if full:
            self._last_full_commit = self._monotonic()
            self.unsynced_meter_commits = 0
        else:
            self.unsynced_meter_commits += 1

    def note(
        self, kind: str, connector_id: int | None, data: Mapping[str, object], **changes: object
    ) -> None:
        """Append an agent-side event (``recovery_*``, ``commit_sent`` …); ``changes`` update the
        payment named by ``data["session_ref"]`` (column=value)."""
        check_no_pan(kind, {**data, **changes})
        when = _utc_iso()
        ref = str(data.get("session_ref") or "") or None
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute(
                "INSERT INTO events (at, kind, connector_id, payment_id, data) VALUES (?, ?, ?, ?, ?)",
                (when, kind, connector_id, ref, json.dumps(dict(data), default=str)),
            )
            if ref is not None and changes:
                self._update(ref, when, **changes)
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise JournalError(f"journal write of {kind} failed: {exc}") from exc
        self._committed(True)
        crashpoints.reached(f"journal:{kind}")

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
            {"session_ref": ref, "session_id": session_id, "attempt": attempts + 1},
            disposal_sent_at=_utc_iso(),
            disposal_attempts=attempts + 1,
        )

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

    def _ensure(self, ref: str, connector_id: int, when: str, state: str) -> None:
        self._conn.execute(
            "INSERT OR IGNORE INTO payments (payment_id, connector_id, state, started_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (ref, connector_id, state, when, when),
        )

    def _apply(
        self, kind: str, ref: str, connector_id: int, data: Mapping[str, Any], when: str, usage: Usage | None
    ) -> None:
        """Fold one engine record into the ``payments`` row (docs/state-machines.md record kinds)."""
        changes: dict[str, object] = {}
        if usage is not None:
            changes["usage_json"] = usage_to_json(usage)
        match kind:
            case "card_read":
                self._ensure(ref, connector_id, when, "authorizing")
                card_kind = data.get("card_kind")
                changes.update(
                    method="rfid" if card_kind == "rfid" else "emv",
                    card_kind=card_kind,
                    card_token=data.get("token"),
                    masked_pan=data.get("masked_pan"),
                    brand=data.get("brand"),
                    requested_minor=data.get("amount_minor"),
                    state="authorizing",
                )
            case "payment_declined":
                failed = data.get("outcome") == "failed"
                changes.update(state="failed" if failed else "declined", ended_at=when, final_minor=0)
            case "payment_approved":
                self._ensure(ref, connector_id, when, "approved")
                changes.update(
                    state="approved",
                    terminal_session_id=data.get("session_id"),
                    authorized_minor=data.get("authorized_minor"),
                )
                if data.get("method"):
                    changes["method"] = data["method"]
            case "payment_incremented":
                changes["authorized_minor"] = data.get("authorized_minor")
            case "energy_on":
                changes.update(state="charging", energy_on=1)
                if data.get("method"):
                    changes["method"] = data["method"]
                if data.get("meter_wh") is not None:
                    changes.update(last_meter_wh=data["meter_wh"], last_meter_at=when)
            case "meter":
                changes.update(
                    last_meter_wh=data.get("meter_wh"),
                    last_meter_at=when,
                    energy_wh=data.get("energy_wh", 0),
                    cost_minor=data.get("cost_minor", 0),
                )
            case "stop":
                changes.update(
                    state="stopping",
                    energy_on=0,
                    stop_reason=data.get("reason"),
                    energy_wh=data.get("energy_wh", 0),
                    cost_minor=data.get("cost_minor", 0),
                )
            case "commit":
                changes.update(
                    state="settling",
                    energy_on=0,
                    disposal="commit",
                    final_minor=data.get("amount_minor"),
                    energy_wh=data.get("energy_wh", 0),
                    cost_minor=data.get("cost_minor", 0),
                    disposal_decided_at=when,
                )
            case "void":
                changes.update(
                    state="settling", energy_on=0, disposal="void", final_minor=0, disposal_decided_at=when
                )
            case "commit_confirmed" | "void_confirmed":
                changes.update(
                    state="committed" if kind == "commit_confirmed" else "voided",
                    disposal_confirmed_at=when,
                    disposal_outcome=data.get("outcome"),
                    ended_at=when,
                )
            case "session_ended":
                changes.update(
                    state="ended",
                    energy_on=0,
                    energy_wh=data.get("energy_wh", 0),
                    cost_minor=data.get("cost_minor", 0),
                    final_minor=data.get("cost_minor", 0),
                    ended_at=when,
                )
            case "payment_restored":
                changes["recovered"] = 1
            case _:
                pass
        self._update(ref, when, **changes)

    # -- reads -----------------------------------------------------------------------------------

    def open_payments(self) -> list[PaymentRow]:
        """Every payment not in a final state, oldest first (the restart recovery's input)."""
        return _select(self._conn, "WHERE ended_at IS NULL ORDER BY started_at, payment_id", ())

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
        return [EventRow(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in rows]


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
    ``[since, until)`` plus every payment still open that started before ``until``, oldest first,
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
                "ORDER BY started_at, payment_id",
                (lo, hi, hi),
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
    return payments, [EventRow(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in rows]
