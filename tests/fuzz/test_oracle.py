"""The fuzz oracle on hand-made evidence: the independent tariff agrees with docs/tariff.md and OCPI
2.2.1 (and with the agent's own tariff, as a cross-check the fuzzer itself never makes), and each rule
fires on the breach it is for and stays quiet otherwise."""

from __future__ import annotations

import dataclasses
import random
import uuid
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any

import pytest

from agent.money.tariff import tariff_from_builtins
from hil.fuzz.oracle import (
    Charged,
    Evidence,
    IndependentTariff,
    PlugCycle,
    TapRecord,
    TariffCommand,
    evaluate,
    round_half_up,
)
from hil.fuzz.world import TariffChange, TariffWorld, generate
from hil.stream import MessageLine
from statemachines.pricing import Usage, UsageKind

AT = datetime(2026, 1, 1, tzinfo=UTC)

PREFIX = "fz/FZ-1"
T0 = 1_800_000_000.0


def test_round_half_up_ties_away_from_zero() -> None:
    assert [round_half_up(Fraction(n, 2)) for n in (-3, -1, 1, 3, 5)] == [-2, -1, 1, 2, 3]
    assert round_half_up(Fraction(97461, 1000)) == 97


def test_independent_tariff_follows_the_documented_examples() -> None:
    gross = IndependentTariff(TariffWorld("EUR", 2, True, "21", "0.39", "0", "charging", "0"))
    assert gross.lines(2500, 0).get("energy", (0, 0, 0))[2] == 98  # 2.5 kWh at 0.39 = 97.5 cents → 98
    assert gross.lines(2499, 0).get("energy", (0, 0, 0))[2] == 97
    twenty = IndependentTariff(TariffWorld("EUR", 2, True, "20", "6.03", "0", "charging", "0"))
    assert twenty.lines(1000, 0).get("energy", (0, 0, 0)) == (503, 100, 603)  # net 5.025 → 5.03, VAT 1.00
    net = IndependentTariff(TariffWorld("EUR", 2, False, "21", "2.50", "0", "charging", "0"))
    assert net.lines(1000, 0).get("energy", (0, 0, 0)) == (250, 53, 303)  # VAT 0.525 → 0.53
    assert net.lines(0, 0).get("energy", (0, 0, 0)) == (0, 0, 0)
    # two lines, rounded once: gross 302.5 + 121 = 423.5 → 424; the cent goes to the energy line
    fee = IndependentTariff(TariffWorld("EUR", 2, False, "21", "2.50", "0", "charging", "1.00"))
    assert fee.lines(1000, 0) == {"energy": (250, 53, 303), "session_fee": (100, 21, 121)}
    # gross prices 0.39/kWh and 0.05/min: 214.5 + 150 = 364.5 → 365, rounded once
    three = IndependentTariff(TariffWorld("EUR", 2, True, "21", "0.39", "0.05", "charging", "0"))
    assert three.total(5500, 1_800_000) == 365


def _ocpi(time_applies_to: str = "charging", **changes: Any) -> TariffWorld:
    base = TariffWorld("EUR", 2, False, "21", "0.39", "0.05", time_applies_to, "0.35", form="ocpi")
    return dataclasses.replace(base, **changes)


def test_the_ocpi_form_carries_the_same_net_prices() -> None:
    tariff = _ocpi("charging_and_suspended", timezone="Europe/Amsterdam")
    config = tariff.config()
    assert config["timezone"] == "Europe/Amsterdam"
    assert config["minor_unit_digits"] == 2
    components = config["ocpi"]["elements"][0]["price_components"]
    assert components == [
        {"type": "ENERGY", "price": 0.39, "vat": 21, "step_size": 1},
        {"type": "TIME", "price": 3, "vat": 21, "step_size": 1},  # 0.05 per minute * 60
        {"type": "PARKING_TIME", "price": 3, "vat": 21, "step_size": 1},  # charging_and_suspended
        {"type": "FLAT", "price": 0.35, "vat": 21, "step_size": 1},
    ]
    assert [c["type"] for c in _ocpi(time_per_minute="0", session_fee="0").ocpi_object()["elements"][0][
        "price_components"]] == ["ENERGY"]  # fmt: skip
    assert TariffWorld("KWD", 3, False, "0", "0.999", "0.010", "charging", "0").time_per_hour == "0.6"


def test_independent_tariff_prices_ocpi_time_per_hour_with_the_step() -> None:
    """OCPI TIME is per hour and billed in whole seconds (step_size 1 = 1 s, §Tariffs 4.4.5), once
    per session; PARKING_TIME prices time not charging, on its own (``idle_fee``) line."""
    charging = IndependentTariff(_ocpi())
    quote = charging.quote(Charged(1000, 12_511))
    assert quote["time"].quantity == 13_000  # 12.511 s → 13 s
    assert quote["time"].net_minor == 1  # 13 s at 3.00/h = 1.083 cents net
    assert list(quote) == ["energy", "time", "session_fee"]
    assert charging.quote(Charged(1000, 12_511, 5_000, ("charging", "parking")))["time"].quantity == 13_000
    both = IndependentTariff(_ocpi("charging_and_suspended"))
    # the last period with time is parking: the parking time is rounded up, the charging time not
    mixed = both.quote(Charged(1000, 12_511, 5_200, ("charging", "parking")))
    assert (mixed["time"].quantity, mixed["idle_fee"].quantity) == (12_511, 6_000)
    assert list(mixed) == ["energy", "time", "session_fee", "idle_fee"]
    back = both.quote(Charged(1000, 12_511, 5_200, ("charging", "parking", "charging")))
    assert (back["time"].quantity, back["idle_fee"].quantity) == (13_000, 5_200)
    # the simple form prices the same time pro rata to the ms, on one line
    simple = IndependentTariff(dataclasses.replace(_ocpi("charging_and_suspended"), form="simple"))
    assert simple.quote(Charged(1000, 12_511, 5_200, ("charging", "parking")))["time"].quantity == 17_711


def test_independent_tariff_agrees_with_the_agent_on_random_worlds() -> None:
    rng = random.Random(5)
    checked = {"simple": 0, "ocpi": 0}
    for seed in range(1, 80):
        for tariff in generate(seed).tariffs:
            ours = IndependentTariff(tariff)
            agent = tariff_from_builtins(tariff.config())
            checked[tariff.form] += 1
            for _ in range(10):
                usage, order = Usage(started_at=AT), []
                for _ in range(rng.randint(1, 4)):
                    kind = rng.choice((UsageKind.CHARGING, UsageKind.SUSPENDED))
                    wh = rng.randrange(0, 60_000) if kind is UsageKind.CHARGING else 0
                    ms = rng.randrange(0, 3_600_000)
                    usage = usage.add(kind, wh, ms)
                    if ms:
                        order.append("charging" if kind is UsageKind.CHARGING else "parking")
                used = Charged(
                    usage.energy_wh,
                    usage.duration_ms(UsageKind.CHARGING),
                    usage.duration_ms(UsageKind.SUSPENDED),
                    tuple(order),
                )
                theirs = [
                    (line.kind.value, line.quantity, line.net_minor, line.vat_minor, line.gross_minor)
                    for line in agent.quote(usage).lines
                ]
                mine = [(k, line.quantity, *line.amounts) for k, line in ours.quote(used).items()]
                assert mine == theirs, (tariff, usage)
    assert min(checked.values()) > 20, checked


def test_every_set_tariff_of_the_worlds_is_a_tariff_the_agent_reads() -> None:
    for seed in range(1, 80):
        for change in generate(seed).tariff_changes:
            tariff = tariff_from_builtins(change.payload_tariff(), default_timezone="Europe/Amsterdam")
            assert tariff.currency == change.tariff.currency


# --- hand-made evidence -----------------------------------------------------------------------------


def _world(**changes: Any) -> Any:
    w = generate(1)
    tariff = TariffWorld("EUR", 2, True, "21", "0.39", "0", "charging", "0.35")
    session = dataclasses.replace(w.session, stop_modes=("unplug", "tap"))
    terminal = dataclasses.replace(w.terminal, family="apollo")
    charger = dataclasses.replace(w.charger, report_current=False, max_current_a=(32,) * w.charger.connectors)
    base = {"tariff": tariff, "session": session, "terminal": terminal, "charger": charger,
            "tariff_changes": ()}  # fmt: skip
    return dataclasses.replace(w, **{**base, **changes})


class Stream:
    def __init__(self) -> None:
        self.lines: list[MessageLine] = [MessageLine(T0, f"{PREFIX}/status", True, 1, {"state": "online"})]
        self.seq: dict[str, int] = {}

    def ts(self, t: float) -> str:
        return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def event(self, sid: str, name: str, t: float, **fields: Any) -> None:
        seq = self.seq.get(sid, 0)
        self.seq[sid] = seq + 1
        payload = {
            "event": name, "msg_id": str(uuid.uuid4()), "connector_id": 1, "session_id": sid, "seq": seq,
            "ts": self.ts(t), "offline": False, **fields,
        }  # fmt: skip
        self.lines.append(MessageLine(t, f"{PREFIX}/connectors/1/events", False, 1, payload))

    def receipt(
        self,
        sid: str,
        t: float,
        status: str,
        lines: list[dict[str, Any]],
        *,
        began: float = T0,
        **fields: Any,
    ) -> None:
        total = sum(line["gross_minor"] for line in lines)
        payload = {
            "msg_id": str(uuid.uuid4()), "receipt_id": sid, "station_id": "FZ-1", "connector_id": 1,
            "session_id": sid, "status": status, "method": "emv", "issued_at": self.ts(t),
            "started_at": self.ts(began), "stopped_at": self.ts(t), "duration_s": int(t - began),
            "meter_start_wh": 1000, "meter_stop_wh": 1000 + fields.get("energy_wh", 0), "currency": "EUR",
            "minor_unit_digits": 2, "prices_include_vat": True, "vat_rate_percent": "21", "lines": lines,
            "net_minor": sum(line["net_minor"] for line in lines),
            "vat_minor": sum(line["vat_minor"] for line in lines), "total_minor": total, **fields,
        }  # fmt: skip
        self.lines.append(MessageLine(t, f"{PREFIX}/receipts", False, 1, payload))

    def meter(self, sid: str, t: float, energy_wh: int) -> None:
        payload: dict[str, Any] = {
            "msg_id": str(uuid.uuid4()), "connector_id": 1, "session_id": sid, "seq": 0, "ts": self.ts(t),
            "meter_wh": 1000 + energy_wh, "energy_wh": energy_wh,
        }  # fmt: skip
        self.lines.append(MessageLine(t, f"{PREFIX}/connectors/1/meter", False, 1, payload))

    def alarm(self, t: float, **fields: Any) -> None:
        payload = {"msg_id": str(uuid.uuid4()), "state": "raised", "severity": "critical", "ts": self.ts(t),
                   "message": "x", **fields}  # fmt: skip
        self.lines.append(MessageLine(t, f"{PREFIX}/alarms", False, 1, payload))

    def result(self, correlation: str, t: float, status: str = "accepted", code: str | None = None) -> None:
        payload: dict[str, Any] = {
            "correlation_id": correlation, "command": "set_tariff", "status": status, "code": code,
            "reason": None, "sessions": None, "data": {"currency": "EUR", "fingerprint": "ab" * 32},
            "ts": self.ts(t),
        }  # fmt: skip
        self.lines.append(MessageLine(t, f"{PREFIX}/cmd/set_tariff/result", False, 1, payload))


def _line(kind: str, quantity: int, net: int, vat: int, gross: int) -> dict[str, Any]:
    unit = {"energy": "Wh", "time": "ms", "idle_fee": "ms"}.get(kind, "session")
    return {"kind": kind, "band": "", "quantity": quantity, "unit": unit, "unit_price": "0.39",
            "price_unit": "kWh", "net_minor": net, "vat_minor": vat, "gross_minor": gross}  # fmt: skip


def _periods(start: float, *stretches: tuple[str, int, int]) -> list[dict[str, Any]]:
    """Charging periods from ``start``: (TIME | PARKING_TIME, Wh, ms) each, back to back."""
    found, at = [], start
    for kind, wh, ms in stretches:
        dims: list[dict[str, Any]] = [{"type": "ENERGY", "volume": wh / 1000}] if wh else []
        dims.append({"type": kind, "volume": round(ms / 3_600_000, 9)})
        found.append({"start_date_time": Stream().ts(at), "dimensions": dims})
        at += ms / 1000
    return found


def _paid_session(
    stream: Stream,
    *,
    amount: int,
    energy_wh: int = 1000,
    periods: list[dict[str, Any]] | None = None,
    receipt_periods: list[dict[str, Any]] | None = None,
) -> None:
    """One good session: 1000 Wh at 0.39 (39) + fee 35 = 74, authorized 5000, terminal session 7,
    charging from T0 + 2 to T0 + 8."""
    sid = "1-a"
    periods = _periods(T0 + 2, ("TIME", energy_wh, 6000)) if periods is None else periods
    stream.event(
        sid, "payment.authorized", T0 + 1, method="emv", terminal_session_id="7", authorized_minor=5000
    )
    stream.event(sid, "session.started", T0 + 2, method="emv", meter_wh=1000)
    stream.meter(sid, T0 + 8, energy_wh)
    stream.event(sid, "payment.captured", T0 + 9, terminal_session_id="7", amount_minor=amount)
    stream.event(sid, "session.ended", T0 + 9, reason="unplug", energy_wh=energy_wh, cost_minor=74,
                 amount_minor=amount, charging_periods=periods)  # fmt: skip
    lines = [_line("energy", energy_wh, 32, 7, 39), _line("session_fee", 1, 29, 6, 35)]
    stream.receipt(sid, T0 + 9, "captured", lines, energy_wh=energy_wh, authorized_minor=5000,
                   captured_minor=amount, terminal_session_id="7",
                   charging_periods=periods if receipt_periods is None else receipt_periods)  # fmt: skip


def _priced_session(stream: Stream, sid: str, tsid: int, began: float, tariff: TariffWorld) -> dict[str, Any]:
    """A session begun at ``began`` (its card read), charging 2000 Wh for 60 s from ``began`` + 2,
    priced by ``tariff`` as the oracle reads it; returns the terminal's record of it."""
    used = Charged(2000, 60_000)
    quote = IndependentTariff(tariff).quote(used)
    amount = sum(line.gross_minor for line in quote.values())
    lines = [_line(k, line.quantity, *line.amounts) for k, line in quote.items()]
    periods = _periods(began + 2, ("TIME", 2000, 60_000))
    end = began + 62
    stream.event(sid, "payment.authorized", began + 1, method="emv", terminal_session_id=str(tsid),
                 authorized_minor=5000)  # fmt: skip
    stream.event(sid, "session.started", began + 2, method="emv", meter_wh=1000)
    stream.event(sid, "payment.captured", end + 1, terminal_session_id=str(tsid), amount_minor=amount)
    stream.event(sid, "session.ended", end + 1, reason="unplug", energy_wh=2000, cost_minor=amount,
                 amount_minor=amount, charging_periods=periods)  # fmt: skip
    stream.receipt(sid, end + 1, "captured", lines, began=began, energy_wh=2000, authorized_minor=5000,
                   captured_minor=amount, terminal_session_id=str(tsid),
                   charging_periods=periods)  # fmt: skip
    return _sim(tsid, "committed", committed=amount, card_hash=f"{tsid:02d}" * 20)


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
    assert any("independently tariff(1000 Wh, 6000 ms) = 74" in f for f in found), found
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


# --- charging periods -----------------------------------------------------------------------------


def _periods_found(**session: Any) -> list[str]:
    stream = Stream()
    _paid_session(stream, amount=74, **session)
    return [
        f for f in _rules(_evidence(stream, [_sim(7, "committed", committed=74)])) if f.startswith("periods")
    ]


def test_periods_are_on_session_ended_and_the_receipt_alike() -> None:
    assert _periods_found() == []
    other = _periods(T0 + 2, ("TIME", 1000, 5000))
    assert any("charging_periods differ" in f for f in _periods_found(receipt_periods=other))
    stream = Stream()
    _paid_session(stream, amount=74)
    ended = next(line for line in stream.lines if isinstance(line.payload, dict)
                 and line.payload.get("event") == "session.ended")  # fmt: skip
    assert isinstance(ended.payload, dict)
    del ended.payload["charging_periods"]
    found = _rules(_evidence(stream, [_sim(7, "committed", committed=74)]))
    assert "periods: session 1-a: session.ended without charging_periods" in found, found


def test_period_energy_adds_up_to_the_sessions_energy() -> None:
    periods = _periods(T0 + 2, ("TIME", 600, 3000), ("TIME", 400, 3000))
    assert _periods_found(periods=periods) == []
    short = _periods(T0 + 2, ("TIME", 600, 3000), ("TIME", 399, 3000))
    found = _periods_found(periods=short)
    assert any("ENERGY of the charging periods adds up to 999.0 Wh, session.ended energy_wh 1000" in f
               for f in found), found  # fmt: skip


def test_period_starts_never_go_back() -> None:
    periods = _periods(T0 + 2, ("TIME", 600, 3000), ("PARKING_TIME", 0, 1000), ("TIME", 400, 2000))
    assert _periods_found(periods=periods) == []
    periods[2]["start_date_time"] = Stream().ts(T0 + 4)  # before the period before it (T0 + 5)
    found = _periods_found(periods=periods)
    assert any("charging_periods[2] starts" in f and "before the period before it" in f for f in found), found


def test_period_time_lies_within_the_session() -> None:
    # a gap between two periods (the agent was down: its time is not billed) is no finding …
    gap = _periods(T0 + 2, ("TIME", 600, 3000))
    gap += _periods(T0 + 6, ("TIME", 400, 2000))
    assert not [f for f in _periods_found(periods=gap) if "period" in f], _periods_found(periods=gap)
    # … two periods that overlap (the second starts 2 s before the first ends) are
    overlap = _periods(T0 + 2, ("TIME", 600, 3000))
    overlap += _periods(T0 + 3, ("TIME", 400, 5000))
    assert any("charging_periods[1] starts" in f and "before the period before it ends" in f
               for f in _periods_found(periods=overlap))  # fmt: skip
    # time until T0 + 12, after session.ended (T0 + 9)
    late = _periods(T0 + 2, ("TIME", 1000, 10_000))
    assert any("after session.ended" in f for f in _periods_found(periods=late))
    # time that stops at T0 + 5, before the last meter value (T0 + 8)
    early = _periods(T0 + 2, ("TIME", 1000, 3000))
    assert any("before the session's last meter value" in f for f in _periods_found(periods=early))
    # time before the card was read (the receipt's started_at, T0)
    before = _periods(T0 - 4, ("TIME", 1000, 12_000))
    assert any("before the session began" in f for f in _periods_found(periods=before))


def test_max_current_only_when_the_charger_reports_it_and_within_the_limit() -> None:
    periods = _periods(T0 + 2, ("TIME", 1000, 6000))
    periods[0]["dimensions"].append({"type": "MAX_CURRENT", "volume": 31.5})
    stream = Stream()
    _paid_session(stream, amount=74, periods=periods)
    sims = [_sim(7, "committed", committed=74)]
    found = _rules(_evidence(stream, sims))
    assert any("MAX_CURRENT [31.5] A, but the charger never reports current_a" in f for f in found), found
    reporting = _world()
    reporting = dataclasses.replace(
        reporting, charger=dataclasses.replace(reporting.charger, report_current=True)
    )
    assert _rules(_evidence(stream, sims, world=reporting)) == []
    periods[0]["dimensions"][-1]["volume"] = 40.0
    stream = Stream()
    _paid_session(stream, amount=74, periods=periods)
    found = _rules(_evidence(stream, sims, world=reporting))
    assert any("MAX_CURRENT [40.0] A above the connector's 32 A" in f for f in found), found


# --- set_tariff: which tariff prices a session ------------------------------------------------------

OLD = TariffWorld("EUR", 2, True, "21", "0.39", "0", "charging", "0.35")
NEW = TariffWorld("EUR", 2, False, "19", "0.79", "0.05", "charging", "0", form="ocpi", tariff_id="FZ-T1")
SENT = T0 + 100  # the set_tariff is published; its result arrives 0.3 s later


def _tariff_case(
    sessions: list[tuple[float, TariffWorld]],
    *,
    result: str | None = "accepted",
    figures: dict[str, int] | None = None,
) -> list[str]:
    """Sessions (begun at, priced by) around one ``set_tariff`` of ``NEW``; the findings."""
    stream = Stream()
    sims = [
        _priced_session(stream, f"1-{i}", 10 + i, began, tariff) for i, (began, tariff) in enumerate(sessions)
    ]
    if result is not None:
        stream.result("c-1", SENT + 0.3, result, None if result == "accepted" else "internal")
    world = _world(tariff=OLD, tariff_changes=(TariffChange(100.0, NEW),))
    commands = [TariffCommand(0, "c-1", SENT)]
    cycles = [PlugCycle(1, T0 - 10, 0, T0 + 10_000, 1_000_000)]
    evidence = _evidence(stream, sims, world=world, tariff_commands=commands, cycles=cycles)
    return [f"{f.rule}: {f.message}" for f in evaluate(evidence, figures)]


def test_the_new_and_the_old_tariff_are_told_apart() -> None:
    assert IndependentTariff(OLD).total(2000, 60_000) != IndependentTariff(NEW).total(2000, 60_000)


def test_sessions_take_the_tariff_in_force_when_they_began() -> None:
    assert _tariff_case([(T0, OLD), (SENT - 3, OLD), (SENT + 3, NEW), (T0 + 300, NEW)]) == []
    # around the command (published at SENT, answered at SENT + 0.3), either may apply
    assert _tariff_case([(SENT - 1.5, OLD), (SENT + 1, OLD), (SENT + 2, NEW)]) == []
    assert _tariff_case([(SENT - 1, NEW), (SENT + 1.5, NEW)]) == []


def test_the_figures_count_sessions_only_a_set_tariff_or_an_ocpi_tariff_prices() -> None:
    figures: dict[str, int] = {}
    assert _tariff_case([(T0, OLD), (SENT + 1, NEW), (SENT + 3, NEW)], figures=figures) == []
    assert figures == {"priced_by_set_tariff": 2, "priced_by_ocpi": 2}  # NEW is in the OCPI form


def test_a_session_begun_after_the_accepted_result_is_not_priced_by_the_old_tariff() -> None:
    found = _tariff_case([(T0, OLD), (SENT + 5, OLD)])
    assert any(f.startswith("tariff: session 1-1") and "may be priced by tariff #1 (set_tariff #1)" in f
               and "its receipt matches #0 (configured)" in f for f in found), found  # fmt: skip
    assert any(f.startswith("money: session 1-1") for f in found), found


def test_a_session_begun_before_the_command_is_not_priced_by_the_new_tariff() -> None:
    found = _tariff_case([(SENT - 5, NEW)])
    assert any(f.startswith("tariff: session 1-0") and "may be priced by tariff #0 (configured)" in f
               for f in found), found  # fmt: skip


def test_an_unanswered_set_tariff_may_apply_but_never_comes_undone() -> None:
    assert _tariff_case([(SENT + 5, OLD), (SENT + 50, OLD)], result=None) == []
    assert _tariff_case([(SENT + 5, OLD), (SENT + 50, NEW), (SENT + 90, NEW)], result=None) == []
    found = _tariff_case([(SENT + 5, NEW), (SENT + 50, OLD)], result=None)
    assert any(f.startswith("tariff: session 1-1") and "was already priced by tariff #1" in f
               for f in found), found  # fmt: skip


def test_a_refused_set_tariff_changes_nothing_and_is_a_finding() -> None:
    found = _tariff_case([(SENT + 5, OLD)], result="error")
    assert any(f.startswith("tariff: set_tariff #1") and "answered error/internal" in f for f in found), found
    assert not any("session 1-0" in f for f in found), found
    assert any("session 1-0" in f for f in _tariff_case([(SENT + 5, NEW)], result="error"))


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
    stream.event(sid, "session.ended", T0 + 5, reason="tap", energy_wh=0, cost_minor=0, amount_minor=0,
                 charging_periods=[])  # fmt: skip
    stream.receipt(sid, T0 + 5, "voided", [], energy_wh=0, terminal_session_id="7", charging_periods=[])
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
        ("<3>mqtt: failed to receive on socket: [Errno 32] Broken pipe\n", False),  # paho's send path
        ("<3>mqtt: failed to receive on socket: [Errno 9] Bad file descriptor\n", True),
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


# --- charger_payment: the bridge's payment topic (docs/charger-bridge.md §2.1) --------------------


def _payment(event: str, **fields: Any) -> dict[str, Any]:
    payload = {"v": 1, "event": event, "session_id": "1-a", "psp_ref": "7", "currency": "EUR",
               "minor_unit_digits": 2, "authorized_minor": 5000, "card_last4": "0001",
               "ts": "2026-01-01T00:00:09.000Z", **fields}  # fmt: skip
    return {"connector_id": 1, "retained": False, "payload": payload}


def _settled(amount: int, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "status": "Settled",
        "settlement_minor": amount,
        "settlement_amount": f"{amount / 100:.2f}",
    }
    return _payment("settled", **{**base, **fields})


def test_charger_payment_rule() -> None:
    stream = Stream()
    _paid_session(stream, amount=74)
    sims = [_sim(7, "committed", committed=74)]
    good = [
        _payment("authorized"),
        _payment("cost", cost_minor=39),
        _settled(74),
        {**_settled(74), "retained": True},
    ]
    assert (
        _rules(_evidence(stream, sims, charger_payments=good)) == []
    )  # a repeat of the same content is fine
    assert _rules(_evidence(stream, sims)) == []  # not collected: the rule is skipped

    def findings(records: list[dict[str, Any]]) -> list[str]:
        return [
            r
            for r in _rules(_evidence(stream, sims, charger_payments=records))
            if r.startswith("charger_payment")
        ]

    (missing,) = findings([_payment("authorized")])
    assert "no settlement reached the charger" in missing
    (twice,) = findings([_settled(74), _settled(74, settlement_time="2026-01-01T00:00:10.000Z")])
    assert "2 different settlements" in twice
    assert any("settled 70, payment.captured 74" in f for f in findings([_settled(70)]))
    assert any("psp_ref" in f for f in findings([_settled(74, psp_ref="8")]))
    assert any("Canceled settlement" in f for f in findings([_settled(0, status="Canceled")]))
    (pan,) = findings([_settled(74), _payment("cost", card_last4="4761739001010119")])
    assert "card_last4 looks like a full PAN" in pan
    assert "4761739001010119" not in pan  # the finding names the field, never the value
    (stranger,) = findings(
        [_settled(74), {**_settled(74), "payload": {**_settled(74)["payload"], "session_id": "9-z"}}]
    )
    assert "never had" in stranger
