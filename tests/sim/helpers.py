"""A raw, codec-level PSP host for testing the simulator (no driver involved)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

from drivers.psp import messages as m
from drivers.psp.codec import Frame, FrameDecoder
from drivers.transport import Transport, memory_pair, open_transport
from hil.psp_sim import SimConfig, Simulator

Kind = Literal["memory", "tcp", "pty"]
HASH = "A1B2C3D4E5F60718293A4B5C6D7E8F9012345678"
PAN = "476173******0010"


class RawHost:
    """Sends requests and reads frames with the shared codec; keeps every frame it reads."""

    def __init__(self, transport: Transport, wire: m.WireFormat) -> None:
        self.transport = transport
        self.wire = wire
        self.decoder = FrameDecoder()  # preamble 0xAA, magic 0x3C (what the simulator sends)
        self._frames: list[Frame] = []
        self.chunks: list[bytes] = []
        self.eof = False

    async def send(self, request: m.Request | bytes) -> None:
        data = request if isinstance(request, bytes) else request.to_bytes(self.wire)
        await self.transport.write(data)

    async def frame(self, wait_s: float = 1.0) -> Frame:
        async with asyncio.timeout(wait_s):
            while not self._frames:
                data = await self.transport.read()
                if not data:
                    self.eof = True
                    raise ConnectionError("link closed")
                self.chunks.append(data)
                self._frames.extend(self.decoder.feed(data))
        return self._frames.pop(0)

    async def raw(self, wait_s: float = 1.0) -> bytes:
        return (await self.frame(wait_s)).to_bytes()

    async def message(self, wait_s: float = 1.0, expecting: m.Request | None = None) -> m.Message:
        return m.decode_response(await self.frame(wait_s), self.wire, expecting=expecting)

    async def call(self, request: m.Request, wait_s: float = 1.0) -> m.Message:
        await self.send(request)
        return await self.message(wait_s, expecting=request)

    async def silent(self, duration: float = 0.1) -> bool:
        """True when nothing arrives for ``duration`` seconds."""
        try:
            await self.frame(duration)
        except TimeoutError:
            return True
        return False

    async def closed(self, wait_s: float = 1.0) -> bool:
        """True when the peer closes the link within ``wait_s`` (frames before that are skipped)."""
        try:
            while True:
                await self.frame(wait_s)
        except ConnectionError:
            return True
        except TimeoutError:
            return False

    async def setup(
        self,
        options: m.ProtocolOption = m.ProtocolOption.NONE,
        timeout_s: int = 172_800,
        action: m.TimeoutAction = m.TimeoutAction.VOID,
    ) -> None:
        """§7.1: Synchronize → Protocol → Setup → Enable."""
        assert isinstance(await self.call(m.Synchronize()), m.SynchronizeEcho)
        echo = await self.call(m.Protocol(3, options))
        assert isinstance(echo, m.ProtocolEcho)
        if m.ProtocolOption.EXTENDED_BLOCK in echo.options:
            self.wire = m.WireFormat(
                family=self.wire.family,
                extended=True,
                commit_order=self.wire.commit_order,
                read_card_header=self.wire.read_card_header,
                status_response_header=self.wire.status_response_header,
                rfid_uid_tag=self.wire.rfid_uid_tag,
            )
        assert await self.call(m.Setup(timeout_s, action)) == m.Result(True)
        assert await self.call(m.Enable()) == m.Result(True)

    async def status(self) -> m.GetStatusResponse:
        reply = await self.call(m.GetStatus())
        assert isinstance(reply, m.GetStatusResponse), reply
        return reply

    async def read_card(self, amount_minor: int, sim: Simulator, card: object = None) -> m.Message:
        """Start Session, tap (``card`` or a default EMV card), return the Card Read (skipping events)."""
        from hil.psp_sim import Card

        await self.send(m.StartSession(amount_minor, 10))
        await _until(lambda: sim.state is m.PspState.WAIT_CARD)
        sim.tap(card if isinstance(card, Card) else Card.emv(card_hash=HASH, masked_pan=PAN))
        return await self.next_non_event()

    async def next_non_event(self, wait_s: float = 1.0) -> m.Message:
        while True:
            msg = await self.message(wait_s)
            if not isinstance(msg, m.TransactionEvent):
                return msg

    async def approve(self, amount_minor: int, sim: Simulator, card: object = None) -> m.Message:
        card_read = await self.read_card(amount_minor, sim, card)
        assert isinstance(card_read, m.CardRead), card_read
        await self.send(m.AuthSession())
        return await self.next_non_event()


async def _until(predicate: object, wait_s: float = 1.0) -> None:
    assert callable(predicate)
    async with asyncio.timeout(wait_s):
        while not predicate():  # noqa: ASYNC110 - polls the simulator's synchronous state
            await asyncio.sleep(0.002)


until = _until


def fast_config(family: str = "apollo", **changes: object) -> SimConfig:
    """Short timers for tests (tens of ms), never the real spec values."""
    base: dict[str, object] = {
        "family": family,
        "idle_close_s": None,
        "auth_delay_s": 0.0,
        "card_decision_s": 5.0,
        "card_detect_timeout_s": 5.0,
        "seed": 1234,
    }
    base.update(changes)
    return SimConfig(**base)  # type: ignore[arg-type]


@asynccontextmanager
async def connected(config: SimConfig, kind: Kind = "memory") -> AsyncIterator[tuple[Simulator, RawHost]]:
    """A simulator and a raw host connected over a memory pair, real TCP or a pty."""
    async with Simulator(config) as sim:
        transport: Transport
        if kind == "memory":
            ours, theirs = memory_pair(f"sim-test-{id(sim)}")
            await sim.serve_transport(theirs, idle_close=bool(config.idle_close_s))
            transport = ours
        elif kind == "tcp":
            port = await sim.serve_tcp("127.0.0.1", 0)
            transport = await open_transport(f"tcp://127.0.0.1:{port}")
        else:
            path = await sim.serve_pty()
            transport = await open_transport(f"serial://{path}")
        host = RawHost(transport, config.wire())
        try:
            yield sim, host
        finally:
            await transport.close()
