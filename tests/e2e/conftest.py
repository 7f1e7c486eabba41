"""Fixtures of the end-to-end tests: one Mosquitto per module, a Station factory, log attachment."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import ACTIVE_STATIONS, Station, StationOptions, agent_missing_reason
from tests.mosquitto import Broker, find_mosquitto

StationFactory = Callable[..., contextlib.AbstractAsyncContextManager[Station]]


@pytest.fixture(scope="module")
def e2e_broker() -> Iterator[Broker]:
    """One broker per module; stations use their own topic prefixes, so sharing it is safe."""
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed (/usr/sbin/mosquitto or PATH)")
    broker = Broker()
    try:
        broker.start()
        yield broker
    finally:
        broker.close()


@pytest.fixture
def requires_agent() -> None:
    """Skip (as blocked) until ``evpay-agent run`` exists."""
    reason = agent_missing_reason()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture
async def station_factory(e2e_broker: Broker, tmp_path: Path) -> AsyncIterator[StationFactory]:
    """``async with station_factory(transport=…, config={…}) as st``; every rig is closed at the end."""
    opened: list[Station] = []
    count = 0

    @contextlib.asynccontextmanager
    async def make(**options: Any) -> AsyncIterator[Station]:
        nonlocal count
        count += 1
        workdir = tmp_path / f"station{count}"
        workdir.mkdir()
        if not e2e_broker.running:  # a previous test may have stopped it
            e2e_broker.start()
        station = Station(workdir, e2e_broker, StationOptions(**options))
        opened.append(station)
        async with station:
            yield station

    try:
        yield make
    finally:
        for station in opened:
            await station.close()
            if station in ACTIVE_STATIONS:
                ACTIVE_STATIONS.remove(station)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """On a failure, attach the last 200 lines of every process log of the open stations."""
    report = yield
    if report.failed and ACTIVE_STATIONS:
        for station in list(ACTIVE_STATIONS):
            for name, text in station.logs():
                report.sections.append((f"log: {name} (last 200 lines)", text or "(empty)"))
    return report
