"""The alarms the shell raises (DESIGN.md §5.3 ``…/alarms``), one frozen type each.

The engine's own alarm is :class:`statemachines.effects.RaiseUndisposedPayment` (STOP-7); the
publisher (:meth:`agent.upstream.publisher.Publisher.alarm`) turns either into the contract's
:class:`agent.upstream.contract.Alarm`. The level alarms ``terminal_offline`` and
``outbox_near_full`` are the publisher's own (raised and cleared on change).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class JournalTrouble:
    """A step's transaction could not be committed (disk full, I/O error, corruption)."""

    connector_id: int | None
    error: str


@dataclass(frozen=True, slots=True)
class ChargerCommandFailed:
    """Energy enable/disable could not be handed to the charger after the retries."""

    connector_id: int
    action: Literal["enable", "disable"]


@dataclass(frozen=True, slots=True)
class PossibleOrphanApproval:
    """ERR-5 / psp-reference §10.4: a card read without an outcome at a restart; the terminal may
    hold an approval the journal never saw. What an operator needs to find it in the Payter portal:
    the masked PAN, the amount reserved, when the card was read, the session reference."""

    connector_id: int
    session_ref: str
    masked_pan: str | None
    brand: str | None
    amount_minor: int | None
    card_read_at: str  # ISO 8601 UTC


@dataclass(frozen=True, slots=True)
class OrphanCleared:
    """A possible orphan approval was accounted for (operator command, P6X List Sessions)."""

    connector_id: int
    session_ref: str
    resolution: str


ShellAlarm = JournalTrouble | ChargerCommandFailed | PossibleOrphanApproval
