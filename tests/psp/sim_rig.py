"""The driver (PspTerminal) against the real simulator (hil.psp_sim) over TCP or a pty pair."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, TypeVar

from drivers.psp.profile import Profile, profile_for
from drivers.psp.session import TerminalSession
from drivers.terminal import PspTerminal, TerminalEvent
from hil.psp_sim import SimConfig, Simulator

# test-shortened timers (never slept through: every wait is bounded by asyncio.timeout)
FAST_TIMERS: dict[str, float] = {
    "other_s": 0.3,
    "auth_s": 1.0,
    "commit_void_s": 1.0,
    "start_session_window_s": 0.05,
    "keepalive_s": 1.0,
    "sync_retry_s": 0.05,
    "reconnect_min_s": 0.02,
    "reconnect_max_s": 0.2,
    "inter_byte_s": 0.1,
}
RECOVERY_S = 5.0  # acceptance 4: the link is back and enabled within 5 s

TRANSPORTS = ("tcp", "pty")
FAMILIES = ("apollo", "p6x")
MATRIX = [(t, f) for t in TRANSPORTS for f in FAMILIES]

E = TypeVar("E")


@dataclass
class Rig:
    sim: Simulator
    terminal: PspTerminal
    transport: str
    family: str

    @property
    def session(self) -> TerminalSession:
        return self.terminal.session

    async def next_event(self, kind: type[E], timeout_s: float = 3.0) -> E:
        """The next domain event of ``kind`` (others are skipped)."""
        async with asyncio.timeout(timeout_s):
            async for event in self.terminal.events():
                if isinstance(event, kind):
                    return event
        raise AssertionError(f"event stream ended before a {kind.__name__}")

    async def recovered(self, setups_before: int) -> None:
        """The link is set up again (one more setup) and enabled, within RECOVERY_S."""
        async with asyncio.timeout(RECOVERY_S):
            await self.session.state.wait_for(lambda s: s.ready and s.setups > setups_before)
            status = await self.session.get_status()
        assert status.state.name == "ENABLED"


def fast_profile(family: str, **timers: float) -> Profile:
    return profile_for(family).with_timeouts(**{**FAST_TIMERS, **timers})


@contextlib.asynccontextmanager
async def rig(
    transport: str, family: str, *, sim_config: dict[str, Any] | None = None, **timers: float
) -> AsyncIterator[Rig]:
    config = SimConfig(**{"family": family, "auth_delay_s": 0.01, "seed": 7, **(sim_config or {})})
    async with Simulator(config) as sim:
        if transport == "tcp":
            url = f"tcp://127.0.0.1:{await sim.serve_tcp('127.0.0.1', 0)}"
        else:
            url = f"serial://{await sim.serve_pty()}?baudrate=115200"
        terminal = PspTerminal(url, fast_profile(family, **timers), ready_timeout_s=RECOVERY_S)
        async with terminal:
            await terminal.wait_ready(RECOVERY_S)
            yield Rig(sim, terminal, transport, family)


def drain(events: list[TerminalEvent]) -> list[str]:
    return [type(e).__name__ for e in events]
