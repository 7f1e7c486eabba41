"""The ``status`` request of the control socket (OPS-3, DESIGN.md §5.7): the running daemon's
live state as one JSON object, for ``evpay-agent status`` (docs/runtime.md lists the fields).

Built synchronously on the event loop (one consistent snapshot between two engine steps) from
the representations the daemon already has — nothing here invents a second one:

* the process: the birth message's ``version`` and ``started_at`` (retained ``status``);
* ``terminal``: the retained ``terminal`` payload (:class:`agent.upstream.contract.TerminalState`)
  built as of now from the driver's link state (:meth:`Publisher.terminal_state_payload`);
* ``connectors``: the retained ``connectors/{id}/state`` payload
  (:class:`agent.upstream.contract.ConnectorState`) as of now
  (:meth:`Runtime.connector_snapshot` → :meth:`Publisher.connector_state_payload`), plus
  ``session``: what the retained state does not carry — when the session started
  (:meth:`RuntimeAdapter.active_session`, as ``get_sessions`` reports it), the elapsed seconds and
  the payment's journal state (``sessions --json`` ``state``);
* ``pending_settlements``: the journal's payments whose Commit/Void is decided and not confirmed;
* ``upstream``: connected, and the outbox depth (messages not yet acknowledged by the broker);
* ``alarms``: the :class:`agent.upstream.contract.Alarm` payloads raised and not cleared
  (:meth:`Publisher.active_alarms`).

A journal that cannot be read leaves ``pending_settlements`` empty, the payment states null and
says why in ``journal_error``; the rest is still answered.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

import msgspec

from agent.logs import kv
from agent.store.journal import JournalError, PaymentRow, PaymentState
from agent.store.outbox import Outbox
from agent.upstream.contract import utc_timestamp
from agent.upstream.publisher import Publisher

if TYPE_CHECKING:
    from agent.runtime.shell import Runtime
    from agent.upstream.client import UpstreamClient
    from agent.upstream.port import RuntimeAdapter

_LOGGER = logging.getLogger(__name__)

STATUS_FORMAT: Final = 1  # the document's version: a field removed or changed in meaning bumps it
STATUS_REQUEST: Final = "status"


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _z(text: str | None) -> str | None:
    """A journal timestamp (ISO 8601 with offset) in the contract's form (``…Z``)."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return text
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return utc_timestamp(moment)


class StatusView:
    """Builds the status document (see the module docstring). Built by :func:`agent.app.build_app`."""

    def __init__(
        self,
        *,
        runtime: Runtime,
        port: RuntimeAdapter,
        publisher: Publisher,
        outbox: Outbox,
        upstream: UpstreamClient,
        station_id: str,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.runtime = runtime
        self.port = port
        self.publisher = publisher
        self.outbox = outbox
        self.upstream = upstream
        self.station_id = station_id
        self.clock = clock

    def document(self) -> dict[str, object]:
        now = self.clock()
        runtime = self.runtime
        journal_error: str | None = None
        try:
            open_rows = {row.payment_id: row for row in runtime.journal.open_payments()}
        except JournalError as exc:
            journal_error = str(exc)
            open_rows = {}
            _LOGGER.warning("status: journal not readable %s", kv(error=journal_error))
        link = runtime.terminal.state
        try:
            terminal: object = self.publisher.terminal_state_payload(
                link.link, since_monotonic=link.since, psp_state=link.psp_state, last_error=link.last_error
            )
        except ValueError:
            terminal = None
        return {
            "status_format": STATUS_FORMAT,
            "station_id": self.station_id,
            "version": self.upstream.version,
            "started_at": self.upstream.started_at,
            "pid": os.getpid(),
            "ts": utc_timestamp(now),
            "ready": runtime.ready.is_set(),
            "recovered": runtime.recovered.is_set(),
            "stopping": runtime.stopping,
            "health": runtime.health(),
            "currency": self.publisher.currency,
            "minor_unit_digits": runtime.tariff.minor_unit_digits,
            "terminal": terminal,
            "upstream": {
                "connected": self.upstream.is_connected,
                "outbox_depth": self.outbox.count(),
                "outbox_near_full": self.outbox.near_full,
            },
            "connectors": [self._connector(cid, now, open_rows) for cid in runtime.connector_ids],
            "pending_settlements": [
                _settlement(row) for row in open_rows.values() if row.state is PaymentState.SETTLING
            ],
            "alarms": self.publisher.active_alarms(),
            "journal_error": journal_error,
        }

    def _connector(self, cid: int, now: datetime, open_rows: dict[str, PaymentRow]) -> dict[str, object]:
        snapshot = self.runtime.connector_snapshot(cid)
        assert snapshot is not None  # cid is one of runtime.connector_ids
        entry: dict[str, object] = msgspec.to_builtins(self.publisher.connector_state_payload(snapshot))
        active = self.port.active_session(cid)
        session: dict[str, object] | None = None
        if active is not None:
            row = open_rows.get(active.session_id)
            if row is None:  # final already (e.g. declined), or no card read yet
                try:
                    row = self.runtime.journal.payment(active.session_id)
                except JournalError:
                    row = None
            started = active.started_at
            session = {
                "started_at": utc_timestamp(started),
                "elapsed_s": max(0, int((now - started).total_seconds())),
                "payment_state": row.state.value if row is not None else None,
            }
        entry["session"] = session
        return entry


def _settlement(row: PaymentRow) -> dict[str, object]:
    commit = row.disposal == "commit"
    return {
        "session_id": row.payment_id,
        "connector_id": row.connector_id,
        "disposal": row.disposal,
        "amount_minor": row.final_minor if commit else None,
        "terminal_session_id": row.terminal_session_id,
        "decided_at": _z(row.disposal_decided_at),
        "sent": row.disposal_sent_at is not None,
        "attempts": row.disposal_attempts,
    }
