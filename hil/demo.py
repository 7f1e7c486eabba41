"""``python -m hil.demo``: a complete paid card session against the built-in PSP terminal simulator.

The simulator serves PSP on a real TCP socket (127.0.0.1, a free port). The driver connects, runs
the setup sequence (Synchronize → Protocol → Setup with timeout action *void* → Enable), starts a
card read for a 25.00 pre-authorization, a card is tapped on the simulator, the driver authorizes
it, and the charging session is settled with a Commit of the final amount. Every frame on the wire
is printed decoded, with its bytes, followed by the simulator's sessions table.

This is the issue-2 stage of the demo (driver + simulator); the running agent with the charger
simulator and Mosquitto takes this place once the daemon exists.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import TextIO

from drivers.psp import messages as m
from drivers.psp.codec import PREAMBLE_HOST, FrameDecoder
from drivers.psp.profile import profile_for
from drivers.terminal import Approved, CardPresented, PartiallyApproved, PspTerminal
from drivers.transport import Transport, open_transport
from hil.psp_sim import Card, SimConfig, Simulator

PRE_AUTH_MINOR = 2500  # 25.00 reserved at the start (the strategy "fixed amount", AMT-1)
FINAL_MINOR = 1234  # 12.34: what the delivered energy cost


class TappingTransport:
    """A transport that prints every frame it carries, decoded (the field tool, live)."""

    def __init__(self, inner: Transport, wire: m.WireFormat, out: TextIO) -> None:
        self._inner = inner
        self._wire = wire
        self._out = out
        self._tx = FrameDecoder(preambles=frozenset({PREAMBLE_HOST}))
        self._rx = FrameDecoder()
        self._last_request: m.Request | None = None

    @property
    def description(self) -> str:
        return self._inner.description

    async def read(self) -> bytes:
        data = await self._inner.read()
        for frame in self._rx.feed(data):
            message = m.decode_response(frame, self._wire, expecting=self._last_request)
            self._print("terminal → host", message, frame.to_bytes())
        return data

    async def write(self, data: bytes) -> None:
        for frame in self._tx.feed(data):
            request = m.decode_request(frame, self._wire)
            self._last_request = request if isinstance(request, m.Request) else None
            self._print("host → terminal", request, frame.to_bytes())
        await self._inner.write(data)

    async def close(self) -> None:
        await self._inner.close()

    def _print(self, direction: str, message: m.Message, raw: bytes) -> None:
        fields = json.dumps(m.describe(message), ensure_ascii=False)
        print(f"  {direction}  {message.name:<24} {fields}", file=self._out)
        print(f"  {'':15}  {raw.hex(' ').upper()}", file=self._out)


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


async def run_demo(family: str, out: TextIO) -> int:
    async with Simulator(SimConfig(family=family)) as sim:
        port = await sim.serve_tcp("127.0.0.1", 0)
        url = f"tcp://127.0.0.1:{port}"
        step(f"Payter {family} simulator listening on {url}; connecting and setting the terminal up")

        wire = profile_for(family).wire()

        async def tapping_opener(target: str) -> Transport:
            return TappingTransport(await open_transport(target), wire, out)

        terminal = PspTerminal(url, family, opener=tapping_opener)
        async with terminal:
            state = await terminal.wait_ready(10)
            step(f"terminal ready: {state}")

            step(f"Start Session: reserve {PRE_AUTH_MINOR / 100:.2f}, wait for a card")
            events = terminal.events()
            await terminal.start_card_read(PRE_AUTH_MINOR, reference=1)

            step("driver taps a VISA card on the simulator")
            sim.tap(Card.emv())
            card = None
            async with asyncio.timeout(10):
                async for event in events:
                    if isinstance(event, CardPresented):
                        card = event
                        break
            print(f"  card presented: {card!r}")

            step("Auth Session: pre-authorize the reserved amount")
            outcome = await terminal.authorize()
            print(f"  outcome: {outcome!r}")
            if not isinstance(outcome, Approved | PartiallyApproved):
                print("  not approved: nothing to settle", file=sys.stderr)
                return 1

            step(f"… the car charges; unplugged; Commit Session {FINAL_MINOR / 100:.2f} (≤ authorized)")
            await terminal.commit(outcome.session_id, FINAL_MINOR)

            step("the simulator's sessions table")
            print(json.dumps(sim.sessions_json(), indent=2))
            committed = [s for s in sim.sessions_json() if s.get("status") == "committed"]
            ok = len(committed) == 1 and committed[0].get("committed_minor") == FINAL_MINOR
            step("paid session complete: one commit of 12.34, nothing left authorized" if ok else "FAILED")
            return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hil.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--family", choices=["apollo", "p6x"], default="apollo")
    args = parser.parse_args(argv)
    return asyncio.run(run_demo(args.family, sys.stdout))


if __name__ == "__main__":
    sys.exit(main())
