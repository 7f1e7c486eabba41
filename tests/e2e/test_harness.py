"""Self-tests of the end-to-end rig: they need only the simulators, Mosquitto and socat."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import StationFactory
from tests.e2e.harness import (
    REPO,
    Agent,
    HarnessError,
    Proc,
    expected_cost_minor,
    settlement_problems,
    wait_until,
)
from tests.mosquitto import Broker

pytestmark = pytest.mark.timeout(60)


async def test_simulators_run_as_processes_and_answer_control(station_factory: StationFactory) -> None:
    async with station_factory(start_agent=False, connectors=2) as st:
        assert st.psp.proc.running
        assert st.charger.proc.running
        state = await st.psp.state()
        assert state["family"] == "apollo"
        assert state["connected"] is False
        assert await st.psp.sessions() == []
        await st.charger.plug(2)
        snap = await st.wait_charger(2, lambda s: s["plugged"], what="plugged", alive=False)
        assert snap["status"] == "idle"
        assert snap["enabled"] is False
        assert (await st.charger.state(1))["plugged"] is False


@pytest.mark.parametrize("transport", ["tcp", "pty"])
async def test_terminal_url_points_at_the_simulator(station_factory: StationFactory, transport: str) -> None:
    async with station_factory(start_agent=False, transport=transport) as st:
        if transport == "pty":
            assert st.psp.url.startswith("serial:///dev/pts/")
        else:
            host, port = st.psp.where["tcp"].rsplit(":", 1)
            _reader, writer = await asyncio.open_connection(host, int(port))
            writer.close()
            await writer.wait_closed()


async def test_generated_config_passes_check_config(station_factory: StationFactory) -> None:
    async with station_factory(start_agent=False, relay=True, connectors=2) as st:
        code, out, err = await st.agent.cli("check-config", str(st.config_path))
        assert code == 0, err
        assert "OK (station" in out
        assert "2 connectors" in out


async def test_relay_down_and_up_keeps_the_port(station_factory: StationFactory) -> None:
    async with station_factory(start_agent=False, relay=True) as st:
        assert st.link is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", st.link.port)
        await st.link.down()
        try:  # the cut shows as EOF or as a reset, depending on timing
            assert await asyncio.wait_for(reader.read(), 5) == b""
        except ConnectionResetError:
            pass
        writer.close()
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", st.link.port)
        await st.link.up()
        _, writer = await asyncio.open_connection("127.0.0.1", st.link.port)
        writer.close()
        await writer.wait_closed()


async def test_charger_simulator_survives_a_broker_restart(
    station_factory: StationFactory, e2e_broker: Broker
) -> None:
    async with station_factory(start_agent=False) as st:
        await st.charger.plug(1)
        e2e_broker.restart()
        await st.charger.power(1, 11000)
        snap = await st.wait_charger(1, lambda s: s["demand_w"] == 11000, what="power set", alive=False)
        assert snap["plugged"] is True
        assert "connected" in st.charger.proc.log_text()


async def test_proc_kill_reports_sigkill_and_logs_are_kept(tmp_path: Path) -> None:
    proc = Proc("sleeper", tmp_path / "sleeper.log")
    await proc.spawn([sys.executable, "-c", "import time; print('hello', flush=True); time.sleep(60)"])
    await wait_until(
        lambda: asyncio.sleep(0, proc.log_text()), lambda t: "hello" in t, what="output", within=5
    )
    assert await proc.kill() == -9
    assert "hello" in proc.log_tail()
    await proc.spawn([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with pytest.raises(HarnessError, match="did not exit"):
            await proc.wait(0.1)
    finally:
        await proc.kill()


async def test_agent_self_kill_exit_code_is_minus_nine(tmp_path: Path) -> None:
    """What a crash point looks like to the harness: a process that SIGKILLs itself."""
    agent = Agent(tmp_path, tmp_path / "unused.yaml")
    await agent.proc.spawn([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
    assert await agent.wait_exit(5) == -9
    with pytest.raises(HarnessError, match="exited with -9"):
        agent.check_alive()


def test_expected_cost_uses_the_tariff() -> None:
    tariff = {
        "currency": "EUR",
        "prices_include_vat": True,
        "vat_rate_percent": "21",
        "energy_per_kwh": "0.39",
    }
    assert expected_cost_minor(tariff, 1000) == 39
    assert expected_cost_minor(tariff, 0) == 0
    assert expected_cost_minor(tariff, 1500) == 59  # 58.5 rounds half up


def test_settlement_problems_flags_open_double_and_over_capture() -> None:
    history: list[dict[str, Any]] = [{"event": "approved"}, {"event": "committed", "amount_minor": 10}]
    ok: dict[str, Any] = {
        "session_id": 1,
        "status": "committed",
        "authorized_minor": 50,
        "committed_minor": 10,
        "history": history,
    }
    assert settlement_problems([ok]) == []
    still_open = {**ok, "status": "approved", "committed_minor": None, "history": [{"event": "approved"}]}
    assert "still approved" in settlement_problems([still_open])[0]
    refused = {**ok, "history": [*history, {"event": "commit_refused", "amount_minor": 99}]}
    assert "above the authorized" in settlement_problems([refused])[0]


def test_tools_present() -> None:
    assert shutil.which("socat"), "socat is needed for terminal-offline tests"
    assert (REPO / "hil" / "psp_sim").is_dir()
