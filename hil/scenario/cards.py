"""The built-in test cards of the scenarios and their tap commands for the PSP simulator.

On a rig the same names refer to physical test cards listed in ``rig.yaml`` (docs/hil-rig.md).
A card's masked PAN shows 6 + 4 digits only; the card hash is derived from its number.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from hil.scenario.schema import CardSpec

__all__ = ["BUILTIN_CARDS", "card_hash", "masked_pan", "tap_command"]

BUILTIN_CARDS: Final[Mapping[str, CardSpec]] = {
    "visa": CardSpec(number=1, description="an approving VISA test card"),
    "visa-2": CardSpec(number=2, description="a second approving VISA test card (another driver)"),
    "mastercard": CardSpec(brand="MASTERCARD", number=3, description="an approving Mastercard test card"),
    "declined": CardSpec(
        number=4, decline="INSUFFICIENT_FUNDS", description="a test card the issuer declines"
    ),
    "partial": CardSpec(number=5, partial_minor=2000, description="a card approved for 20.00 only"),
    "pin": CardSpec(number=6, pin_delay_s=2.0, description="a card asking for a PIN (slow approval)"),
    "rfid": CardSpec(kind="rfid", uid="04A2B3C4D5E6F7", description="a fleet RFID tag"),
    "rfid-unknown": CardSpec(kind="rfid", uid="04FFEEDDCCBBAA", description="an RFID tag nobody knows"),
}


def card_hash(card: CardSpec) -> str:
    """The 40-hex-character card hash (psp-reference §5.14) of a simulated card."""
    return f"{card.number:040X}"


def masked_pan(card: CardSpec) -> str:
    prefix = {"VISA": "476173", "MASTERCARD": "545454"}.get(card.brand, "400000")
    return f"{prefix}******{card.number:04d}"


def tap_command(card: CardSpec) -> str:
    """The simulator's control command presenting ``card`` (``hil.psp_sim.control``)."""
    if card.kind == "rfid":
        assert card.uid is not None
        return f"tap rfid uid={card.uid}"
    words = ["tap", "emv", f"hash={card_hash(card)}", f"pan={masked_pan(card)}", f"brand={card.brand}"]
    if card.decline is not None:
        words.append(f"decline={card.decline}")
    elif card.partial_minor is not None:
        words.append(f"partial={card.partial_minor}")
    elif card.limit_minor is not None:
        words.append(f"limit={card.limit_minor}")
    if card.pin_delay_s is not None:
        words.append(f"pin_delay={card.pin_delay_s}")
    if card.update is not None:
        words.append(f"update={card.update}")
    return " ".join(words)
