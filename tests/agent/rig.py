"""An in-process agent rig: PSP simulator (TCP) + charger simulator on a real Mosquitto + the agent as
:func:`agent.app.build_app` builds it (the daemon's composition root)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from agent.app import App, AppOptions, ChargerLinkTuning, build_app
from agent.config.schema import LoadedConfig, load_config
from agent.runtime.shell import Runtime
from agent.store.journal import Journal
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
  broker_url: {upstream_url}
"""


def write_config(
    tmp_path: Path,
    *,
    psp_port: int,
    broker_url: str,
    family: str = "apollo",
    upstream_url: str | None = None,
    extra: str = "",
) -> Path:
    """``upstream_url``: the back office's broker (default: the charger's); ``extra``: more YAML."""
    path = tmp_path / "agent.yaml"
    text = CONFIG.format(
        state_dir=tmp_path / "state",
        psp_port=psp_port,
        family=family,
        broker_url=broker_url,
        upstream_url=upstream_url or broker_url,
    )
    path.write_text(text + extra)
    return path


# a back office that is not there: upstream messages stay in the outbox for the test to read
UNREACHABLE_BROKER = "mqtt://127.0.0.1:9"


TEST_OPTIONS = AppOptions(
    recovery_wait_s=1.0,
    drain_timeout_s=2.0,
    charger_link=ChargerLinkTuning(
        reconnect_min_s=0.05, reconnect_max_s=0.2, command_timeout_s=2.0, connect_timeout_s=2.0, seed=3
    ),
)


def make_app(loaded: LoadedConfig, options: AppOptions = TEST_OPTIONS) -> App:
    """The agent as the daemon builds it (the one composition root), with test timers."""
    return build_app(loaded, options)


@dataclass
class Agent:
    app: App
    task: asyncio.Task[None]

    @property
    def runtime(self) -> Runtime:
        return self.app.runtime

    @property
    def journal(self) -> Journal:
        return self.app.journal

    async def stop(self) -> None:
        self.runtime.request_stop()
        async with asyncio.timeout(10):
            await self.task


@contextlib.asynccontextmanager
async def running_agent(loaded: LoadedConfig, options: AppOptions = TEST_OPTIONS) -> AsyncIterator[Agent]:
    app = make_app(loaded, options)
    task = asyncio.create_task(app.run(), name="agent-under-test")
    agent = Agent(app, task)
    try:
        await asyncio.wait_for(app.runtime.ready.wait(), 5)
        yield agent
    finally:
        try:
            if not task.done():
                await agent.stop()
        finally:
            app.close()


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
    psp_port: int
    broker_url: str

    def open_journal(self) -> Journal:
        return Journal.open(self.loaded.config.state_dir)

    def sessions(self) -> list[dict[str, object]]:
        return self.psp.sessions_json()


def load(path: Path) -> LoadedConfig:
    return load_config(path)
