"""Tariffs persist across restarts, and a running session keeps the tariff it started with (issue 10;
STOP-8, ERR-5, START-8; docs/tariff.md "Changing the tariff") — the real ``evpay-agent run`` process,
SIGKILLed and restarted on the same journal, the terminal and charger simulators, a real Mosquitto
and a test back office (MQTT 5) sending ``set_tariff``.

Prices are energy only (``expected_cost_minor``), so a session's amount tells which tariff priced it.
The OCPI cases (``ocpi_file`` in the config, a bare OCPI ``set_tariff``) need the OCPI forms of
``agent.money.tariff`` (the tariff rewrite).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import StationFactory
from tests.e2e.harness import Station, expected_cost_minor, journal_problems, settlement_problems, wait_until
from tests.e2e.test_commands_rfid import BackOffice

pytestmark = [pytest.mark.usefixtures("requires_agent"), pytest.mark.timeout(120)]

POWER_W = 360_000  # 100 Wh per second
PLUG_AND_CHARGE = {
    "session": {"start_modes": ["plug_in"], "stop_modes": ["unplug"], "settlement_retry_s": [1]}
}
NEW_PRICE = "0.99"  # the configured tariff (hil/rig/config.py) is 0.39 EUR/kWh


def ocpi_tariff(tariff_id: str = "t1", price: str = "0.30", **component: object) -> dict[str, Any]:
    """An OCPI 2.2.1 Tariff (§Tariffs 4.3.1): ``price`` EUR/kWh excl. 21 % VAT."""
    energy = {"type": "ENERGY", "price": price, "vat": 21, "step_size": 1, **component}
    return {
        "country_code": "NL",
        "party_id": "EVP",
        "id": tariff_id,
        "currency": "EUR",
        "last_updated": "2026-01-01T00:00:00Z",
        "elements": [{"price_components": [energy]}],
    }


OCPI = ocpi_tariff()


def card(n: int) -> dict[str, str]:
    return {"hash": f"{0xE2E0 + n:040X}", "pan": f"476173******{n:04d}"}


@contextlib.asynccontextmanager
async def station(
    station_factory: StationFactory,
    *,
    tariff: dict[str, Any] | None = None,
    files: dict[str, str] | None = None,
) -> AsyncIterator[tuple[Station, BackOffice]]:
    """A station in plug-and-charge mode with the back office connected; ``tariff`` replaces the
    configured one (all of it: the harness merges mappings) and ``files`` are written next to the
    config file first."""
    async with station_factory(config=PLUG_AND_CHARGE, start_agent=tariff is None) as st:
        if tariff is not None:
            for name, text in (files or {}).items():
                (st.config_path.parent / name).write_text(text, encoding="utf-8")
            write_tariff(st, tariff)
        if not st.agent.running:
            await st.agent.start()
            await st.wait_ready()
        async with BackOffice(st) as bo:
            await bo.wait_connected()
            yield st, bo


def write_tariff(st: Station, tariff: dict[str, Any]) -> None:
    """Replace the configured tariff (the agent reads it at its next start)."""
    st.config["tariff"] = tariff
    st.config_path.write_text(yaml.safe_dump(st.config, sort_keys=False), encoding="utf-8")


async def restart_after_kill(st: Station, bo: BackOffice) -> None:
    """SIGKILL (a crash or power loss), then start again on the same journal."""
    assert await st.agent.kill() == -9
    await st.agent.start()
    await st.wait_ready()
    await bo.wait_connected()


async def set_tariff(bo: BackOffice, tariff: dict[str, Any]) -> dict[str, Any]:
    result = await bo.ok("set_tariff", tariff=tariff)
    assert result["data"]["currency"] == "EUR", result
    return result


async def charge(st: Station, n: int, *, energy_wh: int = 300) -> None:
    """Plug in, tap card ``n``, charge at least ``energy_wh`` (the session keeps running)."""
    await st.charger.power(1, POWER_W)
    await st.charger.plug(1)
    await st.wait_connector(1, ("awaiting_card",))
    await st.wait_terminal(("WAIT_CARD",))
    await st.psp.tap_emv(**card(n))
    await st.wait_energy(1, energy_wh)


async def unplug_and_settle(st: Station, n: int) -> dict[str, Any]:
    """Unplug, wait for the Commit of card ``n``'s session; returns its journal payment."""
    await st.charger.unplug(1)
    mine = card(n)["pan"]
    sims = await st.wait_sim_sessions(
        lambda ss: any(s["card"].get("masked_pan") == mine and s["status"] == "committed" for s in ss),
        what=f"the session of card {n} committed",
        within=15,
    )
    (sim,) = [s for s in sims if s["card"].get("masked_pan") == mine]
    journal = await st.wait_until_journal_closed(within=15)
    (payment,) = [p for p in journal if p.get("terminal_session_id") == sim["session_id"]]
    assert sim["committed_minor"] == payment["final_minor"], (sim, payment)
    assert settlement_problems(await st.psp.sessions()) == []
    return payment


def upstream(st: Station, suffix: str) -> list[dict[str, Any]]:
    assert st.capture is not None
    topic = f"{st.upstream_prefix}/{suffix}"
    return [m.payload for m in st.capture.messages if m.topic == topic and isinstance(m.payload, dict)]


async def receipt_and_ended(st: Station, session_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The receipt and the ``session.ended`` event of ``session_id`` as the back office got them."""

    async def both() -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        receipt = next((r for r in upstream(st, "receipts") if r.get("session_id") == session_id), None)
        ended = next(
            (
                e
                for e in upstream(st, "connectors/1/events")
                if e.get("event") == "session.ended" and e.get("session_id") == session_id
            ),
            None,
        )
        return receipt, ended

    receipt, ended = await wait_until(
        both, lambda pair: None not in pair, what=f"receipt and session.ended of {session_id}", within=10
    )
    assert receipt is not None
    assert ended is not None
    return receipt, ended


def journal_file(st: Station) -> Path:
    return st.state_dir / "journal.sqlite3"


def station_tariff_row(st: Station) -> tuple[str, str] | None:
    conn = sqlite3.connect(f"{journal_file(st).as_uri()}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT fingerprint, configured_fingerprint FROM station_tariff").fetchone()
        return None if row is None else (str(row[0]), str(row[1]))
    finally:
        conn.close()


def start_line(st: Station) -> str:
    """The last "tariff at start" line of the agent's log (one per start)."""
    lines = [line for line in st.agent.proc.log_text().splitlines() if "tariff at start" in line]
    assert lines, "no 'tariff at start' line"
    return lines[-1]


# --- the tests ------------------------------------------------------------------------------------


@pytest.mark.req("ERR-5", "START-8")
async def test_req_err_5_set_tariff_survives_a_sigkill_and_restart(station_factory: StationFactory) -> None:
    async with station(station_factory) as (st, bo):
        configured = st.tariff()
        new = {**configured, "energy_per_kwh": NEW_PRICE}
        reply = await set_tariff(bo, new)
        fingerprint = reply["data"]["fingerprint"]
        await restart_after_kill(st, bo)
        assert "the tariff of set_tariff applies" in start_line(st)
        assert f"fingerprint={fingerprint[:12]}" in start_line(st)
        await charge(st, 1)
        payment = await unplug_and_settle(st, 1)
        assert payment["tariff_fingerprint"] == fingerprint
        assert payment["final_minor"] == expected_cost_minor(new, payment["energy_wh"]), payment
        assert payment["final_minor"] != expected_cost_minor(configured, payment["energy_wh"])


@pytest.mark.req("STOP-8", "ERR-5")
async def test_req_stop_8_a_session_across_set_tariff_and_a_restart_is_priced_by_its_start_tariff(
    station_factory: StationFactory,
) -> None:
    """A session charges under the configured tariff; a set_tariff arrives; the agent is SIGKILLed
    and restarted; the resumed session is committed, receipted and reported (``session.ended``)
    at its start tariff; the connector's next session is priced by the new one."""
    async with station(station_factory) as (st, bo):
        configured = st.tariff()
        new = {**configured, "energy_per_kwh": NEW_PRICE}
        await charge(st, 1)
        await set_tariff(bo, new)
        await st.wait_energy(1, 200)  # meter values journaled while the new tariff is the station's
        await restart_after_kill(st, bo)
        await st.wait_charger(1, lambda s: s["enabled"], what="charging resumed after the restart")
        await st.wait_energy(1, 200)
        first = await unplug_and_settle(st, 1)
        assert first["recovered"] is True
        energy = first["energy_wh"]
        assert first["final_minor"] == expected_cost_minor(configured, energy), first
        assert first["final_minor"] != expected_cost_minor(new, energy)
        receipt, ended = await receipt_and_ended(st, first["payment_id"])
        assert receipt["total_minor"] == ended["amount_minor"] == first["final_minor"]  # STOP-8

        await charge(st, 2)
        second = await unplug_and_settle(st, 2)
        assert second["final_minor"] == expected_cost_minor(new, second["energy_wh"]), second
        assert second["tariff_fingerprint"] != first["tariff_fingerprint"]
        receipt, ended = await receipt_and_ended(st, second["payment_id"])
        assert receipt["total_minor"] == ended["amount_minor"] == second["final_minor"]
        sim, journal = await st.wait_settled()
        assert journal_problems(journal, sim) == []


@pytest.mark.req("ERR-5")
async def test_req_err_5_a_changed_configured_tariff_wins_over_the_journaled_one(
    station_factory: StationFactory,
) -> None:
    async with station(station_factory) as (st, bo):
        configured = st.tariff()
        await set_tariff(bo, {**configured, "energy_per_kwh": NEW_PRICE})
        assert station_tariff_row(st) is not None
        await st.agent.stop()
        changed = {**configured, "energy_per_kwh": "0.45"}
        write_tariff(st, changed)
        await st.agent.start()
        await st.wait_ready()
        await bo.wait_connected()
        assert "the configured tariff changed since set_tariff; the configured tariff applies" in start_line(
            st
        )
        assert station_tariff_row(st) is None
        await charge(st, 1)
        payment = await unplug_and_settle(st, 1)
        assert payment["final_minor"] == expected_cost_minor(changed, payment["energy_wh"]), payment


@pytest.mark.req("UP-3", "ERR-5")
async def test_an_invalid_set_tariff_is_answered_with_its_path_and_changes_nothing(
    station_factory: StationFactory,
) -> None:
    """Bad tariffs in each form get an error result naming the field; nothing is journaled, nothing
    applies — not now, not after a restart (the bare OCPI case needs the tariff rewrite)."""
    async with station(station_factory) as (st, bo):
        configured = st.tariff()
        bad_ocpi = ocpi_tariff(step_size=0)
        for tariff, code, where in [
            ({**configured, "energy_per_kwh": "-1"}, "invalid_value", "tariff.energy_per_kwh: "),
            ({**configured, "fee": "1"}, "unknown_field", "unknown field 'tariff.fee'"),
            ({"ocpi": OCPI, "timezone": "Mars/Olympus"}, "invalid_value", "tariff.timezone: "),
            (bad_ocpi, "invalid_value", "tariff.elements[0].price_components[0].step_size: "),
            ([configured], "invalid_type", "tariff: "),
        ]:
            result = await bo.command("set_tariff", tariff=tariff)
            assert (result["status"], result["code"]) == ("error", code), result
            assert result["reason"].startswith(where), result
        assert "tariff set" not in st.agent.proc.log_text()
        assert station_tariff_row(st) is None
        await restart_after_kill(st, bo)
        assert "the configured tariff applies" in start_line(st)
        await charge(st, 1)
        payment = await unplug_and_settle(st, 1)
        assert payment["final_minor"] == expected_cost_minor(configured, payment["energy_wh"]), payment


@pytest.mark.req("START-8", "ERR-5")
async def test_an_ocpi_tariff_from_ocpi_file_prices_sessions_and_a_bare_ocpi_set_tariff_survives(
    station_factory: StationFactory,
) -> None:
    """``tariff: {ocpi_file: tariffs/t1.json, timezone: Europe/Amsterdam}`` (relative to the config
    file's directory) prices the session; a bare OCPI Tariff by ``set_tariff`` takes that timezone
    and survives a SIGKILL (needs the tariff rewrite's OCPI forms)."""
    files = {"t1.json": json.dumps(OCPI, indent=2)}
    tariff = {"ocpi_file": "t1.json", "timezone": "Europe/Amsterdam", "minor_unit_digits": 2}
    async with station(station_factory, tariff=tariff, files=files) as (st, bo):
        inline = {"ocpi": OCPI, "timezone": "Europe/Amsterdam", "minor_unit_digits": 2}
        code, _, err = await st.agent.cli("check-config", str(st.config_path))
        assert code == 0, err
        await charge(st, 1)
        first = await unplug_and_settle(st, 1)
        assert first["final_minor"] == expected_cost_minor(inline, first["energy_wh"]), first

        dearer = ocpi_tariff("t2", "0.50")
        reply = await set_tariff(bo, dearer)
        await restart_after_kill(st, bo)
        assert "the tariff of set_tariff applies" in start_line(st)
        await charge(st, 2)
        second = await unplug_and_settle(st, 2)
        assert second["tariff_fingerprint"] == reply["data"]["fingerprint"]
        expected = {"ocpi": dearer, "timezone": "Europe/Amsterdam", "minor_unit_digits": 2}
        assert second["final_minor"] == expected_cost_minor(expected, second["energy_wh"]), second
        assert second["final_minor"] != expected_cost_minor(inline, second["energy_wh"])
