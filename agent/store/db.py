"""The agent's one SQLite database: journal and outbox in one file, one connection, one writer.

Everything one engine step writes — its journal records, the outbox rows of its upstream events,
its receipt — is committed in **one** transaction (:meth:`Store.atomic`), so after any crash either
the fact and its messages exist or neither does (integrity issue B; DESIGN.md §2, §5.2, §5.3).

Durability: ``synchronous=FULL`` (the WAL is fsynced on every commit) for every transaction that
holds a money-relevant fact. A transaction opened with ``durable=False`` (a step that wrote only
periodic meter values) is committed with ``synchronous=NORMAL``: written to the WAL, in the OS at
once — a process crash or SIGKILL loses nothing — and fsynced with the next FULL commit; it is
committed FULL anyway when the last FULL commit is older than ``meter_sync_interval_s`` (5 s), which
bounds what a power cut can take (docs/runtime.md "Journal durability").

Used from the event-loop thread only; a transaction never spans an ``await`` (an engine step is
synchronous), so the drainer's deletes and the actors' notes can never interleave with a step.
Readers (the CLI, reconciliation) open their own read-only connections (WAL).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

from agent.errors import AgentError

DB_FILE: Final = "journal.sqlite3"
BUSY_TIMEOUT_MS: Final = 5000
# A non-durable transaction is committed with synchronous=FULL anyway when the last FULL commit is
# older than this: the bound on meter values lost to a power cut (never to a process crash).
METER_SYNC_INTERVAL_S: Final = 5.0


class StoreError(AgentError):
    """The database cannot be opened or a transaction failed (rolled back as a whole)."""


class Store:
    """One SQLite file in WAL mode and its single read-write connection. Use :meth:`open`."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        *,
        meter_sync_interval_s: float = METER_SYNC_INTERVAL_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.conn = conn
        self.path = path
        self._meter_sync_interval_s = meter_sync_interval_s
        self._monotonic = monotonic
        self._last_full_commit = monotonic()
        self._depth = 0
        self._after_commit: list[Callable[[], None]] = []
        self._after_rollback: list[Callable[[], None]] = []
        self.unsynced_commits = 0  # NORMAL commits since the last FULL commit
        self.commits = 0

    @classmethod
    def open(cls, path: Path | str, *, meter_sync_interval_s: float = METER_SYNC_INTERVAL_S) -> Store:
        """Open (create) the database file ``path`` (a directory: ``path/journal.sqlite3``)."""
        target = Path(path)
        if target.is_dir() or not target.suffix:
            target.mkdir(parents=True, exist_ok=True)
            target = target / DB_FILE
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: explicit BEGIN/COMMIT only; check_same_thread stays on: one thread
            conn = sqlite3.connect(target, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the database {target}: {exc}") from exc
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{target}: cannot switch to WAL mode (got {mode})")
            conn.execute("PRAGMA synchronous=FULL")  # fsync the WAL on every commit
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot prepare the database {target}: {exc}") from exc
        except StoreError:
            conn.close()
            raise
        return cls(conn, target, meter_sync_interval_s=meter_sync_interval_s)

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        self.conn.close()

    def pragma(self, name: str) -> object:
        return self.conn.execute(f"PRAGMA {name}").fetchone()[0]

    @property
    def in_transaction(self) -> bool:
        return self._depth > 0

    @contextlib.contextmanager
    def atomic(self, *, durable: bool = True) -> Iterator[None]:
        """One transaction. Re-entrant: an inner ``atomic`` joins the outer one, whose ``durable``
        decides (the caller that opens a step's transaction knows what the step holds). On an
        exception everything is rolled back and the exception propagates (``sqlite3.Error`` as
        :class:`StoreError`). After the commit the ``after_commit`` callbacks run in registration
        order (drainer wake-ups, crash points); after a rollback the ``after_rollback`` ones."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        full = durable or self._monotonic() - self._last_full_commit >= self._meter_sync_interval_s
        conn = self.conn
        self._depth = 1
        try:
            if not full:
                conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("BEGIN IMMEDIATE")
            yield
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            self._depth = 0
            callbacks, self._after_rollback, self._after_commit = self._after_rollback, [], []
            if not full:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("PRAGMA synchronous=FULL")
            for callback in callbacks:
                callback()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"transaction in {self.path} failed: {exc}") from exc
            raise
        self._depth = 0
        if not full:
            conn.execute("PRAGMA synchronous=FULL")  # every other write fsyncs again
        self.commits += 1
        if full:
            self._last_full_commit = self._monotonic()
            self.unsynced_commits = 0
        else:
            self.unsynced_commits += 1
        callbacks, self._after_commit, self._after_rollback = self._after_commit, [], []
        for callback in callbacks:
            callback()

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        """A part of the current transaction that fails alone (SQLite ``SAVEPOINT``): on an
        exception its writes are rolled back (``ROLLBACK TO``), the ``after_rollback`` callbacks
        registered inside it run and its ``after_commit`` callbacks are dropped; the exception
        propagates (``sqlite3.Error`` as :class:`StoreError`) and the enclosing transaction goes
        on. Group commit (issue 12): one transaction per dispatcher turn, one savepoint per engine
        step, so a step that cannot be stored is dropped without its neighbours. Pre: inside
        :meth:`atomic`."""
        if not self._depth:
            raise StoreError("savepoint outside of a transaction")
        name = f"step{self._depth}"
        commits, rollbacks = len(self._after_commit), len(self._after_rollback)
        conn = self.conn
        try:
            conn.execute(f"SAVEPOINT {name}")
        except sqlite3.Error as exc:
            raise StoreError(f"savepoint in {self.path} failed: {exc}") from exc
        self._depth += 1
        try:
            yield
        except BaseException as exc:
            self._depth -= 1
            with contextlib.suppress(sqlite3.Error):  # else the COMMIT fails and rolls back all
                conn.execute(f"ROLLBACK TO {name}")
                conn.execute(f"RELEASE {name}")
            callbacks = self._after_rollback[rollbacks:]
            del self._after_rollback[rollbacks:]
            del self._after_commit[commits:]
            for callback in callbacks:
                callback()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"transaction in {self.path} failed: {exc}") from exc
            raise
        self._depth -= 1
        try:
            conn.execute(f"RELEASE {name}")
        except sqlite3.Error as exc:
            raise StoreError(f"savepoint release in {self.path} failed: {exc}") from exc

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the current transaction committed (at once outside of one)."""
        if self._depth:
            self._after_commit.append(callback)
        else:
            callback()

    def after_rollback(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` if the current transaction is rolled back (never outside of one)."""
        if self._depth:
            self._after_rollback.append(callback)
