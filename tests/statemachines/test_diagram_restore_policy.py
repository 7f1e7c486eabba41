"""Diagrams (staleness, CLI), restart recovery (ERR-5) and the authorization policy functions."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from agent.cli import main
from statemachines.authorization import (
    AuthorizationPolicy,
    AuthorizationStrategy,
    capture_amount_minor,
    increment_total_minor,
    must_stop_for_cap,
    partial_cap_minor,
    start_amount_minor,
)
from statemachines.diagram import mermaid
from statemachines.effects import Commit, EnableEnergy, JournalRecord, UpstreamEvent, Void
from statemachines.events import Disposal, MeterReading, PaymentMethod, PaymentRestored, RestoredPayment
from statemachines.pricing import Usage, UsageKind
from tests.support.pricing import LinearPricer
from tests.support.station import CARD_A, Up, make_station, t

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.mark.parametrize("name", ["connector", "terminal"])
def test_checked_in_diagram_is_current(name: str) -> None:
    path = DOCS / f"{name}.mmd"
    assert path.read_text(encoding="utf-8") == mermaid(name), (
        f"docs/{name}.mmd is stale: run `evpay-agent diagram {name} > docs/{name}.mmd`"
    )


def test_diagram_cli_prints_mermaid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diagram", "terminal"]) == 0
    out = capsys.readouterr().out
    assert out == mermaid("terminal")
    assert out.startswith("stateDiagram-v2\n")


def test_diagram_is_deterministic_and_covers_all_states() -> None:
    text = mermaid("connector")
    assert text == mermaid("connector")
    for state in ("unavailable", "awaiting_card", "awaiting_plug", "suspended_evse", "idle_fee", "settling"):
        assert f" {state} " in text or f"> {state} " in text


def _restored(energy_wh: int, *, disposal: Disposal | None = None) -> RestoredPayment:
    usage = Usage()
    if energy_wh:
        usage = LinearPricer().accumulate(usage, t(0), t(600), energy_wh, UsageKind.CHARGING)
    return RestoredPayment(
        method=PaymentMethod.EMV,
        session_ref="1-restored",
        session_id="S7",
        card=CARD_A,
        authorized_minor=5000,
        usage=usage,
        last_meter_wh=100_000 + energy_wh,
        last_meter_at=t(600),
        energy_on=True,
        disposal=disposal,
        final_minor=40 if disposal else 0,
    )


@pytest.mark.req("ERR-5")
def test_req_err_5_restored_payment_resumes_when_still_plugged() -> None:
    station = make_station(1)
    effects = station.handle(PaymentRestored(1, t(700), _restored(1000), plugged=True))
    journal = [e for e in effects if isinstance(e, JournalRecord)]
    assert [j.kind for j in journal] == ["payment_restored", "energy_on"]
    assert EnableEnergy(1) in effects
    assert effects.index(journal[-1]) < effects.index(EnableEnergy(1))
    assert station.connectors[1].state == "charging"
    station.handle(MeterReading(1, t(760), 102_000, 7200.0))  # continues from the journaled register
    assert station.connectors[1].running_cost_minor == 80


@pytest.mark.req("ERR-5")
@pytest.mark.parametrize(("energy_wh", "expected"), [(1000, Commit(1, "S7", 40)), (0, Void(1, "S7"))])
def test_req_err_5_restored_payment_settles_when_unplugged(energy_wh: int, expected: object) -> None:
    station = make_station(1)
    effects = station.handle(PaymentRestored(1, t(700), _restored(energy_wh), plugged=False))
    assert expected in effects
    assert EnableEnergy(1) not in effects
    assert station.connectors[1].state == "settling"


@pytest.mark.req("ERR-5")
def test_req_err_5_decided_disposal_is_resent_not_recomputed() -> None:
    station = make_station(1)
    effects = station.handle(
        PaymentRestored(1, t(700), _restored(5000, disposal=Disposal.COMMIT), plugged=True)
    )
    assert Commit(1, "S7", 40) in effects
    assert EnableEnergy(1) not in effects


@pytest.mark.req("ERR-5")
@pytest.mark.parametrize(
    ("payment", "plugged", "resolution"),
    [
        (_restored(1000), True, "resumed"),
        (_restored(1000), False, "commit"),
        (_restored(0), False, "void"),
        (_restored(5000, disposal=Disposal.COMMIT), True, "resent"),
        (replace(_restored(1000), method=PaymentMethod.RFID, session_id=None), False, "ended"),
    ],
)
def test_req_err_5_restore_is_reported_upstream(
    payment: RestoredPayment, plugged: bool, resolution: str
) -> None:
    """DESIGN.md §5.2: every resumed or finalised payment is announced upstream, after its journal record."""
    effects = make_station(1).handle(PaymentRestored(1, t(700), payment, plugged=plugged))
    expected = Up(
        "session.updated",
        sref="1-restored",
        reason="restored",
        resolution=resolution,
        session_id=payment.session_id,
        method=payment.method.value,
        plugged=plugged,
        authorized_minor=5000,
    )
    assert [e for e in effects if isinstance(e, UpstreamEvent) and e.name == "session.updated"] == [expected]
    restored = next(e for e in effects if isinstance(e, JournalRecord) and e.kind == "payment_restored")
    assert effects.index(restored) < effects.index(expected)


@pytest.mark.req("AMT-1")
def test_req_amt_1_start_amounts() -> None:
    assert start_amount_minor(AuthorizationPolicy()) == 5000
    assert start_amount_minor(AuthorizationPolicy(strategy=AuthorizationStrategy.MAXIMUM)) == 15000
    cap = AuthorizationPolicy(strategy=AuthorizationStrategy.DRIVER_CAP)
    assert start_amount_minor(cap, 10000) == 10000
    assert start_amount_minor(cap, 777) == 2000  # not a choice: the first choice


@pytest.mark.req("AMT-2")
def test_req_amt_2_increment_and_stop_decisions() -> None:
    inc = AuthorizationPolicy(
        strategy=AuthorizationStrategy.INCREMENTAL, amount_minor=2000, maximum_minor=3000
    )
    assert increment_total_minor(inc, 2000, 301, True) is None  # not yet within headroom
    assert increment_total_minor(inc, 2000, 300, True) == 3000  # capped by the maximum
    assert increment_total_minor(inc, 3000, 10, True) is None  # maximum reached
    assert increment_total_minor(inc, 2000, 10, False) is None  # P6X: no Update Session
    assert increment_total_minor(AuthorizationPolicy(), 2000, 10, True) is None
    assert must_stop_for_cap(60, 60)
    assert not must_stop_for_cap(61, 60)
    assert not must_stop_for_cap(None, 60)


@pytest.mark.req("AMT-3", "AMT-4")
def test_req_amt_3_4_caps() -> None:
    assert partial_cap_minor(5000, 2000) == 2000
    assert partial_cap_minor(5000, 9000) == 5000
    assert capture_amount_minor(AuthorizationPolicy(), 6000, 5000) == 5000
    assert capture_amount_minor(AuthorizationPolicy(allow_over_capture=True), 6000, 5000) == 6000
    assert capture_amount_minor(AuthorizationPolicy(), 6000, None) == 6000
