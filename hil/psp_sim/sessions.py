"""The simulator's sessions table (psp-reference §12.9)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Literal

from hil.psp_sim.cards import CardBehaviour

SessionStatus = Literal["approved", "committed", "voided", "expired_committed", "expired_voided"]


@dataclass(slots=True)
class SimSession:
    """One approved session. ``card`` holds masked data only (masked PAN, hash, brand)."""

    session_id: int
    authorized_minor: int
    requested_minor: int
    reference: int
    card: dict[str, str]
    status: SessionStatus = "approved"
    committed_minor: int | None = None
    history: list[dict[str, object]] = field(default_factory=list)
    context: list[str] = field(default_factory=list)  # Add Transaction Context data (§5.25)
    behaviour: CardBehaviour = field(default_factory=CardBehaviour, repr=False)
    expiry: asyncio.TimerHandle | None = field(default=None, repr=False)

    @property
    def is_open(self) -> bool:
        return self.status == "approved"

    def cancel_expiry(self) -> None:
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None

    def to_json(self) -> dict[str, object]:
        return {
            "session_id": self.session_id,
            "status": self.status,
            "authorized_minor": self.authorized_minor,
            "requested_minor": self.requested_minor,
            "committed_minor": self.committed_minor,
            "reference": self.reference,
            "card": dict(self.card),
            "history": list(self.history),
            "context": list(self.context),
        }
