"""Simulator features the fuzzer's worlds need: targeted drop/corrupt on the terminal, and a charger
meter register that does not start at 0."""

from __future__ import annotations

import json

import pytest

from drivers.psp import messages as m
from hil.charger_sim import ChargerSimulator
from hil.charger_sim.__main__ import _parser
from tests.sim.helpers import connected, fast_config

pytestmark = pytest.mark.req("ERR-7")


async def test_drop_only_takes_replies_to_that_request() -> None:
    async with connected(fast_config("apollo")) as (sim, host):
        await host.setup()
        assert sim.control("fault drop 1 only=GetStatus") == "ok"
        assert json.loads(sim.control("faults"))["drop_only"] == "GetStatus"
        assert await host.call(m.Disable()) == m.Result(True)  # another request passes, count kept
        assert await host.call(m.Enable()) == m.Result(True)
        await host.send(m.GetStatus())
        assert await host.silent(0.2)  # dropped: the host would time out (§9.1)
        assert json.loads(sim.control("faults"))["drop"] == 0
        assert isinstance(await host.call(m.GetStatus()), m.GetStatusResponse)  # once only


async def test_corrupt_only_hits_replies_to_that_request() -> None:
    async with connected(fast_config("apollo")) as (sim, host):
        await host.setup()
        assert sim.control("fault corrupt only=GetStatus") == "ok"  # the count defaults to 1
        assert await host.call(m.Disable()) == m.Result(True)
        before = host.decoder.stats.checksum_errors
        await host.send(m.GetStatus())
        assert await host.silent(0.2)  # the host's decoder drops the frame with the bad checksum
        assert host.decoder.stats.checksum_errors == before + 1
        assert isinstance(await host.call(m.GetStatus()), m.GetStatusResponse)


async def test_untargeted_drop_and_bad_targets() -> None:
    async with connected(fast_config("apollo")) as (sim, host):
        await host.setup()
        assert sim.control("fault drop 1") == "ok"  # the historic form: the next frame, whatever it is
        await host.send(m.Disable())
        assert await host.silent(0.2)
        for bad in (
            "fault drop 1 only=NoSuchRequest",
            "fault corrupt 1 2 only=GetStatus",
            "fault drop only=x y",
        ):
            assert sim.control(bad).startswith("error: "), bad
        assert sim.control("fault corrupt 2 only=CommitSession") == "ok"
        faults = json.loads(sim.control("faults"))
        assert (faults["corrupt"], faults["corrupt_only"]) == (2, "CommitSession")
        assert sim.control("fault clear") == "ok"
        assert json.loads(sim.control("faults"))["corrupt_only"] is None


def test_charger_meter_register_can_start_above_zero() -> None:
    sim = ChargerSimulator("mqtt://127.0.0.1:1", connectors=2, initial_energy_wh=54_321_000)
    state = sim.state(2)
    assert (state.energy_wh, state.session_start_wh, state.session_energy_wh) == (54_321_000, 54_321_000, 0)
    sim.plug(2)
    assert sim.state(2).session_start_wh == 54_321_000
    assert ChargerSimulator("mqtt://127.0.0.1:1").state(1).energy_wh == 0  # the default is unchanged
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="initial_energy_wh"):
            ChargerSimulator("mqtt://127.0.0.1:1", initial_energy_wh=bad)  # type: ignore[arg-type]
    assert _parser().parse_args(["--initial-energy-wh", "1234"]).initial_energy_wh == 1234
    assert _parser().parse_args([]).initial_energy_wh == 0
