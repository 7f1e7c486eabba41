"""An in-process agent rig: PSP simulator (TCP) + charger simulator on a real Mosquitto + Runtime."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from agent.config.schema import LoadedConfig, load_config
from agent.runtime.shell import Runtime, RuntimeOptions
from agent.store.journal import Journal
from drivers.charger.mqtt_bridge import MqttBridgeDriver
from drivers.psp.messages import Family
from drivers.terminal import PspTerminal
from hil.charger_sim import ChargerSimulator
from hil.psp_sim import Simulator

CONFIG = """\
station_id: TEST-1
state_dir: {state_dir}
terminal:
  url: tcp://127.0.0.1:{psp_port}
  family: {family}
charger:
  broker_url: {broker_url}
connectors:
  - id: 1
    max_current_a: 32
  - id: 2
    max_current_a: 16
session:
  start_modes: [tap, plug_in]
  stop_modes: [tap, unplug]
  final_meter_wait_s: 1
authorization:
  amount_minor: 5000
tariff:
  currency: EUR
  prices_include_vat: true
  vat_rate_percent: "21"
  energy_per_kwh: "0.40"
upstream:
  broker_url: {broker_url}
"""


def write_config(tmp_path: Path, *, psp_port: int, broker_url: str, family: str = "apollo") -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(
        CONFIG.format(state_dir=tmp_path / "state", psp_port=psp_port, family=family, broker_url=broker_url)
    )
    return path


def make_runtime(loaded: LoadedConfig, journal: Journal, **options: object) -> Runtime:
    config = loaded.config
    apollo = config.terminal.family is Family.APOLLO
    terminal = PspTerminal(config.terminal.url, config.to_profile())
    charger = MqttBridgeDriver(
        broker_url=config.charger.broker_url,
        connectors=[c.id for c in config.connectors],
        reconnect_min_s=0.05,
        reconnect_max_s=0.2,
        command_timeout_s=2.0,
        connect_timeout_s=2.0,
        rng=random.Random(3),
    )
    opts = RuntimeOptions(
        max_current_a={c.id: c.max_current_a for c in config.connectors},
        ui_screens=apollo,
        list_sessions=not apollo,
        recovery_wait_s=1.0,
        drain_timeout_s=2.0,
    )
    for key, value in options.items():
        setattr(opts, key, value)
    return Runtime(
        station_config=config.to_station_config(),
        pricer=loaded.tariff,
        journal=journal,
        terminal=terminal,
        charger_driver=charger,
        options=opts,
    )


@dataclass
class Agent:
    runtime: Runtime
    journal: Journal
    task: asyncio.Task[None]

    async def stop(self) -> None:
        self.runtime.request_stop()
        async with asyncio.timeout(10):
            await self.task


@contextlib.asynccontextmanager
async def running_agent(loaded: LoadedConfig, journal: Journal, **options: object) -> AsyncIterator[Agent]:
    runtime = make_runtime(loaded, journal, **options)
    task = asyncio.create_task(runtime.run(), name="agent-under-test")
    agent = Agent(runtime, journal, task)
    try:
        await asyncio.wait_for(runtime.ready.wait(), 5)
        yield agent
    finally:
        if not task.done():
            await agent.stop()


async def eventually(predicate: Callable[[], object], timeout_s: float = 5.0, what: str = "") -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 - polls simulator/engine state owned elsewhere
            await asyncio.sleep(0.01)


@dataclass
class Rig:
    tmp_path: Path
    psp: Simulator
    charger: ChargerSimulator
    config_path: Path
    loaded: LoadedConfig

    def open_journal(self) -> Journal:
        return Journal.open(self.loaded.config.state_dir)

    def sessions(self) -> list[dict[str, object]]:
        return self.psp.sessions_json()


def load(path: Path) -> LoadedConfig:
    return load_config(path)
