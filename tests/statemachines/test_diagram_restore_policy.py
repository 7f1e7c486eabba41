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
from statemachines.connector import ConnectorMachineState
from statemachines.diagram import mermaid
from statemachines.effects import (
    Commit,
    Effect,
    EnableEnergy,
    IssueReceipt,
    JournalRecord,
    PublishSessionEnded,
    PublishSessionStarted,
    PublishSessionUpdated,
    RecordCommitDecided,
    RecordEnergyOn,
    RecordPaymentRestored,
    UpdateReason,
    Void,
)
from statemachines.events import (
    CardKind,
    CardToken,
    ChargerLost,
    CommitResult,
    Disposal,
    MeterReading,
    PaymentMethod,
    PaymentRestored,
    RestoredPayment,
    RestoreResolution,
    SettlementOutcome,
    StopSource,
    VoidResult,
)
from statemachines.pricing import Usage, UsageKind
from tests.support.pricing import LinearPricer
from tests.support.station import ANY_USAGE, CARD_A, assert_write_ahead, make_station, state, t

DOCS = Path(__file__).resolve().parents[2] / "docs"
SREF = "1-restored"


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
    for name in ConnectorMachineState:
        assert f" {name} " in text or f"> {name} " in text, name


def _restored(energy_wh: int, *, disposal: Disposal | None = None, started: bool = True) -> RestoredPayment:
    """A journaled EMV payment of 5000 (``energy_wh`` delivered by t(600) at 0.40/kWh); ``started``:
    energy was enabled before the restart (session.started already published)."""
    usage = Usage()
    if energy_wh:
        usage = LinearPricer().accumulate(usage, t(0), t(600), energy_wh, UsageKind.CHARGING)
    return RestoredPayment(
        method=PaymentMethod.EMV,
        session_ref=SREF,
        session_id="S7",
        card=CARD_A,
        authorized_minor=5000,
        usage=usage,
        last_meter_wh=100_000 + energy_wh,
        last_meter_at=t(600),
        energy_on=started,
        disposal=disposal,
        final_minor=40 if disposal else 0,
        started=started,
        stop_reason=StopSource.UNPLUG if disposal else None,
    )


def _journal_before(payment: RestoredPayment) -> list[JournalRecord]:
    """What the journal held of a decided disposal (the write-ahead of its re-send)."""
    if payment.disposal is Disposal.COMMIT:
        assert payment.session_id is not None
        return [
            RecordCommitDecided(
                1, SREF, payment.session_id, payment.final_minor, payment.usage.energy_wh, 40, payment.usage
            )
        ]
    return []


@pytest.mark.req("ERR-5")
def test_req_err_5_restored_payment_resumes_when_still_plugged() -> None:
    station = make_station(1)
    effects = station.handle(PaymentRestored(1, t(700), _restored(1000), plugged=True))
    journal = [e for e in effects if isinstance(e, JournalRecord)]
    assert [type(j) for j in journal] == [RecordPaymentRestored, RecordEnergyOn]
    assert journal[-1] == RecordEnergyOn(1, SREF, PaymentMethod.EMV, 101_000, first=False, usage=ANY_USAGE)
    assert EnableEnergy(1) in effects
    assert effects.index(journal[-1]) < effects.index(EnableEnergy(1))
    assert not any(isinstance(e, PublishSessionStarted) for e in effects)  # started before the restart
    assert_write_ahead(effects)
    assert state(station, 1) is ConnectorMachineState.CHARGING
    station.handle(MeterReading(1, t(760), 102_000, 7200.0))  # continues from the journaled register
    assert station.connectors[1].running_cost_minor == 80


@pytest.mark.req("ERR-5")
def test_req_err_5_a_session_that_never_started_starts_once_when_resumed() -> None:
    """Authorized before the restart, energy never enabled (tap first, plugged during the outage):
    the resume is the session's start, announced once, after the session.updated."""
    station = make_station(1)
    effects = station.handle(PaymentRestored(1, t(700), _restored(0, started=False), plugged=True))
    started = [e for e in effects if isinstance(e, PublishSessionStarted)]
    assert started == [PublishSessionStarted(1, SREF, PaymentMethod.EMV, 100_000)]
    updated = next(e for e in effects if isinstance(e, PublishSessionUpdated))
    assert effects.index(updated) < effects.index(started[0])
    assert RecordEnergyOn(1, SREF, PaymentMethod.EMV, 100_000, first=True, usage=ANY_USAGE) in effects
    assert_write_ahead(effects)


@pytest.mark.req("ERR-5")
@pytest.mark.parametrize(
    ("energy_wh", "started", "expected", "result"),
    [
        (1000, True, Commit(1, "S7", 40), CommitResult(1, t(701), "S7", SettlementOutcome.OK)),
        (0, True, Void(1, "S7"), VoidResult(1, t(701), "S7", SettlementOutcome.OK)),
        (0, False, Void(1, "S7"), VoidResult(1, t(701), "S7", SettlementOutcome.OK)),
    ],
)
def test_req_err_5_restored_payment_settles_when_unplugged(
    energy_wh: int, started: bool, expected: Effect, result: CommitResult | VoidResult
) -> None:
    """Settled from the journal; session.ended only for a session that started; one receipt."""
    station = make_station(1)
    effects = station.handle(PaymentRestored(1, t(700), _restored(energy_wh, started=started), plugged=False))
    assert expected in effects
    assert EnableEnergy(1) not in effects
    assert state(station, 1) is ConnectorMachineState.SETTLING
    effects += station.handle(result)
    assert_write_ahead(effects)
    ended = [e for e in effects if isinstance(e, PublishSessionEnded)]
    assert len(ended) == (1 if started else 0)
    amount = expected.amount_minor if isinstance(expected, Commit) else 0
    assert [e for e in effects if isinstance(e, IssueReceipt)] == [IssueReceipt(1, SREF, amount)]
    assert state(station, 1) is ConnectorMachineState.AVAILABLE


@pytest.mark.req("ERR-5")
def test_req_err_5_decided_disposal_is_resent_not_recomputed() -> None:
    station = make_station(1)
    payment = _restored(5000, disposal=Disposal.COMMIT)
    effects = station.handle(PaymentRestored(1, t(700), payment, plugged=True))
    assert Commit(1, "S7", 40) in effects  # the journaled amount, not the 200 that 5 kWh would cost
    assert EnableEnergy(1) not in effects
    assert not any(isinstance(e, RecordCommitDecided) for e in effects)  # decided once (STOP-8)
    effects += station.handle(CommitResult(1, t(701), "S7", SettlementOutcome.OK))
    assert_write_ahead(effects, prior=_journal_before(payment))
    (ended,) = [e for e in effects if isinstance(e, PublishSessionEnded)]
    assert (ended.reason, ended.amount_minor) == (StopSource.UNPLUG, 40)  # the journaled stop


RFID_RESTORED = replace(_restored(1000), method=PaymentMethod.RFID, session_id=None)


@pytest.mark.req("ERR-5")
@pytest.mark.parametrize(
    ("payment", "plugged", "resolution"),
    [
        (_restored(1000), True, RestoreResolution.RESUMED),
        (_restored(0, started=False), True, RestoreResolution.RESUMED),
        (_restored(1000), False, RestoreResolution.COMMIT),
        (_restored(0), False, RestoreResolution.VOID),
        (_restored(5000, disposal=Disposal.COMMIT), True, RestoreResolution.RESENT),
        (RFID_RESTORED, False, RestoreResolution.ENDED),
    ],
)
def test_req_err_5_restore_is_reported_upstream(
    payment: RestoredPayment, plugged: bool, resolution: RestoreResolution
) -> None:
    """DESIGN.md §5.2: every resumed or finalised payment is announced upstream: the journal record
    and session.updated come first, before any effect of the restore itself."""
    effects = make_station(1).handle(PaymentRestored(1, t(700), payment, plugged=plugged))
    assert effects[:2] == [
        RecordPaymentRestored(1, SREF, payment.session_id, plugged, payment.energy_on, resolution),
        PublishSessionUpdated(
            1,
            SREF,
            UpdateReason.RESUMED,
            resolution,
            payment.session_id,
            payment.method,
            plugged,
            authorized_minor=5000,
        ),
    ]
    assert sum(isinstance(e, PublishSessionUpdated) for e in effects) == 1
    assert_write_ahead(effects, prior=_journal_before(payment))


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


@pytest.mark.req("ERR-5", "ERR-2")
@pytest.mark.parametrize(
    ("plugged", "online", "expected_state", "reason"),
    [
        (True, False, ConnectorMachineState.UNAVAILABLE, StopSource.CHARGER_LOST),
        (False, False, ConnectorMachineState.UNAVAILABLE, StopSource.CHARGER_LOST),
        (False, True, ConnectorMachineState.AVAILABLE, StopSource.UNPLUG),
    ],
)
def test_req_err_5_a_restored_unpaid_session_ends_in_the_connector_state_the_facts_say(
    plugged: bool, online: bool, expected_state: ConnectorMachineState, reason: StopSource
) -> None:
    """An RFID session restored while the charger is offline ends with the connector unavailable
    (not ``available`` with a vehicle plugged in) and the reason ``charger_lost``; unplugged while
    the agent was down: ``available``, reason ``unplug`` (not ``local``)."""
    rfid = CardToken(CardKind.RFID, "04A1B2C3")
    payment = replace(_restored(500), method=PaymentMethod.RFID, session_id=None, card=rfid)
    station = make_station(1)
    station.handle(ChargerLost(t(700)))
    effects = station.handle(PaymentRestored(1, t(700), payment, plugged=plugged, charger_online=online))
    assert state(station, 1) is expected_state
    assert [e.reason for e in effects if isinstance(e, PublishSessionEnded)] == [reason]
