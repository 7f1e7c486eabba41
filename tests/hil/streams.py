"""Hand-written upstream streams for the checker tests: a builder that plays a station's outbox
(``msg_id``, per-session ``seq``, ``offline`` while disconnected, delivery after the reconnection)
and :func:`valid_stream`, one run that exercises every rule's allowed paths — as contract 1.1.0
(the default) or as 1.0.0 (the session paths docs/upstream.md describes) does them."""

from __future__ import annotations

import copy
import itertools
from datetime import UTC, datetime
from typing import Any, Final

PREFIX: Final = "evpay/v1/ST-1"
BASE_T: Final = 1_767_261_600.0  # 2026-01-01T10:00:00Z
DELIVERY_S: Final = 0.005

Payload = dict[str, Any]
Line = dict[str, Any]


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Stream:
    """A station's upstream as a capture would record it. Time advances only by :meth:`tick`."""

    def __init__(self, prefix: str = PREFIX, start: float = BASE_T, contract: str = "1.1.0") -> None:
        self.prefix = prefix
        self.contract = contract
        self.now = start
        self.lines: list[Line] = []
        self.connected = False
        self._pending: list[tuple[str, Payload]] = []
        self._ids = itertools.count(1)
        self._seq: dict[tuple[str, str], int] = {}
        self._last_t = start

    # -- time, connection, markers -----------------------------------------------------------------

    def tick(self, seconds: float = 1.0) -> Stream:
        self.now += seconds
        return self

    def marker(self, name: str) -> Stream:
        self.lines.append({"t": self.now, "marker": name})
        self._last_t = max(self._last_t, self.now)
        return self

    def status(self, state: str, *, retain: bool = False) -> None:
        payload: Payload = {"state": state}
        if state == "online":
            payload.update(version="0.1.0", contract=self.contract, started_at=iso(self.now))
        self.deliver(f"{self.prefix}/status", payload, retain=retain)

    def birth(self, *, retain: bool = False) -> Stream:
        """The agent (re)connects: birth, then the outbox backlog in creation order."""
        self.connected = True
        self.status("online", retain=retain)
        pending, self._pending = self._pending, []
        for topic, payload in pending:
            self.deliver(topic, payload)
        return self

    def will(self) -> Stream:
        """The broker publishes the agent's last will (the agent died)."""
        self.connected = False
        self.status("offline")
        return self

    def broker_down(self) -> Stream:
        self.connected = False
        return self.marker("broker_down")

    def deliver(self, topic: str, payload: Payload, *, retain: bool = False) -> Line:
        stamp = max(self.now, self._last_t) + DELIVERY_S
        self._last_t = stamp
        line = {"t": stamp, "topic": topic, "retain": retain, "qos": 1, "payload": payload}
        self.lines.append(line)
        return line

    def redeliver(self, payload: Payload) -> Line:
        """An identical re-delivery (at least once) of an already delivered message."""
        original = next(line for line in self.lines if line.get("payload") is payload)
        return self.deliver(original["topic"], copy.deepcopy(payload))

    # -- the outbox --------------------------------------------------------------------------------

    def msg_id(self) -> str:
        n = next(self._ids)
        return f"{n:08x}-0000-4000-8000-{n:012x}"

    def _outbox(self, topic: str, payload: Payload) -> Payload:
        if self.connected:
            self.deliver(topic, payload)
        else:
            self._pending.append((topic, payload))
        return payload

    def _next_seq(self, stream: str, session_id: str) -> int:
        key = (stream, session_id)
        seq = self._seq.get(key, 0)
        self._seq[key] = seq + 1
        return seq

    def event(self, cid: int, sid: str, name: str, **fields: Any) -> Payload:
        payload: Payload = {
            "event": name,
            "msg_id": self.msg_id(),
            "connector_id": cid,
            "session_id": sid,
            "seq": self._next_seq("events", sid),
            "ts": iso(self.now),
            "offline": not self.connected,
            **fields,
        }
        return self._outbox(f"{self.prefix}/connectors/{cid}/events", payload)

    def meter(self, cid: int, sid: str, *, meter_wh: int, energy_wh: int, power_w: int = 11000) -> Payload:
        payload: Payload = {
            "msg_id": self.msg_id(),
            "connector_id": cid,
            "session_id": sid,
            "seq": self._next_seq("meter", sid),
            "ts": iso(self.now),
            "meter_wh": meter_wh,
            "energy_wh": energy_wh,
            "power_w": power_w,
            "cost_minor": energy_wh * 35 // 100,
            "offline": not self.connected,
        }
        return self._outbox(f"{self.prefix}/connectors/{cid}/meter", payload)

    def alarm(self, name: str, state: str) -> Payload:
        payload: Payload = {
            "msg_id": self.msg_id(),
            "alarm": name,
            "state": state,
            "severity": "warning",
            "connector_id": None,
            "session_id": None,
            "terminal_session_id": None,
            "message": f"{name} {state}",
            "data": {},
            "ts": iso(self.now),
        }
        return self._outbox(f"{self.prefix}/alarms", payload)

    def receipt(
        self,
        cid: int,
        sid: str,
        status: str,
        *,
        method: str = "emv",
        lines: tuple[tuple[str, int], ...] = (),
        captured_minor: int | None = None,
        authorized_minor: int | None = None,
        terminal_session_id: str | None = None,
        energy_wh: int = 0,
    ) -> Payload:
        items = [_line(kind, gross, energy_wh) for kind, gross in lines]
        payload: Payload = {
            "msg_id": self.msg_id(),
            "receipt_id": sid,
            "station_id": "ST-1",
            "connector_id": cid,
            "session_id": sid,
            "status": status,
            "method": method,
            "issued_at": iso(self.now),
            "started_at": iso(self.now - 60),
            "stopped_at": iso(self.now),
            "duration_s": 60,
            "meter_start_wh": None,
            "meter_stop_wh": None,
            "energy_wh": energy_wh,
            "currency": "EUR",
            "minor_unit_digits": 2,
            "prices_include_vat": True,
            "vat_rate_percent": "21",
            "lines": items,
            "net_minor": sum(item["net_minor"] for item in items),
            "vat_minor": sum(item["vat_minor"] for item in items),
            "total_minor": sum(item["gross_minor"] for item in items),
            "authorized_minor": authorized_minor,
            "captured_minor": captured_minor,
            "masked_pan": "411111******1111" if method == "emv" else None,
            "terminal_session_id": terminal_session_id,
        }
        return self._outbox(f"{self.prefix}/receipts", payload)

    # -- whole sessions (the agent's documented paths) -----------------------------------------------

    def emv_session(
        self,
        cid: int,
        sid: str,
        tsid: str,
        *,
        authorized: int = 5000,
        readings: tuple[int, ...] = (1000, 2000, 3000),
        meter_start: int = 10_000,
        increment_to: int | None = None,
        partial: bool = False,
    ) -> dict[str, Payload]:
        """Authorize, start, meter values, (increment), capture, end, receipt — captured at the
        tariff's price or at the authorized cap (then with a cap_adjustment line)."""
        name = "payment.partially_approved" if partial else "payment.authorized"
        out = {"auth": self.event(cid, sid, name, terminal_session_id=tsid, authorized_minor=authorized)}
        self.tick()
        out["started"] = self.event(cid, sid, "session.started", method="emv", meter_wh=meter_start)
        for energy in readings:
            self.tick()
            out[f"meter{energy}"] = self.meter(cid, sid, meter_wh=meter_start + energy, energy_wh=energy)
        limit = authorized
        if increment_to is not None:
            self.tick()
            out["increment"] = self.event(
                cid, sid, "payment.incremented", terminal_session_id=tsid, authorized_minor=increment_to
            )
            limit = increment_to
        energy = readings[-1] if readings else 0
        cost = energy * 35 // 100
        amount = min(cost, limit)
        self.tick()
        out["captured"] = self.event(
            cid, sid, "payment.captured", terminal_session_id=tsid, amount_minor=amount
        )
        out["ended"] = self.event(
            cid, sid, "session.ended", reason="tap", energy_wh=energy, cost_minor=cost, amount_minor=amount
        )
        lines: tuple[tuple[str, int], ...] = (("energy", cost),)
        if amount < cost:
            lines += (("cap_adjustment", amount - cost),)
        out["receipt"] = self.receipt(
            cid, sid, "captured", lines=lines, captured_minor=amount, authorized_minor=limit,
            terminal_session_id=tsid, energy_wh=energy,
        )  # fmt: skip
        return out


def _line(kind: str, gross: int, energy_wh: int) -> Payload:
    net = gross * 100 // 121
    if kind == "cap_adjustment":
        quantity, unit, price, price_unit = 1, "session", f"{gross / 100:.2f}", "session"
    else:
        quantity, unit, price, price_unit = energy_wh, "Wh", "0.35", "kWh"
    return {
        "kind": kind,
        "band": "",
        "quantity": quantity,
        "unit": unit,
        "unit_price": price,
        "price_unit": price_unit,
        "net_minor": net,
        "vat_minor": gross - net,
        "gross_minor": gross,
    }


def valid_stream(contract: str = "1.1") -> Stream:
    """One run that keeps the contract on every allowed path: EMV captured (with an increment),
    RFID account, a declined card, an EMV payment voided on the plug-in timeout and an RFID
    authorization that timed out (no session.started: 1.1 has no session.ended either, 1.0 has one
    with nothing delivered), a partial approval created offline during a broker outage and captured
    at its cap, an agent crash with a restored and resumed session (1.1: session.updated ``resumed``;
    1.0: session.updated ``restored`` and a second session.started), identical re-deliveries,
    alarms."""
    v10 = contract == "1.0"
    s = Stream(contract="1.0.0" if v10 else "1.1.0")
    s.marker("capture_up").tick(0.1).birth().tick(3)
    s.emv_session(1, "S-A", "T-A", authorized=5000, increment_to=9000, readings=(1000, 2000, 3000))
    s.tick(3)
    # RFID, billed to the account: no terminal settlement
    s.event(2, "S-B", "payment.authorized", terminal_session_id=None, authorized_minor=None)
    s.tick()
    s.event(2, "S-B", "session.started", method="rfid", meter_wh=None)  # register unknown at start
    s.tick()
    s.meter(2, "S-B", meter_wh=500, energy_wh=500)
    s.tick()
    s.event(2, "S-B", "session.ended", reason="unplug", energy_wh=500, cost_minor=175, amount_minor=175)
    s.receipt(2, "S-B", "account", method="rfid", lines=(("energy", 175),), energy_wh=500)
    s.tick(3)
    # a declined card
    s.event(1, "S-C", "payment.declined", outcome="declined", reason="insufficient funds")
    s.receipt(1, "S-C", "declined")
    s.tick(3)
    # authorized, never plugged in: voided on the plug-in timeout, nothing delivered
    s.event(2, "S-D", "payment.authorized", terminal_session_id="T-D", authorized_minor=5000)
    s.tick(5)
    s.event(2, "S-D", "payment.voided", terminal_session_id="T-D")
    if v10:
        s.event(2, "S-D", "session.ended", reason="timeout", energy_wh=0, cost_minor=0, amount_minor=0)
    s.receipt(2, "S-D", "voided", terminal_session_id="T-D")
    s.tick(3)
    # RFID accepted, never plugged in: nothing to settle, an account receipt of nothing
    s.event(1, "S-G", "payment.authorized", terminal_session_id=None, authorized_minor=2000)
    s.tick(5)
    if v10:
        s.event(1, "S-G", "session.ended", reason="timeout", energy_wh=0, cost_minor=0, amount_minor=0)
    s.receipt(1, "S-G", "account", method="rfid")
    s.tick(3)
    # a broker outage: the partial approval and its start are created offline
    s.broker_down().tick(3)
    s.alarm("terminal_offline", "raised")
    s.tick(3)
    s.event(1, "S-E", "payment.partially_approved", terminal_session_id="T-E", authorized_minor=800)
    s.tick(3)
    s.event(1, "S-E", "session.started", method="emv", meter_wh=20_000)
    s.tick(3)
    s.meter(1, "S-E", meter_wh=21_000, energy_wh=1000)
    s.tick(3).marker("broker_up").tick(1.5).birth().tick(3)
    s.alarm("terminal_offline", "cleared")
    s.tick(3)
    s.meter(1, "S-E", meter_wh=23_000, energy_wh=3000)
    s.tick(3)
    s.event(1, "S-E", "payment.captured", terminal_session_id="T-E", amount_minor=800)
    s.event(1, "S-E", "session.ended", reason="limit", energy_wh=3000, cost_minor=1050, amount_minor=800)
    s.receipt(
        1, "S-E", "captured", lines=(("energy", 1050), ("cap_adjustment", -250)), captured_minor=800,
        authorized_minor=800, terminal_session_id="T-E", energy_wh=3000,
    )  # fmt: skip
    s.tick(3)
    # an agent crash mid-session: restored, resumed (second session.started), then settled
    s.event(2, "S-F", "payment.authorized", terminal_session_id="T-F", authorized_minor=5000)
    s.tick()
    s.event(2, "S-F", "session.started", method="emv", meter_wh=30_000)
    s.tick()
    last = s.meter(2, "S-F", meter_wh=31_000, energy_wh=1000)
    s.tick().marker("agent_killed").tick(0.05).will().tick(3).marker("agent_started").tick(3)
    s.event(
        2, "S-F", "session.updated", reason="restored" if v10 else "resumed", resolution="resumed",
        terminal_session_id="T-F", method="emv", plugged=True, authorized_minor=5000,
    )  # fmt: skip
    if v10:
        s.event(2, "S-F", "session.started", method="emv", meter_wh=31_000)
    s.tick(3).birth()
    s.redeliver(last)  # not acknowledged before the crash: delivered again, the same bytes
    s.tick(3)
    s.meter(2, "S-F", meter_wh=32_000, energy_wh=2000)
    s.tick(3)
    s.event(2, "S-F", "payment.captured", terminal_session_id="T-F", amount_minor=700)
    ended = s.event(2, "S-F", "session.ended", reason="tap", energy_wh=2000, cost_minor=700, amount_minor=700)
    receipt = s.receipt(
        2, "S-F", "captured", lines=(("energy", 700),), captured_minor=700, authorized_minor=5000,
        terminal_session_id="T-F", energy_wh=2000,
    )  # fmt: skip
    s.tick(0.5)
    s.redeliver(ended)
    s.redeliver(receipt)
    s.tick(3)
    return s
