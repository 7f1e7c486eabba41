"""Fixtures for the agent tests: PSP simulator + charger simulator on a real Mosquitto."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hil.charger_sim import ChargerSimulator
from hil.psp_sim import SimConfig, Simulator
from tests.agent.rig import Rig, load, write_config
from tests.mosquitto import Broker

SIM_SPEEDUP = 360.0  # 11 kW for 1 s of test time = 1.1 kWh


async def _rig(tmp_path: Path, broker: Broker, family: str) -> AsyncIterator[Rig]:
    async with Simulator(SimConfig(family=family, idle_close_s=None, seed=1)) as psp:
        port = await psp.serve_tcp("127.0.0.1", 0)
        path = write_config(tmp_path, psp_port=port, broker_url=broker.url, family=family)
        charger = ChargerSimulator(
            broker.url,
            connectors=2,
            meter_interval_s=0.05,
            reconnect_delay_s=0.05,
            monotonic=lambda: time.monotonic() * SIM_SPEEDUP,  # energy accrues 360x faster
        )
        async with charger:
            await charger.wait_connected(5)
            yield Rig(tmp_path, psp, charger, path, load(path), port, broker.url)


@pytest.fixture
async def apollo_rig(tmp_path: Path, mosquitto: Broker) -> AsyncIterator[Rig]:
    async for rig in _rig(tmp_path, mosquitto, "apollo"):
        yield rig


@pytest.fixture
async def p6x_rig(tmp_path: Path, mosquitto: Broker) -> AsyncIterator[Rig]:
    async for rig in _rig(tmp_path, mosquitto, "p6x"):
        yield rig
