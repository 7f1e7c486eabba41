"""Configuration of the machines: pure frozen dataclasses; the agent's YAML config maps onto them."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from statemachines.authorization import AuthorizationPolicy


class StartMode(StrEnum):
    TAP = "tap"  # START-1
    PLUG_IN = "plug_in"  # START-2
    UI = "ui"  # START-3 (Apollo)
    REMOTE = "remote"  # START-4


class StopMode(StrEnum):
    TAP = "tap"  # STOP-1
    UNPLUG = "unplug"  # STOP-3 (always honoured: no vehicle, no energy)
    UI = "ui"  # STOP-4 (Apollo)
    REMOTE = "remote"  # STOP-5


class OfflinePolicy(StrEnum):
    """ERR-3: what a plugged vehicle gets while the terminal is offline."""

    FREE_VEND = "free_vend"
    REFUSE = "refuse"


class Routing(StrEnum):
    """Which connector gets a card when several wait (DESIGN.md §4.2)."""

    EARLIEST_PLUG_IN = "earliest_plug_in"
    UI_SELECTION = "ui_selection"


@dataclass(frozen=True, slots=True)
class TerminalCapabilities:
    """Family differences that matter to the machines (psp-reference §8)."""

    family: str
    supports_update_session: bool  # Update Session 0x42, Apollo only
    supports_ui: bool  # UI Request / UI Event, Apollo only
    supports_partial_approval: bool  # Session Partially Approved, Apollo only


P6X = TerminalCapabilities(
    "p6x", supports_update_session=False, supports_ui=False, supports_partial_approval=False
)
APOLLO = TerminalCapabilities(
    "apollo", supports_update_session=True, supports_ui=True, supports_partial_approval=True
)

ALL_START_MODES = frozenset(StartMode)
ALL_STOP_MODES = frozenset(StopMode)


@dataclass(frozen=True, slots=True)
class ConnectorConfig:
    connector_id: int
    idle_fee_enabled: bool = False  # STOP-9: commit deferred until unplug
    max_energy_wh: int | None = None  # STOP-6 energy limit
    max_duration_s: int | None = None  # STOP-6 duration limit


@dataclass(frozen=True, slots=True)
class StationConfig:
    connectors: tuple[ConnectorConfig, ...] = (ConnectorConfig(1),)
    start_modes: frozenset[StartMode] = ALL_START_MODES
    stop_modes: frozenset[StopMode] = ALL_STOP_MODES
    terminal: TerminalCapabilities = APOLLO
    authorization: AuthorizationPolicy = field(default_factory=AuthorizationPolicy)
    offline_policy: OfflinePolicy = OfflinePolicy.REFUSE
    routing: Routing = Routing.EARLIEST_PLUG_IN
    plug_in_timeout_s: int = 300  # START-6; payter-ev-guide §2.1 (Payter's 5-minute example)
    card_decision_s: int = 25  # psp-reference §9.2: host must decide within 30 s; 5 s margin for the reply
    final_meter_timeout_s: int = 10  # wait for the final meter value after energy off
    meter_interval_s: int = 60  # AMT-2 stop margin: stop when the cap is projected within one interval
    # STOP-7 retry schedule (payter-ev-guide §6.4: every minute for 5 attempts, then hourly)
    settlement_retry_s: tuple[int, ...] = (60, 60, 60, 60, 60, 3600)
    undisposed_alarm_s: int = 900  # STOP-7: alarm when a payment is still undisposed after 15 min

    def __post_init__(self) -> None:
        ids = [c.connector_id for c in self.connectors]
        if not ids or len(set(ids)) != len(ids):
            raise ValueError("connector ids must be unique and at least one is needed")
        if not self.settlement_retry_s:
            raise ValueError("settlement_retry_s needs at least one delay")

    @property
    def connector_ids(self) -> tuple[int, ...]:
        return tuple(c.connector_id for c in self.connectors)

    def connector(self, connector_id: int) -> ConnectorConfig:
        for c in self.connectors:
            if c.connector_id == connector_id:
                return c
        raise KeyError(connector_id)
