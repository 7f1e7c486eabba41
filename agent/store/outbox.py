"""The upstream outbox (DESIGN.md §5.3, requirements UP-2, ERR-6): write-ahead, bounded, durable.

Every upstream message except retained state is appended here **before** it is published, in the
agent's one database (:class:`agent.store.db.Store`): inside the transaction of the engine step that
produced it (together with the step's journal records: a fact and its messages commit together or
not at all), or, outside of one, in a transaction of its own committed (WAL + ``synchronous=FULL``:
fsync'd) before :meth:`Outbox.append` returns — so a message the agent has produced survives a
crash, a power cut and a broker outage. Periodic meter values are the exception: committed without
their own fsync, they survive a process crash and are fsync'd with the next durable row (a power
cut may lose the latest few). The drainer in
:mod:`agent.upstream.client` publishes the rows QoS 1 and deletes them only after the PUBACK.

Ordering: rows get a strictly increasing ``id`` (``AUTOINCREMENT``: never reused) and
:meth:`Outbox.pending` returns them in ``id`` order. One drainer publishes them strictly in that
order on one MQTT connection (TCP and the broker keep that order), so the messages of every
connector — and of the station as a whole — reach the broker in insertion order. After a
reconnection the drainer starts again from the oldest row not yet acknowledged: a message may be
delivered twice (at-least-once), and the repeat carries the very same bytes (same ``msg_id``),
because the payload is stored and never regenerated.

Bound: at most ``max_messages`` rows. Appending to a full outbox drops the oldest periodic
``meter`` rows first; ``event``, ``receipt``, ``report`` and ``alarm`` rows are never dropped. When
only those are left, a ``report`` or ``alarm`` is refused with :class:`OutboxFull`, while the
session/payment stream (``event``, ``receipt``) is still stored beyond the bound — it is never
lost — and :attr:`Outbox.full_alarm` is raised (cleared once the count falls below the bound).
:attr:`Outbox.near_full` is true from ``near_full_ratio`` (80 %) of the bound, for the "outbox
near full" alarm.

Sequence counters (UP-2): :meth:`Outbox.next_seq` reads the next ``seq`` of a stream (e.g. the
events of one session) and ``append(..., seq=(stream, value))`` stores ``value + 1`` as that
stream's next value **in the append's transaction**: a message and the counter advance together or
not at all, so a restart continues the sequence without a gap or a repeated ``seq``. The counters
live in ``outbox_seq`` and survive the deletion of published rows; :meth:`Outbox.forget_seq` drops a
finished stream.

Storage: the agent's :class:`~agent.store.db.Store` (the journal's database file and connection);
the outbox has its own tables (``outbox``, ``outbox_seq``, ``outbox_schema_version``), created with
``IF NOT EXISTS`` and migrated independently of the journal's ``schema_version``. Given a path
instead, it opens a store of its own. One :class:`Outbox` instance owns the tables; it is used
from one thread (the event loop).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, get_args

from agent.errors import AgentError
from agent.store.db import Store, StoreError

__all__ = [
    "DEFAULT_MAX_MESSAGES",
    "NEAR_FULL_RATIO",
    "SCHEMA_VERSION",
    "Kind",
    "Outbox",
    "OutboxError",
    "OutboxFull",
    "OutboxRow",
]

Kind = Literal["meter", "event", "receipt", "report", "alarm"]
KINDS: Final[frozenset[str]] = frozenset(get_args(Kind))
DROPPABLE: Final = "meter"  # periodic meter values: the only kind ever dropped (DESIGN.md §5.3)
# the session/payment stream: stored beyond the bound rather than lost (integrity issue)
NEVER_REFUSED: Final = frozenset({"event", "receipt"})

DEFAULT_MAX_MESSAGES: Final = 10_000  # agent/config/schema.py UpstreamConfig.outbox_max_messages default
NEAR_FULL_RATIO: Final = 0.8
SCHEMA_VERSION: Final = 2

_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (  # 1
        """CREATE TABLE IF NOT EXISTS outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            topic TEXT NOT NULL,
            payload BLOB NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('meter', 'event', 'receipt', 'report', 'alarm')),
            connector_id INTEGER,
            qos INTEGER NOT NULL CHECK (qos IN (0, 1, 2)),
            created_at REAL NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS outbox_by_kind ON outbox (kind, id)",
    ),
    (  # 2: per-session sequence counters (``seq``), advanced in the append's transaction
        """CREATE TABLE IF NOT EXISTS outbox_seq (
            stream TEXT PRIMARY KEY,
            next INTEGER NOT NULL CHECK (next >= 0)
        )""",
    ),
)


class OutboxError(AgentError):
    """The outbox cannot be opened, migrated or written."""


class OutboxFull(OutboxError):
    """The outbox is at its bound and holds no meter value that may be dropped."""

    def __init__(self, *, kind: str, topic: str, max_messages: int) -> None:
        super().__init__(
            f"outbox full: {max_messages} messages waiting and none is a droppable meter value; "
            f"refused a {kind!r} message for {topic} (is the upstream broker reachable?)"
        )
        self.kind = kind
        self.topic = topic
        self.max_messages = max_messages


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One stored message; ``payload`` is published byte for byte (its ``msg_id`` never changes)."""

    id: int
    topic: str
    payload: bytes
    kind: str
    connector_id: int | None
    qos: int
    created_at: float  # wall-clock UNIX time of the append (diagnostics only)


@dataclass(slots=True)
class OutboxStats:
    """Counters since this instance was opened."""

    appended: int = 0
    deleted: int = 0
    dropped_meter: int = 0  # meter rows dropped by the bound
    refused: int = 0  # appends refused with OutboxFull


class Outbox:
    """A durable FIFO of upstream messages in an SQLite file (see the module docstring)."""

    def __init__(
        self,
        store: Store | str | Path,
        *,
        max_messages: int = DEFAULT_MAX_MESSAGES,
        near_full_ratio: float = NEAR_FULL_RATIO,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if max_messages < 1:
            raise ValueError(f"max_messages {max_messages!r} must be >= 1")
        if not 0.0 < near_full_ratio <= 1.0:
            raise ValueError(f"near_full_ratio {near_full_ratio!r} must be in (0, 1]")
        self._owns_store = not isinstance(store, Store)
        try:
            self.store = store if isinstance(store, Store) else Store.open(Path(store))
        except StoreError as exc:
            raise OutboxError(f"cannot open outbox {store}: {exc}") from exc
        self.path = self.store.path
        self.max_messages = max_messages
        self._near_full_at = max(1, int(max_messages * near_full_ratio))
        self._wall_clock = wall_clock
        self._listeners: list[Callable[[], None]] = []
        self.stats = OutboxStats()
        self.full_alarm = False
        self._conn = self.store.conn
        self._pending = 0  # rows added (net) by the current transaction, not yet committed
        try:
            self._migrate()
            self._count = int(self._conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
        except (sqlite3.Error, OutboxError) as exc:
            if self._owns_store:
                self.store.close()
            if isinstance(exc, OutboxError):
                raise
            raise OutboxError(f"cannot prepare outbox {self.path}: {exc}") from exc

    # -- schema ---------------------------------------------------------------------------------

    def _migrate(self) -> None:
        conn = self._conn
        conn.execute("CREATE TABLE IF NOT EXISTS outbox_schema_version (version INTEGER NOT NULL)")
        current = int(conn.execute("SELECT MAX(version) FROM outbox_schema_version").fetchone()[0] or 0)
        if current > len(_MIGRATIONS):
            raise OutboxError(
                f"outbox schema {current} in {self.path} is newer than this agent (knows {len(_MIGRATIONS)})"
            )
        for version, statements in enumerate(_MIGRATIONS[current:], start=current + 1):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in statements:
                    conn.execute(statement)
                conn.execute("INSERT INTO outbox_schema_version (version) VALUES (?)", (version,))
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                conn.execute("ROLLBACK")
                raise OutboxError(f"outbox migration {version} failed: {exc}") from exc

    @property
    def schema_version(self) -> int:
        return int(self._conn.execute("SELECT MAX(version) FROM outbox_schema_version").fetchone()[0] or 0)

    # -- writing --------------------------------------------------------------------------------

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after every committed append (the drainer's wake-up)."""
        self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[], None]) -> None:
        if callback in self._listeners:
            self._listeners.remove(callback)

    def append(
        self,
        topic: str,
        payload: bytes,
        *,
        kind: Kind,
        connector_id: int | None,
        qos: int = 1,
        seq: tuple[str, int] | None = None,
        forget: Sequence[str] = (),
    ) -> int:
        """Store one message durably (fsync'd before returning) and return its row id (``-1``: a
        meter value dropped at once because the outbox is full of other kinds).

        ``seq=(stream, value)``: the payload carries ``seq`` ``value`` of ``stream``; the stream's
        next value becomes ``value + 1`` in the same transaction. ``forget``: streams whose counters
        are dropped in the same transaction (a finished session).
        Raises :class:`OutboxFull` when the bound is reached and no meter row can be dropped.
        """
        ids = self.append_many([(topic, payload, kind, connector_id, qos)], seq=seq, forget=forget)
        return ids[0] if ids else -1

    def next_seq(self, stream: str) -> int:
        """The next ``seq`` of ``stream`` (0 for a new stream); advanced by ``append(seq=…)``."""
        row = self._conn.execute("SELECT next FROM outbox_seq WHERE stream = ?", (stream,)).fetchone()
        return 0 if row is None else int(row[0])

    def forget_seq(self, *streams: str) -> None:
        """Drop the counters of finished streams."""
        if not streams:
            return
        try:
            self._conn.executemany("DELETE FROM outbox_seq WHERE stream = ?", [(s,) for s in streams])
        except sqlite3.Error as exc:
            raise OutboxError(f"outbox forget_seq in {self.path} failed: {exc}") from exc

    def append_many(
        self,
        items: Iterable[tuple[str, bytes, Kind, int | None, int]],
        *,
        seq: tuple[str, int] | None = None,
        forget: Sequence[str] = (),
    ) -> list[int]:
        """Store several ``(topic, payload, kind, connector_id, qos)`` messages, in the given order,
        all or nothing: in the current transaction (an engine step's), or in one of their own (one
        fsync). Returns the row ids of the stored ones (a meter value that finds the outbox full of
        other kinds is dropped itself, never refused). ``seq`` and ``forget``: see :meth:`append`."""
        rows = [self._checked(*item) for item in items]
        if not rows:
            return []
        conn = self._conn
        ids: list[int] = []
        dropped = 0  # meter values dropped: older ones evicted, or this batch's own
        evicted = 0
        now = self._wall_clock()
        # Periodic meter values need no fsync of their own (DESIGN.md §7: meter → broker budget):
        # committed with synchronous=NORMAL they reach the OS at once (a process crash loses
        # nothing), and the next FULL commit fsyncs the WAL with them; a power cut may lose the
        # latest few, which the drop policy treats as expendable anyway. Everything else: FULL.
        meter_only = all(kind == DROPPABLE for _, _, kind, _, _ in rows)
        beyond_bound = False
        try:
            with self.store.atomic(durable=not meter_only):
                count = self._count + self._pending
                for topic, payload, kind, connector_id, qos in rows:
                    if count >= self.max_messages:
                        victim = conn.execute(
                            "SELECT id FROM outbox WHERE kind = ? ORDER BY id LIMIT 1", (DROPPABLE,)
                        ).fetchone()
                        if victim is not None:
                            conn.execute("DELETE FROM outbox WHERE id = ?", (victim[0],))
                            count -= 1
                            dropped += 1
                            evicted += 1
                        elif kind == DROPPABLE:  # no older meter value to drop: drop this one
                            dropped += 1
                            continue
                        elif kind in NEVER_REFUSED:
                            beyond_bound = True  # the session/payment stream is never lost
                        else:
                            self.stats.refused += 1
                            self.full_alarm = True
                            raise OutboxFull(kind=kind, topic=topic, max_messages=self.max_messages)
                    cursor = conn.execute(
                        "INSERT INTO outbox (topic, payload, kind, connector_id, qos, created_at) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (topic, payload, kind, connector_id, qos, now),
                    )
                    assert cursor.lastrowid is not None
                    ids.append(cursor.lastrowid)
                    count += 1
                if seq is not None:
                    conn.execute(
                        "INSERT INTO outbox_seq (stream, next) VALUES (?, ?) "
                        "ON CONFLICT (stream) DO UPDATE SET next = MAX(next, excluded.next)",
                        (seq[0], seq[1] + 1),
                    )
                for stream in forget:
                    conn.execute("DELETE FROM outbox_seq WHERE stream = ?", (stream,))
                delta = len(ids) - evicted  # rows in the table after the commit, net
                self._pending += delta
                self.store.after_commit(lambda: self._committed(delta, len(ids), dropped, beyond_bound))
                self.store.after_rollback(lambda: self._rolled_back(delta))
        except StoreError as exc:
            raise OutboxError(f"outbox append to {self.path} failed: {exc}") from exc
        except sqlite3.Error as exc:  # pragma: no cover - atomic() converts these
            raise OutboxError(f"outbox append to {self.path} failed: {exc}") from exc
        return ids

    def _committed(self, delta: int, appended: int, dropped: int, beyond_bound: bool) -> None:
        self._pending -= delta
        self._count += delta
        self.stats.appended += appended
        self.stats.dropped_meter += dropped
        self.full_alarm = beyond_bound
        for callback in tuple(self._listeners):
            callback()

    def _rolled_back(self, delta: int) -> None:
        self._pending -= delta  # only this append's rows (a step's savepoint, or the transaction)

    @staticmethod
    def _checked(
        topic: str, payload: bytes, kind: str, connector_id: int | None, qos: int
    ) -> tuple[str, bytes, str, int | None, int]:
        if kind not in KINDS:
            raise ValueError(f"outbox kind {kind!r}: expected one of {sorted(KINDS)}")
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise TypeError(f"outbox payload must be bytes, got {type(payload).__name__}")
        if not topic or any(c in topic for c in "#+\x00"):
            raise ValueError(f"outbox topic {topic!r}: not a publishable MQTT topic")
        if qos not in (0, 1, 2):
            raise ValueError(f"qos {qos!r}: expected 0, 1 or 2")
        return topic, bytes(payload), kind, connector_id, qos

    def delete(self, ids: Sequence[int], *, durable: bool = True) -> int:
        """Remove acknowledged rows (after their PUBACK); unknown ids are ignored. Returns how many
        were deleted. One transaction (never inside an engine step's: the drainer runs between
        steps), fsync'd unless ``durable=False``: the upstream drainer's deletes are committed with
        ``synchronous=NORMAL`` — a process crash loses none, a power cut may resend a few rows,
        which at-least-once delivery (same bytes, same ``msg_id``) allows."""
        if not ids:
            return 0
        conn = self._conn
        deleted = 0
        try:
            with self.store.atomic(durable=durable):
                for start in range(0, len(ids), 500):  # stay below SQLite's bound-variable limit
                    chunk = ids[start : start + 500]
                    marks = ",".join("?" * len(chunk))
                    deleted += conn.execute(
                        f"DELETE FROM outbox WHERE id IN ({marks})", tuple(chunk)
                    ).rowcount
        except StoreError as exc:
            raise OutboxError(f"outbox delete in {self.path} failed: {exc}") from exc
        self._count -= deleted
        self.stats.deleted += deleted
        if self._count < self.max_messages:
            self.full_alarm = False
        return deleted

    # -- reading --------------------------------------------------------------------------------

    def pending(self, limit: int = 100, *, after_id: int = 0) -> list[OutboxRow]:
        """Up to ``limit`` rows with ``id > after_id``, oldest first (insertion order)."""
        rows = self._conn.execute(
            "SELECT id, topic, payload, kind, connector_id, qos, created_at FROM outbox "
            "WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        ).fetchall()
        return [OutboxRow(int(r[0]), r[1], bytes(r[2]), r[3], r[4], int(r[5]), float(r[6])) for r in rows]

    def count(self) -> int:
        """Rows waiting to be published."""
        return self._count

    def count_by_kind(self) -> dict[str, int]:
        rows = self._conn.execute("SELECT kind, COUNT(*) FROM outbox GROUP BY kind").fetchall()
        return {str(kind): int(n) for kind, n in rows}

    @property
    def near_full(self) -> bool:
        """At or above the near-full threshold (``near_full_ratio`` of ``max_messages``)."""
        return self._count >= self._near_full_at

    @property
    def full(self) -> bool:
        return self._count >= self.max_messages

    def close(self) -> None:
        """Close the store when this outbox opened it (a path was given); else the owner does."""
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
