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

Tariffs (issue 10, docs/tariff.md "Changing the tariff"): :func:`station_tariff_at_start` decides
which tariff the station starts with — the one of the last ``set_tariff`` the journal holds, unless
the configured tariff changed since that command, when the configuration wins — and
:func:`session_tariffs` gives each restored payment the tariff its session started with, which
``PaymentRestored`` hands to the engine (STOP-8: a restored session is priced by its own tariff).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from datetime import datetime

from agent.logs import kv
from agent.money.tariff import (
    Tariff,
    TariffConfigError,
    tariff_fingerprint,
    tariff_from_builtins,
    tariff_to_builtins,
)
from agent.store.journal import Journal, JournalError, PaymentRow, StoredTariff
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


def stored_tariff(tariff: Tariff) -> StoredTariff:
    """``tariff`` as the journal keeps it: its fingerprint and canonical form, as plain JSON data
    (lists, not tuples: what the journal gives back compares equal)."""
    builtins = json.loads(json.dumps(tariff_to_builtins(tariff)))
    return StoredTariff(tariff_fingerprint(tariff), builtins)


def station_tariff_at_start(journal: Journal, configured: Tariff) -> tuple[Tariff, StoredTariff]:
    """The station's tariff at start, and as the journal keeps it.

    The tariff of the last ``set_tariff`` when the journal holds one and the configured tariff is
    still the one that command replaced (same fingerprint); else the configured tariff — when the
    configuration changed since the command, the journaled tariff is dropped for good. Logs one
    INFO line saying which applies (an ERROR instead when the journaled tariff cannot be read).
    """
    mine = stored_tariff(configured)
    row = journal.station_tariff()
    if row is None:
        _LOGGER.info(
            "tariff at start: the configured tariff applies %s", kv(fingerprint=mine.fingerprint[:12])
        )
        return configured, mine
    if row.configured_fingerprint != mine.fingerprint:
        _LOGGER.info(
            "tariff at start: the configured tariff changed since set_tariff; the configured tariff "
            "applies %s",
            kv(fingerprint=mine.fingerprint[:12], dropped=row.tariff.fingerprint[:12], set_at=row.set_at),
        )
        try:
            journal.clear_station_tariff(configured_fingerprint=mine.fingerprint)
        except JournalError as exc:
            _LOGGER.error("tariff at start: the dropped tariff stays journaled %s", kv(error=str(exc)))
        return configured, mine
    try:
        journaled = tariff_from_builtins(dict(row.tariff.builtins))
    except TariffConfigError as exc:
        _LOGGER.error(
            "tariff at start: the tariff of set_tariff cannot be read; the configured tariff applies %s",
            kv(fingerprint=mine.fingerprint[:12], error=str(exc)),
        )
        return configured, mine
    _LOGGER.info(
        "tariff at start: the tariff of set_tariff applies %s",
        kv(fingerprint=row.tariff.fingerprint[:12], set_at=row.set_at),
    )
    return journaled, stored_tariff(journaled)


def session_tariffs(journal: Journal, rows: list[PaymentRow]) -> dict[str, Tariff]:
    """The tariff each of ``rows`` (open payments) started with, by ``payment_id``. A row the
    journal names no tariff for (journaled before schema 3) or whose tariff cannot be read (ERROR
    logged) is left out: the station's tariff prices it."""
    by_fingerprint: dict[str, Tariff | None] = {}
    out: dict[str, Tariff] = {}
    for row in rows:
        fingerprint = row.tariff_fingerprint
        if fingerprint is None:
            continue
        if fingerprint not in by_fingerprint:
            stored = journal.tariff(fingerprint)
            try:
                by_fingerprint[fingerprint] = (
                    tariff_from_builtins(dict(stored.builtins)) if stored is not None else None
                )
            except TariffConfigError as exc:
                by_fingerprint[fingerprint] = None
                _LOGGER.error(
                    "recovery: a session's tariff cannot be read; the station's prices it %s",
                    kv(payment=row.payment_id, fingerprint=fingerprint[:12], error=str(exc)),
                )
        tariff = by_fingerprint[fingerprint]
        if tariff is not None:
            out[row.payment_id] = tariff
    return out


def restore_events(
    rows: list[PaymentRow],
    facts: ChargerFacts,
    at: datetime,
    tariffs: Mapping[str, Tariff] | None = None,
) -> list[Event]:
    """The engine events that restore ``rows`` (approved, non-final payments), in journal order;
    each carries its session's tariff from ``tariffs`` (by ``payment_id``; see :func:`session_tariffs`).

    Starts with ``ChargerLost``: until the charger driver reports ``ChargerBack`` the connectors
    count as unavailable (drivers/charger/base.py); the buffered charger events follow the restore.
    """
    tariffs = tariffs or {}
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
                pricer=tariffs.get(row.payment_id),
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
