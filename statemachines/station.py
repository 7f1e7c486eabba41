"""A charger: N connector machines and one terminal arbiter, composed synchronously.

``Station.handle(event)`` routes terminal events through the arbiter, hands the arbiter's card
routes (card assigned, stop request) to the connectors, passes Commit/Void/Update through the
arbiter's offline queue, and finally lets the arbiter start or cancel the card read the connectors
now need. The returned effects are in execution order.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Generic

from statemachines.config import StationConfig
from statemachines.connector import ConnectorMachine
from statemachines.effects import Effect
from statemachines.events import (
    AuthorizationResult,
    CardRead,
    CardReadEnded,
    ChargerBack,
    ChargerLost,
    Event,
    P,
    TariffChanged,
    TerminalLinkDown,
    TerminalLinkUp,
    TimerFired,
    TimerKind,
    UiSelection,
)
from statemachines.terminal import ConnectorView, TerminalArbiter


class Station(Generic[P]):
    """``P``: the pricer type (``agent.money.tariff.Tariff`` in the agent)."""

    def __init__(self, config: StationConfig, pricer: P, *, terminal_online: bool = True) -> None:
        self.config = config
        self.connectors: dict[int, ConnectorMachine[P]] = {
            c.connector_id: ConnectorMachine(c, config, pricer) for c in config.connectors
        }
        self.arbiter = TerminalArbiter(config, online=terminal_online)
        if not terminal_online:
            for machine in self.connectors.values():
                machine.terminal_online = False
        # The arbiter's view of every connector, refreshed only for the connectors an event was
        # handed to (a view depends on nothing but its machine): O(connectors touched) per event
        # instead of O(connectors) (docs/performance.md §3.3).
        self._views: dict[int, ConnectorView] = {cid: self._view(m) for cid, m in self.connectors.items()}
        self.touched: set[int] = set()  # connectors the last :meth:`handle` handed an event to

    @staticmethod
    def _view(m: ConnectorMachine[P]) -> ConnectorView:
        return ConnectorView(
            connector_id=m.connector_id,
            state=m.state,
            operative=m.operative,
            plugged_at=m.plugged_at,
            card_token=m.card.token if m.card is not None else None,
        )

    def views(self) -> list[ConnectorView]:
        """The arbiter's view of every connector as of now."""
        for cid in self.touched:
            self._views[cid] = self._view(self.connectors[cid])
        return list(self._views.values())

    def handle(self, event: Event | TariffChanged[P]) -> list[Effect]:
        """Pre: ``event.connector_id`` (where present) names a configured connector."""
        self.touched = set()
        out: list[Effect] = []
        match event:
            case TerminalLinkUp() | TerminalLinkDown():
                effects, routes = self.arbiter.handle(event, self.views())
                out += effects
                out += self._to_connectors(self.connectors.values(), event)
                out += self._route(routes)
            case CardRead() | CardReadEnded() | UiSelection():
                effects, routes = self.arbiter.handle(event, self.views())
                out += effects
                out += self._route(routes)
            case TimerFired(kind=TimerKind.CARD_DECISION):
                effects, routes = self.arbiter.handle(event, self.views())
                out += effects
                out += self._route(routes)
            case ChargerLost() | ChargerBack():
                out += self._to_connectors(self.connectors.values(), event)
            case TariffChanged():
                out += self._to_connectors(self.connectors.values(), event)
                out += self.arbiter.restart_read()  # START-8: the new price is shown before payment
            case AuthorizationResult():
                out += self._to_connector(event.connector_id, event)
                self.arbiter.authorization_done(event.connector_id)
            case TimerFired():
                if event.connector_id is not None:
                    out += self._to_connector(event.connector_id, event)
            case _:
                out += self._to_connector(event.connector_id, event)
        out = self.arbiter.pass_settlements(out)
        out += self.arbiter.sync(self.views())
        return out

    def _to_connector(self, connector_id: int, event: Any) -> list[Effect]:
        self.touched.add(connector_id)
        return self.connectors[connector_id].handle(event)

    def _to_connectors(self, machines: Iterable[ConnectorMachine[P]], event: Any) -> list[Effect]:
        out: list[Effect] = []
        for machine in machines:
            out += self._to_connector(machine.connector_id, event)
        return out

    def _route(self, routes: Iterable[Any]) -> list[Effect]:
        out: list[Effect] = []
        for route in routes:
            out += self._to_connector(route.connector_id, route)
            if isinstance(route, AuthorizationResult):
                self.arbiter.authorization_done(route.connector_id)
        return out
