"""Restart recovery (ERR-5, DESIGN.md §5.2, psp-reference §10).

On start, before any new card is read, every non-final payment in the journal is handed back to
the engine as ``PaymentRestored`` with the charger's current facts (plugged, online) as far as the
charger driver reported them within a short wait. The engine then resumes charging (still plugged),
commits the journaled total or voids (nothing delivered), or re-sends an already decided disposal
unchanged — it never recomputes a different amount.

A payment the journal holds only as ``authorizing`` (card read, crash before the outcome reached
the journal) is never restored into a session: the runtime closes it as ``failed`` with a
``recovery_unapproved`` event and, for an EMV card, as a *possible orphan approval*
(psp-reference §10.4): the alarm ``possible_orphan_approval`` with the masked PAN, amount, time and
session reference, and a reconciliation discrepancy until it is cleared. On a P6X the terminal is
then asked for its open sessions (List Sessions, psp-reference §5.8); every session id the journal
never saw is voided (``recovery_orphan_void`` journaled before the Void, ``recovery_orphan_voided``
after), which accounts for the possible orphans. On Apollo the terminal's Setup session timeout
with action *void* (TERM-2) is the safety net, and an operator clears the discrepancy
(``clear_discrepancy`` command) once the hold is checked in the payment portal.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

from agent.logs import kv
from agent.store.journal import Journal, PaymentRow
from drivers.charger import base as charger
from drivers.errors import DriverError
from drivers.psp.errors import SessionNotFound
from drivers.terminal import Terminal
from statemachines.events import ChargerLost, Event, PaymentRestored

_LOGGER = logging.getLogger(__name__)


class ChargerFacts:
    """What the charger driver reported so far: online, and plug state per connector."""

    def __init__(self) -> None:
        self.online = False
        self.plugged: dict[int, bool] = {}
        self._changed = asyncio.Event()

    def observe(self, event: charger.ChargerEvent) -> None:
        match event:
            case charger.ChargerBack():
                self.online = True
            case charger.ChargerLost():
                self.online = False
            case charger.PlugChanged(connector_id=cid, plugged=plugged):
                self.plugged[cid] = plugged
            case _:
                return
        self._changed.set()

    async def wait_known(self, connector_ids: set[int]) -> None:
        """Until the charger is online and the plug state of every connector in ``connector_ids`` is known."""
        while not (self.online and connector_ids <= set(self.plugged)):
            self._changed.clear()
            await self._changed.wait()


def restore_events(rows: list[PaymentRow], facts: ChargerFacts, at: datetime) -> list[Event]:
    """The engine events that restore ``rows`` (approved, non-final payments), in journal order.

    Starts with ``ChargerLost``: until the charger driver reports ``ChargerBack`` the connectors
    count as unavailable (drivers/charger/base.py); the buffered charger events follow the restore.
    """
    events: list[Event] = [ChargerLost(at)]
    seen: set[int] = set()
    for row in rows:
        if row.connector_id in seen:  # two open payments on one connector: restore the oldest first
            _LOGGER.warning(
                "recovery: second open payment on a connector waits %s",
                kv(connector=row.connector_id, payment=row.payment_id),
            )
        seen.add(row.connector_id)
        events.append(
            PaymentRestored(
                row.connector_id,
                at,
                row.to_restored(),
                plugged=facts.online and facts.plugged.get(row.connector_id, False),
                charger_online=facts.online,
            )
        )
    return events


async def reconcile_terminal_sessions(journal: Journal, terminal: Terminal) -> list[int]:
    """P6X: void every open terminal session the journal never saw; returns their ids."""
    open_ids = await terminal.list_sessions()
    known = journal.known_session_ids()
    orphans = [sid for sid in open_ids if str(sid) not in known]
    journal.note("recovery_list_sessions", None, None, {"open": len(open_ids), "orphans": len(orphans)})
    for sid in orphans:
        journal.note("recovery_orphan_void", None, None, {"session_id": str(sid)})
        try:
            await terminal.void(sid)
            outcome = "ok"
        except SessionNotFound:
            outcome = "not_found"
        except DriverError as exc:
            outcome = f"failed:{type(exc).__name__}"
        journal.note("recovery_orphan_voided", None, None, {"session_id": str(sid), "outcome": outcome})
        _LOGGER.warning(
            "recovery: voided a session the journal never saw %s", kv(session_id=sid, outcome=outcome)
        )
    return orphans
