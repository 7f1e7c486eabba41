"""A charger simulator speaking exactly the MQTT bridge contract of DESIGN.md §3.3 (charger side).

``python -m hil.charger_sim --broker mqtt://127.0.0.1:1883 --connectors 2`` runs it; see
:class:`ChargerSimulator` for the Python API and docs/charger-bridge.md for the control commands.
"""

from __future__ import annotations

from hil.charger_sim.simulator import ChargerSimulator, CommandRecord, ConnectorSnapshot

__all__ = ["ChargerSimulator", "CommandRecord", "ConnectorSnapshot"]
