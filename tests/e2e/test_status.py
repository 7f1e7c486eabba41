"""``evpay-agent status`` against the real daemon (OPS-3): the live state over the control socket.

The agent runs as ``evpay-agent run`` against the PSP and charger simulators on a real Mosquitto;
``evpay-agent status`` runs as another process, like an operator's shell would run it. What it
shows is checked against the simulators (terminal session, metered energy) and the journal
(``sessions --json``), not against the agent's own idea of itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest

from agent.runtime.control import CONTROL_SOCKET, MAX_REQUEST_BYTES
from tests.e2e.conftest import StationFactory
from tests.e2e.harness import HarnessError, Station, wait_until

pytestmark = [pytest.mark.usefixtures("requires_agent"), pytest.mark.timeout(90)]

POWER_W = 360_000  # 100 Wh per second; max_current_a 1000 allows it
AUTHORIZED = 5000  # authorization.amount_minor of the generated config
CARD = {"hash": f"{7:040X}", "pan": "476173******0007"}


async def status(st: Station) -> dict[str, Any]:
    """``evpay-agent status -c CONFIG --json`` as a process: one JSON object line."""
    code, out, err = await st.agent.cli("status", "-c", str(st.config_path), "--json")
    if code != 0:
        raise HarnessError(f"evpay-agent status exited {code}: {err.strip()[-2000:]}")
    lines = out.splitlines()
    assert len(lines) == 1, out  # --json: one line
    doc = json.loads(lines[0])
    assert isinstance(doc, dict)
    return doc


async def status_text(st: Station) -> str:
    code, out, err = await st.agent.cli("status", "-c", str(st.config_path))
    assert code == 0, err
    return out


def connector(doc: dict[str, Any], cid: int) -> dict[str, Any]:
    (found,) = [c for c in doc["connectors"] if c["connector_id"] == cid]
    assert isinstance(found, dict)
    return found


async def start_charging(st: Station) -> dict[str, Any]:
    """Plug in connector 1, tap the card, wait for energy; returns the approved terminal session."""
    await st.charger.power(1, POWER_W)
    await st.charger.plug(1)
    await st.wait_connector(1, ("awaiting_card",))
    await st.wait_terminal(("WAIT_CARD",))
    await st.psp.tap_emv(**CARD)
    (approved,) = await st.wait_session_status("approved")
    await st.wait_energy(1, 150)
    await st.wait_connector(1, ("charging",))
    return approved


def control_socket(st: Station) -> Path:
    return st.state_dir / CONTROL_SOCKET


@pytest.mark.req("OPS-3")
async def test_status_shows_the_charging_session_as_the_simulators_see_it(
    station_factory: StationFactory,
) -> None:
    async with station_factory() as st:
        path = control_socket(st)
        info = os.lstat(path)
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o600  # owner only

        idle = await status(st)
        assert idle["station_id"] == st.station_id
        assert idle["ready"] is True
        assert idle["terminal"]["link"] == "ready"
        assert connector(idle, 1)["state"] == "available"
        assert connector(idle, 1)["session"] is None

        e0 = await st.charger.energy_wh(1)
        approved = await start_charging(st)
        (payment,) = [p for p in await st.agent.sessions() if p["state"] == "charging"]

        doc = await status(st)
        sim_delivered = await st.charger.energy_wh(1) - e0  # read after the status: at least as much
        c1 = connector(doc, 1)
        assert c1["state"] == "charging"
        assert c1["plugged"] is True
        assert c1["session_id"] == payment["payment_id"]
        assert c1["terminal_session_id"] == str(approved["session_id"])
        assert c1["method"] == "emv"
        assert c1["authorized_minor"] == AUTHORIZED == approved["authorized_minor"]
        assert 150 <= c1["energy_wh"] <= sim_delivered
        assert c1["cost_minor"] == st.expected_cost(c1["energy_wh"])
        assert c1["currency"] == idle["currency"] == "EUR"
        assert c1["session"]["payment_state"] == "charging"
        assert c1["session"]["elapsed_s"] >= 0
        assert doc["terminal"]["link"] == "ready"
        assert doc["terminal"]["psp_state"] in ("enabled", "wait_card", "wait_auth")
        assert doc["pending_settlements"] == []
        assert doc["upstream"]["connected"] is True
        assert isinstance(doc["upstream"]["outbox_depth"], int)
        assert doc["alarms"] == []

        # the EV pauses: the register stops, and the status catches up with it exactly
        await st.charger.pause(1)
        await st.wait_connector(1, ("suspended_ev",))
        delivered = await st.charger.energy_wh(1) - e0
        paused = await wait_until(
            lambda: status(st),
            lambda d: connector(d, 1)["energy_wh"] == delivered,
            what="status energy = the energy the charger metered",
            within=10.0,
            interval=0.2,
            check=st.agent.check_alive,
        )
        p1 = connector(paused, 1)
        assert p1["state"] == "suspended_ev"
        assert p1["session_id"] == payment["payment_id"]
        assert p1["cost_minor"] == st.expected_cost(delivered) > 0

        text = await status_text(st)
        assert f"station {st.station_id}" in text
        assert "terminal   ready" in text
        assert "connector 1  suspended_ev  plugged" in text
        cost = st.expected_cost(delivered)
        assert (
            f"session {payment['payment_id']}  emv  payment charging  {delivered} Wh  "
            f"{cost // 100}.{cost % 100:02d} EUR" in text
        ), text
        assert "pending settlements  none" in text
        assert "alarms  none" in text

        # unplug with the Commit's Result held back: a pending settlement until it comes
        await st.psp.command("fault delay 6 1 only=CommitSession")
        await st.charger.unplug(1)
        pending = await wait_until(
            lambda: status(st),
            lambda d: bool(d["pending_settlements"]),
            what="a pending settlement",
            within=10.0,
            interval=0.2,
            check=st.agent.check_alive,
        )
        (settlement,) = pending["pending_settlements"]
        assert settlement["session_id"] == payment["payment_id"]
        assert settlement["connector_id"] == 1
        assert settlement["disposal"] == "commit"
        assert settlement["amount_minor"] == cost
        assert settlement["terminal_session_id"] == str(approved["session_id"])
        (committed,) = await st.wait_session_status("committed", within=20.0)
        assert committed["committed_minor"] == cost
        done = await wait_until(
            lambda: status(st),
            lambda d: not d["pending_settlements"] and connector(d, 1)["session_id"] is None,
            what="the settlement confirmed",
            within=10.0,
            interval=0.2,
            check=st.agent.check_alive,
        )
        assert connector(done, 1)["state"] == "available"

        await st.agent.stop()
        assert not path.exists()  # removed on a clean exit
        code, _out, err = await st.agent.cli("status", "-c", str(st.config_path))
        assert code == 3
        assert err.strip() == f"evpay-agent: the daemon is not running (no control socket at {path})"


def _raw(path: Path, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection and read until the daemon closes it or a line came."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5.0)
        sock.connect(str(path))
        sock.sendall(data)
        buf = b""
        while b"\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
        return buf


@pytest.mark.req("OPS-3")
async def test_garbage_on_the_control_socket_gets_an_error_and_the_daemon_keeps_serving(
    station_factory: StationFactory,
) -> None:
    async with station_factory() as st:
        path = control_socket(st)
        too_long = await asyncio.to_thread(_raw, path, b"x" * (MAX_REQUEST_BYTES * 4) + b"\n")
        assert "too long" in json.loads(too_long)["error"]
        unknown = await asyncio.to_thread(_raw, path, b"reboot\n")
        assert json.loads(unknown)["error"].startswith("unknown request 'reboot'")
        binary = await asyncio.to_thread(_raw, path, b"\xff\xfe\x00status\n")
        assert "error" in json.loads(binary)
        for _ in range(3):  # connect and go away without a word (or half a request)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.connect(str(path))
                sock.sendall(b"sta")
        # two requests on one connection: two answers, in order
        two = await asyncio.to_thread(_raw_lines, path, b"nonsense\nstatus\n", 2)
        assert "error" in json.loads(two[0])
        assert json.loads(two[1])["station_id"] == st.station_id
        doc = await status(st)
        assert doc["ready"] is True
        st.agent.check_alive()
        assert "Traceback" not in st.agent.proc.log_text()


def _raw_lines(path: Path, data: bytes, n: int) -> list[bytes]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5.0)
        sock.connect(str(path))
        sock.sendall(data)
        buf = b""
        while buf.count(b"\n") < n:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
        return buf.splitlines()


@pytest.mark.req("OPS-3")
async def test_a_stale_socket_is_replaced_and_a_second_agent_fails_clearly(
    station_factory: StationFactory,
) -> None:
    async with station_factory(start_agent=False) as st:
        path = control_socket(st)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
            stale.bind(str(path))  # left behind by a killed daemon: nobody listens
        code, _out, err = await st.agent.cli("status", "-c", str(st.config_path))
        assert code == 3
        assert err.strip() == (
            f"evpay-agent: the daemon is not running (nothing listens on the control socket {path})"
        )

        await st.agent.start()
        await st.wait_ready()
        assert (await status(st))["station_id"] == st.station_id
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600

        code, _out, err = await st.agent.cli("run", "-c", str(st.config_path))
        assert code == 1
        assert "another evpay-agent is running with this state directory" in err
        assert (await status(st))["ready"] is True  # the first one is undisturbed

        await st.agent.kill()  # SIGKILL leaves the socket behind: a stale one again
        code, _out, _err = await st.agent.cli("status", "-c", str(st.config_path))
        assert code == 3
