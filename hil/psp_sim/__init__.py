"""PSP terminal simulator (P6X / Apollo), a real peer built on ``drivers.psp`` (DESIGN.md §6).

>>> sim = Simulator(SimConfig(family="apollo"))          # doctest: +SKIP
>>> port = await sim.serve_tcp("127.0.0.1", 0)           # doctest: +SKIP
>>> sim.tap(Card.emv(card_hash="…", masked_pan="476173******0010"))  # doctest: +SKIP

Run standalone with ``python -m hil.psp_sim --help``.
"""

from __future__ import annotations

from hil.psp_sim.cards import Card, CardBehaviour, Outcome
from hil.psp_sim.config import SimConfig
from hil.psp_sim.faults import Faults
from hil.psp_sim.sessions import SimSession
from hil.psp_sim.simulator import Simulator

__all__ = ["Card", "CardBehaviour", "Faults", "Outcome", "SimConfig", "SimSession", "Simulator"]
