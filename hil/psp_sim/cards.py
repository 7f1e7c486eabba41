"""Scriptable cards (psp-reference §12.7, §12.8): EMV with hash and masked PAN, RFID with a UID."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from drivers.psp.messages import DeclineReason

_HASH_RE = re.compile(r"^[0-9A-Fa-f]{40}$")  # §5.14 / §6.4: DFF006 is 40 ASCII hex characters
_UID_RE = re.compile(r"^(?:[0-9A-Fa-f]{2}){4,10}$")  # ISO 14443 UIDs: 4, 7 or 10 bytes (plus slack)

OutcomeKind = Literal["approve", "decline", "partial"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the acquirer answers: approve, decline with a reason, or partially approve an amount."""

    kind: OutcomeKind = "approve"
    amount_minor: int | None = None  # partial only
    reason: DeclineReason = DeclineReason.NOT_SET  # decline only

    @classmethod
    def approve(cls) -> Outcome:
        return cls("approve")

    @classmethod
    def decline(cls, reason: DeclineReason | int = DeclineReason.INSUFFICIENT_FUNDS) -> Outcome:
        return cls("decline", reason=DeclineReason(reason))

    @classmethod
    def partial(cls, amount_minor: int) -> Outcome:
        if amount_minor < 0:
            raise ValueError("partial amount must not be negative")
        return cls("partial", amount_minor=amount_minor)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"kind": self.kind}
        if self.kind == "partial":
            out["amount_minor"] = self.amount_minor
        if self.kind == "decline":
            out["reason"] = self.reason.name
        return out


@dataclass(frozen=True, slots=True)
class CardBehaviour:
    """How a card reacts to Auth Session and Update Session.

    ``outcome``: the Auth answer. ``pin_delay_s``: extra delay before it (to exceed the host's Auth
    timeout, §9.1). ``approve_up_to_minor``: above this amount the card is partially approved up to
    the limit (Apollo, ``limit_action="partial"``) or declined with Insufficient Funds.
    ``update``: the Update Session answer (§5.20).
    """

    outcome: Outcome = field(default_factory=Outcome.approve)
    pin_delay_s: float = 0.0
    approve_up_to_minor: int | None = None
    limit_action: Literal["partial", "decline"] = "partial"
    update: Outcome = field(default_factory=Outcome.approve)

    @classmethod
    def approve(cls, **kwargs: object) -> CardBehaviour:
        return cls(Outcome.approve(), **kwargs)  # type: ignore[arg-type]

    @classmethod
    def decline(
        cls, reason: DeclineReason | int = DeclineReason.INSUFFICIENT_FUNDS, **kwargs: object
    ) -> CardBehaviour:
        return cls(Outcome.decline(reason), **kwargs)  # type: ignore[arg-type]

    @classmethod
    def partial(cls, amount_minor: int, **kwargs: object) -> CardBehaviour:
        return cls(Outcome.partial(amount_minor), **kwargs)  # type: ignore[arg-type]

    def to_json(self) -> dict[str, object]:
        return {
            "outcome": self.outcome.to_json(),
            "pin_delay_s": self.pin_delay_s,
            "approve_up_to_minor": self.approve_up_to_minor,
            "limit_action": self.limit_action,
            "update": self.update.to_json(),
        }


@dataclass(frozen=True, slots=True)
class Card:
    """A card presented to the reader. Build with :meth:`emv` or :meth:`rfid`."""

    kind: Literal["emv", "rfid"]
    card_hash: str = ""
    masked_pan: str = ""
    brand: str = ""
    uid: str = ""
    behaviour: CardBehaviour = field(default_factory=CardBehaviour)

    @classmethod
    def emv(
        cls,
        card_hash: str = "0123456789ABCDEF0123456789ABCDEF01234567",
        masked_pan: str = "476173******0010",
        brand: str = "VISA",
        behaviour: CardBehaviour | None = None,
    ) -> Card:
        if not _HASH_RE.match(card_hash):
            raise ValueError("card_hash must be 40 hex characters (psp-reference §5.14)")
        if not masked_pan or len(masked_pan) > 19 + 6:  # a PAN has at most 19 digits
            raise ValueError("masked_pan must be a masked PAN such as 476173******0010")
        if re.search(r"\d{7,}", masked_pan):
            raise ValueError("masked_pan must be masked (no more than 6 consecutive digits)")
        return cls(
            "emv",
            card_hash=card_hash.upper(),
            masked_pan=masked_pan,
            brand=brand,
            behaviour=behaviour or CardBehaviour(),
        )

    @classmethod
    def rfid(cls, uid: str, behaviour: CardBehaviour | None = None) -> Card:
        if not _UID_RE.match(uid):
            raise ValueError("uid must be 4 to 10 bytes in hex, e.g. 04A2B3C4D5E6F7")
        return cls("rfid", uid=uid.upper(), behaviour=behaviour or CardBehaviour())

    def masked(self) -> dict[str, str]:
        """Only what may be logged and stored: masked PAN, hash and brand (RFID: the kind only)."""
        if self.kind == "rfid":
            return {"kind": "rfid"}
        return {
            "kind": "emv",
            "masked_pan": self.masked_pan,
            "card_hash": self.card_hash,
            "brand": self.brand,
        }
