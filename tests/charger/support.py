"""Helpers for the charger tests: an event waiter over a driver's event stream, a raw MQTT client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import aiomqtt

from drivers.charger.base import ChargerDriver, ChargerEvent
from tests.mosquitto import Broker

E = TypeVar("E")
DEFAULT_WAIT_S = 3.0


class EventWaiter:
    """Reads the driver's events; ``next`` skips events that do not match and keeps them in ``seen``."""

    def __init__(self, driver: ChargerDriver) -> None:
        self._events: AsyncIterator[ChargerEvent] = driver.events()
        self.seen: list[ChargerEvent] = []

    async def next(
        self,
        kind: type[E],
        where: Callable[[E], bool] = lambda _: True,
        *,
        timeout_s: float = DEFAULT_WAIT_S,
    ) -> E:
        async with asyncio.timeout(timeout_s):
            while True:
                event = await anext(self._events)
                self.seen.append(event)
                if isinstance(event, kind) and where(event):
                    return event

    async def collect(self, duration_s: float) -> list[ChargerEvent]:
        """Every event that arrives within ``duration_s``."""
        got: list[ChargerEvent] = []
        try:
            async with asyncio.timeout(duration_s):
                while True:
                    event = await anext(self._events)
                    self.seen.append(event)
                    got.append(event)
        except TimeoutError:
            pass
        return got


def raw_client(broker: Broker, **kwargs: Any) -> aiomqtt.Client:
    """A plain aiomqtt client on the test broker (to play a misbehaving firmware or a spy)."""
    return aiomqtt.Client(broker.host, broker.port, **kwargs)


async def eventually(predicate: Callable[[], bool], *, timeout_s: float = DEFAULT_WAIT_S) -> None:
    """Poll a condition every 10 ms until it holds (for simulator state, not for driver events)."""
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110  (simulator state has no change notification)
            await asyncio.sleep(0.01)
