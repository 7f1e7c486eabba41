"""A charger simulator speaking exactly the MQTT bridge contract of DESIGN.md §3.3 (charger side).

``python -m hil.charger_sim --broker mqtt://127.0.0.1:1883 --connectors 2`` runs it; see
:class:`ChargerSimulator` for the Python API, :class:`ChargerHabits` for the firmware habits it can
show (meter reporting, retain flags, message order, duplicates, a meter without power) and
docs/charger-bridge.md for the contract and the control commands (``help`` lists them all).
"""

from __future__ import annotations

from hil.charger_sim.habits import ChargerHabits, MeterMode, PlugOrder
from hil.charger_sim.simulator import ChargerSimulator, CommandRecord, ConnectorSnapshot, PaymentRecord

__all__ = [
    "ChargerHabits",
    "ChargerSimulator",
    "CommandRecord",
    "ConnectorSnapshot",
    "MeterMode",
    "PaymentRecord",
    "PlugOrder",
]
