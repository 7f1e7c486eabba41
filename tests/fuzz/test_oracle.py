"""The fuzz oracle on hand-made evidence: the independent tariff agrees with docs/tariff.md (and with
the agent's own tariff, as a cross-check the fuzzer itself never makes), and each rule fires on the
breach it is for and stays quiet otherwise."""

from __future__ import annotations

import dataclasses
import random
import uuid
from fractions import Fraction
from typing import Any

import pytest

from agent.money.tariff import Tariff, tariff_config_from_builtins
from hil.fuzz.oracle import Evidence, IndependentTariff, PlugCycle, TapRecord, evaluate, round_half_up
from hil.fuzz.world import TariffWorld, generate
from hil.stream import MessageLine
from statemachines.pricing import Usage, UsageBucket, UsageKind

PREFIX = "fz/FZ-1"
T0 = 1_800_000_000.0


def test_round_half_up_ties_away_from_zero() -> None:
    assert [round_half_up(Fraction(n, 2)) for n in (-3, -1, 1, 3, 5)] == [-2, -1, 1, 2, 3]
    assert round_half_up(Fraction(97461, 1000)) == 97


def test_independent_tariff_follows_the_documented_examples() -> None:
    gross = IndependentTariff(TariffWorld("EUR", 2, True, "21", "0.39", "0", "charging", "0"))
    assert gross.line("energy", 2500)[2] == 98  # 2.5 kWh at 0.39 = 97.5 cents → 98
    assert gross.line("energy", 2499)[2] == 97
    twenty = IndependentTariff(TariffWorld("EUR", 2, True, "20", "6.03", "0", "charging", "0"))
    assert twenty.line("energy", 1000) == (503, 100, 603)  # net 5.025 → 5.03, VAT 1.00
    net = IndependentTariff(TariffWorld("EUR", 2, False, "21", "2.50", "0", "charging", "0"))
    assert net.line("energy", 1000) == (250, 53, 303)  # VAT 0.525 → 0.53
    assert net.line("energy", 0) == (0, 0, 0)


def test_independent_tariff_agrees_with_the_agent_on_random_worlds() -> None:
    rng = random.Random(5)
    for seed in range(1, 80):
        world = generate(seed).tariff
        ours = IndependentTariff(world)
        agent = Tariff(tariff_config_from_builtins(world.config()))
        for _ in range(20):
            wh, ms = rng.randrange(0, 200_000), rng.randrange(0, 7_200_000)
            usage = Usage(buckets=(UsageBucket("", UsageKind.CHARGING, energy_wh=wh, duration_ms=ms),))
            assert ours.total(wh, ms) == agent.cost_minor(usage), (world, wh, ms)


# --- hand-made evidence -----------------------------------------------------------------------------


def _world() -> Any:
    w = generate(1)
    tariff = TariffWorld("EUR", 2, True, "21", "0.39", "0", "charging", "0.35")
    session = dataclasses.replace(w.session, stop_modes=("unplug", "tap"))
    terminal = dataclasses.replace(w.terminal, family="apollo")
    return dataclasses.replace(w, tariff=tariff, session=session, terminal=terminal)


class Stream:
    def __init__(self) -> None:
        self.lines: list[MessageLine] = [MessageLine(T0, f"{PREFIX}/status", True, 1, {"state": "online"})]
        self.seq: dict[str, int] = {}

    def ts(self, t: float) -> str:
        from datetime import UTC, datetime

        return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def event(self, sid: str, name: str, t: float, **fields: Any) -> None:
        seq = self.seq.get(sid, 0)
        self.seq[sid] = seq + 1
        payload = {
            "event": name, "msg_id": str(uuid.uuid4()), "connector_id": 1, "session_id": sid, "seq": seq,
            "ts": self.ts(t), "offline": False, **fields,
        }  # fmt: skip
        self.lines.append(MessageLine(t, f"{PREFIX}/connectors/1/events", False, 1, payload))

    def receipt(self, sid: str, t: float, status: str, lines: list[dict[str, Any]], **fields: Any) -> None:
        total = sum(line["gross_minor"] for line in lines)
        payload = {
            "msg_id": str(uuid.uuid4()), "receipt_id": sid, "station_id": "FZ-1", "connector_id": 1,
            "session_id": sid, "status": status, "method": "emv", "issued_at": self.ts(t),
            "started_at": self.ts(T0), "stopped_at": self.ts(t), "duration_s": int(t - T0),
            "meter_start_wh": 1000, "meter_stop_wh": 1000 + fields.get("energy_wh", 0), "currency": "EUR",
            "minor_unit_digits": 2, "prices_include_vat": True, "vat_rate_percent": "21", "lines": lines,
            "net_minor": sum(line["net_minor"] for line in lines),
            "vat_minor": sum(line["vat_minor"] for line in lines), "total_minor": total, **fields,
        }  # fmt: skip
        self.lines.append(MessageLine(t, f"{PREFIX}/receipts", False, 1, payload))

    def alarm(self, t: float, **fields: Any) -> None:
        payload = {"msg_id": str(uuid.uuid4()), "state": "raised", "severity": "critical", "ts": self.ts(t),
                   "message": "x", **fields}  # fmt: skip
        self.lines.append(MessageLine(t, f"{PREFIX}/alarms", False, 1, payload))


def _line(kind: str, quantity: int, net: int, vat: int, gross: int) -> dict[str, Any]:
    unit = {"energy": "Wh", "time": "ms"}.get(kind, "session")
    return {"kind": kind, "band": "", "quantity": quantity, "unit": unit, "unit_price": "0.39",
            "price_unit": "kWh", "net_minor": net, "vat_minor": vat, "gross_minor": gross}  # fmt: skip


def _paid_session(stream: Stream, *, amount: int, energy_wh: int = 1000) -> None:
    """One good session: 1000 Wh at 0.39 (39) + fee 35 = 74, authorized 5000, terminal session 7."""
    sid = "1-a"
    stream.event(
        sid, "payment.authorized", T0 + 1, method="emv", terminal_session_id="7", authorized_minor=5000
    )
    stream.event(sid, "session.started", T0 + 2, method="emv", meter_wh=1000)
    stream.event(sid, "payment.captured", T0 + 9, terminal_session_id="7", amount_minor=amount)
    stream.event(
        sid, "session.ended", T0 + 9, reason="unplug", energy_wh=energy_wh, cost_minor=74, amount_minor=amount
    )
    lines = [_line("energy", energy_wh, 32, 7, 39), _line("session_fee", 1, 29, 6, 35)]
    stream.receipt(sid, T0 + 9, "captured", lines, energy_wh=energy_wh, authorized_minor=5000,
                   captured_minor=amount, terminal_session_id="7")  # fmt: skip


def _sim(sid: int, status: str, *, committed: int | None = None, pan: str = "476173******0001",
         card_hash: str = "AB" * 20, requested: int = 5000) -> dict[str, Any]:  # fmt: skip
    history: list[dict[str, Any]] = [{"event": "approved", "authorized_minor": requested}]
    if status == "committed":
        history.append({"event": "committed", "amount_minor": committed})
    elif status in ("voided", "expired_voided"):
        history.append({"event": status})
    return {
        "session_id": sid, "status": status, "authorized_minor": requested, "requested_minor": requested,
        "committed_minor": committed, "card": {"masked_pan": pan, "card_hash": card_hash}, "history": history,
    }  # fmt: skip


def _evidence(stream: Stream, sims: list[dict[str, Any]], **changes: Any) -> Evidence:
    base: dict[str, Any] = {
        "world": _world(), "prefix": PREFIX, "lines": stream.lines, "sim_sessions": sims, "journal": [],
        "agent_log": "<6>agent: fine\n",
        "cycles": [PlugCycle(1, T0 + 0.5, 1000, T0 + 10, 1200)],
    }  # fmt: skip
    base.update(changes)
    return Evidence(**base)


def _rules(evidence: Evidence) -> list[str]:
    return [f"{f.rule}: {f.message}" for f in evaluate(evidence)]


def test_a_correct_session_has_no_finding() -> None:
    stream = Stream()
    _paid_session(stream, amount=74)
    assert _rules(_evidence(stream, [_sim(7, "committed", committed=74)])) == []


def test_money_rules() -> None:
    stream = Stream()
    _paid_session(stream, amount=75)  # one minor unit too much, everywhere
    found = _rules(_evidence(stream, [_sim(7, "committed", committed=75)]))
    assert any("independently tariff(1000 Wh, 0 ms) = 74" in f for f in found), found
    stream = Stream()
    _paid_session(stream, amount=74)
    found = _rules(_evidence(stream, [_sim(7, "committed", committed=70)]))
    assert any(f.startswith("money:") and "the terminal has committed 70" in f for f in found), found


def test_energy_billed_above_the_delivered_energy() -> None:
    stream = Stream()
    _paid_session(stream, amount=74)
    found = _rules(
        _evidence(
            stream, [_sim(7, "committed", committed=74)], cycles=[PlugCycle(1, T0 + 0.5, 1000, T0 + 10, 999)]
        )
    )
    assert any(f.startswith("energy:") and "billed 1000 Wh" in f for f in found), found


def test_a_session_belongs_to_the_plug_cycle_open_when_it_started() -> None:
    """Session ``1-a`` starts at T0 + 2 inside the first plug cycle; the next plug-in follows 0.5 s
    later, within the clocks' slack. Billing 1000 Wh of 1200 delivered in the first cycle is
    fine; assigning it to the second (200 Wh) was a false finding (seed 172)."""
    stream = Stream()
    _paid_session(stream, amount=74)
    cycles = [PlugCycle(1, T0 + 0.5, 1000, T0 + 2.2, 2200), PlugCycle(1, T0 + 2.5, 2200, T0 + 10, 200)]
    assert _rules(_evidence(stream, [_sim(7, "committed", committed=74)], cycles=cycles)) == []
    # between cycles (the two clocks differ): the next plug-in within the slack
    late = [PlugCycle(1, T0 - 5, 0, T0 + 1.5, 0), PlugCycle(1, T0 + 2.5, 1000, T0 + 10, 1200)]
    assert _rules(_evidence(stream, [_sim(7, "committed", committed=74)], cycles=late)) == []
    # and a session billed above the cycle it belongs to is still found
    short = [PlugCycle(1, T0 + 0.5, 1000, T0 + 2.2, 900), PlugCycle(1, T0 + 2.5, 2200, T0 + 10, 5000)]
    found = _rules(_evidence(stream, [_sim(7, "committed", committed=74)], cycles=short))
    assert any(f.startswith("energy:") and "billed 1000 Wh" in f for f in found), found


def test_terminal_rules() -> None:
    twice = _sim(7, "committed", committed=74)
    twice["history"].append({"event": "voided"})
    found = _rules(_evidence(Stream(), [twice, _sim(8, "approved")]))
    assert any("2 commits/voids" in f for f in found), found
    assert any("still approved" in f for f in found), found


def test_an_orphan_needs_its_alarm_and_the_terminal_timeout() -> None:
    stream = Stream()
    orphan = _sim(9, "expired_voided", pan="476173******0009", requested=5000)
    assert any(
        f.startswith("orphan:") and "no possible_orphan_approval" in f
        for f in _rules(_evidence(stream, [orphan]))
    )
    data = {"masked_pan": "476173******0009", "amount_minor": 5000, "brand": None, "card_read_at": "x"}
    stream.alarm(T0 + 3, alarm="possible_orphan_approval", session_id="1-x", data=data)
    assert _rules(_evidence(stream, [orphan])) == []
    still = _sim(9, "approved", pan="476173******0009")
    assert any("expected expired_voided" in f for f in _rules(_evidence(stream, [still])))


def test_stop_2_a_tap_stop_needs_the_sessions_own_card() -> None:
    stream = Stream()
    sid = "1-b"
    stream.event(
        sid, "payment.authorized", T0 + 1, method="emv", terminal_session_id="7", authorized_minor=5000
    )
    stream.event(sid, "session.started", T0 + 2, method="emv", meter_wh=1000)
    stream.event(sid, "payment.voided", T0 + 5, terminal_session_id="7", amount_minor=0)
    stream.event(sid, "session.ended", T0 + 5, reason="tap", energy_wh=0, cost_minor=0, amount_minor=0)
    stream.receipt(sid, T0 + 5, "voided", [], energy_wh=0, terminal_session_id="7")
    sims = [_sim(7, "voided", card_hash="AA" * 20)]
    stranger = [TapRecord(T0 + 4, 1, "BB" * 20, True, "ok read")]
    found = _rules(_evidence(stream, sims, taps=stranger))
    assert any(f.startswith("stop:") for f in found), found
    own = [TapRecord(T0 + 4, 1, "AA" * 20, False, "ok read")]
    assert _rules(_evidence(stream, sims, taps=own)) == []


@pytest.mark.parametrize(
    ("log", "flagged"),
    [
        ("<3>agent.runtime.shell: something broke\n", True),
        ("Traceback (most recent call last):\n", True),
        (
            "<3>mqtt: failed to receive on socket: [Errno 104] Connection reset by peer\n",
            False,
        ),  # whitelisted
        ("<4>agent: a warning\n", False),
    ],
)
def test_log_rule(log: str, flagged: bool) -> None:
    found = [f for f in _rules(_evidence(Stream(), [], agent_log=log)) if f.startswith("log:")]
    assert bool(found) is flagged, found


def test_process_and_rig_problems_are_findings() -> None:
    found = _rules(
        _evidence(Stream(), [], unexpected_exits=["exited with 1"], stop_code=1, rig_problems=["x"])
    )
    assert "process: exited with 1" in found
    assert any("SIGTERM at the end" in f for f in found)
    assert "rig: x" in found
