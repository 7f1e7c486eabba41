"""The simulator's granted Protocol options: ``SimConfig.grant_options``, ``--grant-options`` (§5.3)."""

from __future__ import annotations

import json

import pytest

from drivers.psp import messages as m
from hil.psp_sim import SimConfig
from hil.psp_sim.__main__ import build_parser, config_from_args
from tests.sim.helpers import connected, fast_config

ALL = m.KNOWN_OPTIONS
NO_EXTENDED = m.ProtocolOption(0x1B)


@pytest.mark.parametrize(
    ("family", "grant", "echoed"),
    [
        ("apollo", ALL, ALL),  # the default: every known option
        ("apollo", NO_EXTENDED, NO_EXTENDED),
        ("apollo", m.ProtocolOption.AUTH_DOL, m.ProtocolOption.AUTH_DOL),
        ("p6x", ALL, ALL & ~m.APOLLO_ONLY_OPTIONS),  # a P6X masks the Apollo-only bits as before
        ("p6x", m.ProtocolOption(0x1A), m.ProtocolOption.AUTH_DOL),
    ],
)
async def test_echo_grants_only_the_configured_options(
    family: str, grant: m.ProtocolOption, echoed: m.ProtocolOption
) -> None:
    async with connected(fast_config(family, grant_options=grant)) as (sim, host):
        assert await host.call(m.Synchronize()) == m.SynchronizeEcho()
        # every known bit and a reserved one asked for: the echo says what is granted
        assert await host.call(m.Protocol(3, ALL | m.ProtocolOption(0x80))) == m.ProtocolEcho(3, echoed)
        assert sim.protocol_options == echoed
        assert sim.extended is (m.ProtocolOption.EXTENDED_BLOCK in echoed)


async def test_without_0x04_the_simulator_keeps_the_normal_format() -> None:
    async with connected(fast_config("apollo", grant_options=NO_EXTENDED)) as (sim, host):
        await host.setup(m.ProtocolOption.EXTENDED_BLOCK | m.ProtocolOption.DETAILED_RESULTS)
        assert not host.wire.extended  # the echo masked 0x04
        assert not sim.extended
        await host.send(m.GetStatus())
        status = await host.frame()
        assert not status.extended
        assert m.GetStatusResponse.from_payload(status.payload).state is m.PspState.ENABLED
        # a host that sends an extended frame anyway is still read, and answered normally
        await host.send(m.GetStatus().to_bytes(m.WireFormat(extended=True)))
        assert not (await host.frame()).extended
        long_screen = m.UiRequest("dialog", (("message", "x" * 300),))  # too long for normal frames
        await host.send(long_screen.to_bytes(m.WireFormat(extended=True)))
        assert await host.message() == m.Result(True)
        assert sim.current_screen == long_screen


async def test_granted_0x04_switches_after_the_echo() -> None:
    async with connected(fast_config("apollo")) as (sim, host):
        await host.setup(m.ProtocolOption.EXTENDED_BLOCK)
        assert host.wire.extended
        await host.send(m.GetStatus())
        assert (await host.frame()).extended
        assert json.loads(sim.control("state"))["grant_options"] == 0x1F


def test_cli_flag_default_and_help() -> None:
    parser = build_parser()
    assert config_from_args(parser.parse_args([])).grant_options == ALL
    config = config_from_args(parser.parse_args(["--grant-options", "0x1B"]))
    assert config.grant_options == NO_EXTENDED
    assert config_from_args(parser.parse_args(["--grant-options", "27"])).grant_options == NO_EXTENDED
    text = parser.format_help()
    assert "--grant-options MASK" in text
    assert "0x04 extended block format" in " ".join(text.split())


@pytest.mark.parametrize("value", ["zz", "-1", "0x100000000"])
def test_cli_flag_rejects_what_is_no_option_bitfield(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--grant-options", value])
    assert "--grant-options" in capsys.readouterr().err


def test_config_rejects_a_mask_wider_than_32_bits() -> None:
    with pytest.raises(ValueError, match="32-bit"):
        SimConfig(grant_options=m.ProtocolOption(0x1_0000_0000))
