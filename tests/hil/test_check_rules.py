"""Every rule of hil.stream.rules on hand-written streams: one that keeps the contract, and for each
rule streams it must flag."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from hil.stream import Finding, check
from hil.stream.timeline import Link, Timeline
from tests.hil.streams import PREFIX, Payload, Stream, iso, valid_stream


def run(lines: list[Any], *, complete: bool = True, **options: Any) -> list[Finding]:
    return check(lines, complete=complete, **options)


def of(findings: list[Finding], rule: str) -> list[Finding]:
    return [f for f in findings if f.rule == rule]


def only(findings: list[Finding], rule: str) -> list[Finding]:
    """The findings, asserting that they are all of ``rule``."""
    assert findings, "expected findings"
    assert {f.rule for f in findings} == {rule}, "\n".join(map(str, findings))
    return findings


def payload(s: Stream, session_id: str, name: str, index: int = 0) -> Payload:
    """The ``index``-th delivered payload of ``session_id`` named ``name`` (an event name, "meter" or
    "receipt")."""
    found: list[Payload] = []
    for line in s.lines:
        p = line.get("payload")
        if not isinstance(p, dict) or p.get("session_id") != session_id:
            continue
        kind = "receipt" if line["topic"].endswith("/receipts") else p.get("event", "meter")
        if kind == name and all(p is not q for q in found):
            found.append(p)
    return found[index]


def without(s: Stream, *payloads: Payload) -> list[dict[str, Any]]:
    ids = {p["msg_id"] for p in payloads}
    return [line for line in s.lines if line.get("payload", {}).get("msg_id") not in ids]


def connected() -> Stream:
    s = Stream()
    s.birth().tick(3)
    return s


# --------------------------------------------------------------------------------------------------
# the passing stream
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lenient", [False, True])
@pytest.mark.parametrize("complete", [True, False])
def test_valid_stream_passes(complete: bool, lenient: bool) -> None:
    assert run(valid_stream().lines, complete=complete, lenient_sessions=lenient) == []


@pytest.mark.parametrize("complete", [True, False])
def test_contract_1_0_session_paths_pass_only_with_lenient_sessions(complete: bool) -> None:
    lines = valid_stream("1.0").lines
    assert run(lines, complete=complete, lenient_sessions=True) == []
    findings = only(run(lines, complete=complete), "session")
    assert {(f.session_id, f.message.split(" (")[0]) for f in findings} == {
        ("S-D", "session.ended"),  # ... without a session.started
        ("S-G", "session.ended"),
        ("S-F", "second session.started"),
    }


def test_valid_stream_as_text_lines_and_with_prefix() -> None:
    text = [json.dumps(line) for line in valid_stream().lines]
    assert run(text) == []
    assert run(text, prefix=PREFIX) == []
    assert run(text, prefix="evpay/v1/{station_id}") == []
    assert run([t.encode() for t in text], prefix="evpay/v1/+") == []


def test_an_empty_stream_has_no_finding() -> None:
    assert run([]) == []
    assert run(["", "  "]) == []


# --------------------------------------------------------------------------------------------------
# input
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        "not json",
        '{"t": 1.0, "topic": "evpay/v1/ST-1/alarms", "retain": false, "qos": 1, "payl',  # truncated
        "[1, 2]",
        '{"topic": "x", "retain": false, "qos": 1, "payload": {}}',  # no t
        '{"t": "now", "marker": "broker_down"}',
        '{"t": 1.0, "marker": ""}',
        '{"t": 1.0, "topic": "", "retain": false, "qos": 1, "payload": {}}',
        '{"t": 1.0, "topic": "a/b", "retain": 0, "qos": 1, "payload": {}}',
        '{"t": 1.0, "topic": "a/b", "retain": false, "qos": 3, "payload": {}}',
        '{"t": 1.0, "topic": "a/b", "retain": false, "qos": 1}',
        '{"t": NaN, "marker": "x"}',
        b"\xff\xfe garbage",
        "{" * 100_000,
    ],
)
def test_a_malformed_line_is_an_input_finding_and_the_rest_is_checked(bad: str | bytes) -> None:
    lines: list[Any] = [json.dumps(line) for line in valid_stream().lines]
    lines.insert(5, bad)
    findings = run(lines)
    assert [f.rule for f in findings] == ["input"]
    assert findings[0].line == 6


def test_a_mapping_with_a_non_json_payload_is_an_input_finding() -> None:
    findings = run([{"t": 1.0, "topic": f"{PREFIX}/alarms", "retain": False, "qos": 1, "payload": object()}])
    assert [f.rule for f in findings] == ["input"]


# --------------------------------------------------------------------------------------------------
# b: msg_id
# --------------------------------------------------------------------------------------------------


def test_identical_redeliveries_in_any_order_are_deduplicated() -> None:
    s = valid_stream()
    again = [copy.deepcopy(line) | {"t": line["t"] + 100} for line in s.lines if "payload" in line]
    assert run(s.lines + again[::-1]) == []


def test_one_msg_id_with_two_payloads_is_flagged() -> None:
    s = valid_stream()
    started = payload(s, "S-A", "session.started")
    changed = copy.deepcopy(started) | {"meter_wh": started["meter_wh"] + 1}
    s.deliver(f"{PREFIX}/connectors/1/events", changed)
    findings = only(run(s.lines), "msg_id")
    assert len(findings) == 1
    assert findings[0].msg_id == started["msg_id"]
    assert "different payload" in findings[0].message


def test_one_msg_id_on_two_topics_is_flagged() -> None:
    s = valid_stream()
    started = payload(s, "S-A", "session.started")
    s.deliver(f"{PREFIX}/connectors/2/events", copy.deepcopy(started))
    assert "different topic" in only(run(s.lines), "msg_id")[0].message


def test_a_session_started_regenerated_after_a_restart_is_flagged() -> None:
    """The agent re-created session.started (same seq and content) under a new msg_id."""
    s = valid_stream()
    started = payload(s, "S-F", "session.started")
    s.deliver(f"{PREFIX}/connectors/2/events", copy.deepcopy(started) | {"msg_id": s.msg_id()})
    findings = only(run(s.lines), "msg_id")
    assert "regenerated" in findings[0].message
    assert findings[0].session_id == "S-F"


def test_a_regenerated_meter_value_and_receipt_are_flagged() -> None:
    s = valid_stream()
    meter = payload(s, "S-A", "meter")
    receipt = payload(s, "S-A", "receipt")
    s.deliver(f"{PREFIX}/connectors/1/meter", copy.deepcopy(meter) | {"msg_id": s.msg_id()})
    s.deliver(f"{PREFIX}/receipts", copy.deepcopy(receipt) | {"msg_id": s.msg_id()})
    findings = only(run(s.lines), "msg_id")
    assert len(findings) == 2
    assert all("regenerated" in f.message for f in findings)


def test_a_doubled_session_started_with_a_new_msg_id_and_seq_is_flagged() -> None:
    """A second session.started without the restore (session.updated resumed) in between."""
    s = connected()
    s.event(1, "S-1", "payment.authorized", terminal_session_id="T-1", authorized_minor=5000)
    s.event(1, "S-1", "session.started", method="emv", meter_wh=0)
    s.tick()
    s.event(1, "S-1", "session.started", method="emv", meter_wh=0)
    s.event(1, "S-1", "payment.captured", terminal_session_id="T-1", amount_minor=0)
    s.event(1, "S-1", "session.ended", reason="tap", energy_wh=0, cost_minor=0, amount_minor=0)
    s.receipt(1, "S-1", "captured", captured_minor=0, terminal_session_id="T-1")
    assert "second session.started (seq 2) after seq 1" in only(run(s.lines), "session")[0].message
    lenient = only(run(s.lines, lenient_sessions=True), "session")[0].message
    assert "without a session.updated (resolution resumed) in between" in lenient


# --------------------------------------------------------------------------------------------------
# a: seq
# --------------------------------------------------------------------------------------------------


def test_a_seq_gap_is_flagged() -> None:
    s = valid_stream()
    lines = without(s, payload(s, "S-A", "payment.incremented"))  # seq 2 of 0-4
    findings = of(run(lines), "seq")
    assert len(findings) == 1
    assert "seq 2 missing" in findings[0].message
    assert findings[0].session_id == "S-A"


def test_events_that_do_not_start_at_zero_are_flagged() -> None:
    s = valid_stream()
    lines = without(s, payload(s, "S-A", "payment.authorized"))
    findings = of(run(lines), "seq")
    assert "do not start at 0" in findings[0].message


def test_a_seq_repeat_with_a_different_payload_is_flagged() -> None:
    s = valid_stream()
    ended = payload(s, "S-B", "session.ended")
    other = copy.deepcopy(ended) | {"msg_id": s.msg_id(), "reason": "remote"}
    s.deliver(f"{PREFIX}/connectors/2/events", other)
    findings = only(run(s.lines), "seq")
    assert "seq 2 reused by two different events" in findings[0].message


def test_a_meter_seq_repeat_with_a_different_value_is_flagged_but_gaps_are_not() -> None:
    s = valid_stream()
    meter = payload(s, "S-A", "meter", 1)
    assert run(without(s, meter)) == []  # the outbox may drop meter values
    s.deliver(f"{PREFIX}/connectors/1/meter", copy.deepcopy(meter) | {"msg_id": s.msg_id(), "power_w": 1})
    assert "reused by two different meter values" in only(run(s.lines), "seq")[0].message


# --------------------------------------------------------------------------------------------------
# c: sessions
# --------------------------------------------------------------------------------------------------


def test_session_ended_without_session_started_is_flagged() -> None:
    s = valid_stream()
    findings = of(run(without(s, payload(s, "S-B", "session.started"))), "session")
    assert "session.ended (seq 2) without a session.started" in findings[0].message
    s = connected()
    s.event(1, "S-1", "payment.authorized", terminal_session_id="T-1", authorized_minor=5000)
    s.event(1, "S-1", "payment.captured", terminal_session_id="T-1", amount_minor=300)
    s.event(1, "S-1", "session.ended", reason="tap", energy_wh=1000, cost_minor=300, amount_minor=300)
    s.receipt(1, "S-1", "captured", lines=(("energy", 300),), captured_minor=300, terminal_session_id="T-1")
    assert "without a session.started" in only(run(s.lines), "session")[0].message


def test_two_session_ended_and_events_after_the_end_are_flagged() -> None:
    s = connected()
    s.event(1, "S-1", "payment.authorized", terminal_session_id=None, authorized_minor=None)
    s.event(1, "S-1", "session.started", method="rfid", meter_wh=0)
    s.event(1, "S-1", "session.ended", reason="tap", energy_wh=0, cost_minor=0, amount_minor=0)
    s.event(1, "S-1", "session.ended", reason="tap", energy_wh=0, cost_minor=0, amount_minor=0)
    s.event(1, "S-1", "session.started", method="rfid", meter_wh=0)
    s.receipt(1, "S-1", "account", method="rfid")
    messages = [f.message for f in only(run(s.lines), "session")]
    assert any("session.ended 2 times" in m for m in messages)
    assert any("session.started (seq 4) after session.ended (seq 2)" in m for m in messages)


def test_session_updated_as_the_first_event_is_flagged() -> None:
    s = connected()
    s.event(
        1, "S-1", "session.updated", reason="restored", resolution="ended", terminal_session_id=None,
        method="remote", plugged=False,
    )  # fmt: skip
    s.receipt(1, "S-1", "account", method="remote")
    assert "first event" in only(run(s.lines), "session")[0].message


def test_complete_requires_every_started_session_to_end() -> None:
    s = connected()
    s.event(1, "S-1", "payment.authorized", terminal_session_id=None, authorized_minor=None)
    s.event(1, "S-1", "session.started", method="rfid", meter_wh=0)
    assert run(s.lines, complete=False) == []
    assert "no session.ended" in only(run(s.lines), "session")[0].message


def test_a_session_on_two_connectors_is_flagged() -> None:
    s = connected()
    s.event(1, "S-1", "payment.authorized", terminal_session_id=None, authorized_minor=None)
    s.event(2, "S-1", "session.started", method="rfid", meter_wh=0)
    assert "several connectors" in only(run(s.lines, complete=False), "session")[0].message


# --------------------------------------------------------------------------------------------------
# d: payments
# --------------------------------------------------------------------------------------------------


def test_authorized_without_capture_or_void_is_flagged_with_complete() -> None:
    s = connected()
    s.event(1, "S-1", "payment.authorized", terminal_session_id="T-1", authorized_minor=5000)
    assert run(s.lines, complete=False) == []
    findings = only(run(s.lines), "payment")
    assert "never captured or voided" in findings[0].message
    s.event(1, "S-1", "payment.failed", terminal_session_id="T-1", stage="void", reason="terminal refuses")
    assert "terminal refuses" in only(run(s.lines), "payment")[0].message


def test_captured_and_voided_is_flagged() -> None:
    s = valid_stream()
    s.event(1, "S-A", "payment.voided", terminal_session_id="T-A")
    messages = [f.message for f in run(s.lines)]
    assert any("settled 2 times" in m for m in messages)


def test_captured_differs_from_ended_differs_from_receipt() -> None:
    s = connected()
    s.event(1, "S-1", "payment.authorized", terminal_session_id="T-1", authorized_minor=5000)
    s.event(1, "S-1", "session.started", method="emv", meter_wh=0)
    s.event(1, "S-1", "payment.captured", terminal_session_id="T-1", amount_minor=700)
    s.event(1, "S-1", "session.ended", reason="tap", energy_wh=2000, cost_minor=700, amount_minor=690)
    s.receipt(1, "S-1", "captured", lines=(("energy", 680),), captured_minor=680, terminal_session_id="T-1")
    findings = run(s.lines)
    assert "captured 700 but session.ended (seq 3) amount_minor 690" in of(findings, "payment")[0].message
    receipt = [f.message for f in of(findings, "receipt")]
    assert any("captured 700 but the receipt's captured_minor 680" in m for m in receipt)
    assert any("total_minor 680 but session.ended amount_minor 690" in m for m in receipt)


def test_captured_above_the_authorized_total_unless_incremented() -> None:
    def stream(increment: bool) -> Stream:
        s = connected()
        s.event(1, "S-1", "payment.authorized", terminal_session_id="T-1", authorized_minor=5000)
        s.event(1, "S-1", "session.started", method="emv", meter_wh=0)
        if increment:
            s.event(1, "S-1", "payment.incremented", terminal_session_id="T-1", authorized_minor=9000)
        s.event(1, "S-1", "payment.captured", terminal_session_id="T-1", amount_minor=7000)
        s.event(1, "S-1", "session.ended", reason="tap", energy_wh=20000, cost_minor=7000, amount_minor=7000)
        s.receipt(
            1, "S-1", "captured", lines=(("energy", 7000),), captured_minor=7000, terminal_session_id="T-1",
            energy_wh=20000,
        )  # fmt: skip
        return s

    assert run(stream(increment=True).lines) == []
    assert "above the authorized total 5000" in only(run(stream(increment=False).lines), "payment")[0].message


def test_increment_that_does_not_raise_and_wrong_terminal_session_are_flagged() -> None:
    s = connected()
    s.event(1, "S-1", "payment.authorized", terminal_session_id="T-1", authorized_minor=5000)
    s.event(1, "S-1", "payment.incremented", terminal_session_id="T-1", authorized_minor=4000)
    s.event(1, "S-1", "payment.voided", terminal_session_id="T-2")
    messages = [f.message for f in only(run(s.lines, complete=False), "payment")]
    assert any("does not raise 5000" in m for m in messages)
    assert any("is not the authorization's 'T-1'" in m for m in messages)


def test_declined_payment_with_a_void_and_settlement_without_authorization() -> None:
    s = connected()
    s.event(1, "S-1", "payment.declined", outcome="declined")
    s.event(1, "S-1", "payment.voided", terminal_session_id="T-1")
    s.receipt(1, "S-1", "declined")
    messages = [f.message for f in of(run(s.lines), "payment")]
    assert any("declined payment has a payment.voided" in m for m in messages)
    assert any("without an authorization before it" in m for m in messages)


def test_two_authorizations_and_a_voided_session_that_charges_are_flagged() -> None:
    s = connected()
    s.event(1, "S-1", "payment.authorized", terminal_session_id="T-1", authorized_minor=5000)
    s.event(1, "S-1", "payment.partially_approved", terminal_session_id="T-1", authorized_minor=800)
    s.event(1, "S-1", "payment.voided", terminal_session_id="T-1")
    s.event(1, "S-1", "session.ended", reason="timeout", energy_wh=0, cost_minor=0, amount_minor=100)
    s.receipt(1, "S-1", "voided", terminal_session_id="T-1")
    messages = [f.message for f in run(s.lines)]
    assert any("2 authorizations" in m for m in messages)
    assert any("voided payment but session.ended amount_minor 100" in m for m in messages)


# --------------------------------------------------------------------------------------------------
# e: receipts
# --------------------------------------------------------------------------------------------------


def test_receipt_lines_must_add_up_to_the_total() -> None:
    s = valid_stream()
    receipt = payload(s, "S-E", "receipt")  # energy 1050 + cap_adjustment -250 = 800
    receipt["lines"][1]["gross_minor"] = -240
    receipt["lines"][1]["vat_minor"] += 10
    messages = [f.message for f in run(s.lines) if f.rule == "receipt"]
    assert any("lines add up to 810, total_minor is 800" in m for m in messages)
    assert any("vat_minor add up to" in m for m in messages)


def test_a_line_whose_net_and_vat_do_not_make_its_gross() -> None:
    s = valid_stream()
    payload(s, "S-B", "receipt")["lines"][0]["net_minor"] += 1
    messages = [f.message for f in only(run(s.lines), "receipt")]
    assert any("net 145 + VAT 31 != gross 175" in m for m in messages)


def test_every_ended_declined_and_voided_session_has_a_receipt_with_complete() -> None:
    s = valid_stream()
    lines = without(s, *(payload(s, sid, "receipt") for sid in ("S-A", "S-C", "S-D", "S-G")))
    assert run(lines, complete=False) == []
    findings = only(run(lines), "receipt")
    assert {f.session_id for f in findings} == {"S-A", "S-C", "S-D"}  # S-G: nothing says it is over


def test_two_receipts_for_one_session_and_a_receipt_id_that_is_not_the_session() -> None:
    s = valid_stream()
    receipt = payload(s, "S-B", "receipt")
    s.deliver(f"{PREFIX}/receipts", copy.deepcopy(receipt) | {"msg_id": s.msg_id(), "receipt_id": "R-2"})
    messages = [f.message for f in only(run(s.lines), "receipt")]
    assert any("2 receipts for one session" in m for m in messages)
    assert any("receipt_id 'R-2' is not the session id" in m for m in messages)


def test_a_receipt_before_the_session_ended_is_flagged() -> None:
    s = valid_stream()
    lines = without(s, payload(s, "S-B", "session.ended"))
    messages = [f.message for f in run(lines, complete=False)]
    assert messages == ["receipt of a started session that has no session.ended"]


def test_a_receipt_of_a_session_without_events_and_a_voided_one_without_its_void() -> None:
    s = valid_stream()
    messages = [f.message for f in run(without(s, payload(s, "S-C", "payment.declined")))]
    assert "receipt of a session without any event" in messages
    messages = [f.message for f in run(without(s, payload(s, "S-D", "payment.voided")))]
    assert "receipt status voided but the session has no payment.voided" in messages


def test_receipt_status_must_agree_with_the_events() -> None:
    s = valid_stream()
    payload(s, "S-D", "receipt")["status"] = "captured"
    payload(s, "S-C", "receipt")["status"] = "voided"
    payload(s, "S-A", "receipt")["status"] = "account"
    messages = [f.message for f in only(run(s.lines), "receipt")]
    assert any("status captured but the session has no payment.captured" in m for m in messages)
    assert any("receipt status 'captured' after payment.voided" in m for m in messages)
    assert any("receipt status 'voided' after payment.declined" in m for m in messages)
    assert any("receipt status 'account' after payment.captured" in m for m in messages)


def test_a_voided_receipt_charges_nothing() -> None:
    s = connected()
    s.event(1, "S-1", "payment.authorized", terminal_session_id="T-1", authorized_minor=5000)
    s.event(1, "S-1", "payment.voided", terminal_session_id="T-1")
    s.receipt(1, "S-1", "voided", lines=(("energy", 100),), terminal_session_id="T-1")
    assert "a voided receipt charges nothing" in only(run(s.lines), "receipt")[0].message


# --------------------------------------------------------------------------------------------------
# f: meter
# --------------------------------------------------------------------------------------------------


def test_meter_energy_decreasing_is_flagged() -> None:
    s = valid_stream()
    payload(s, "S-A", "meter", 2)["energy_wh"] = 1500  # after 2000
    findings = only(run(s.lines), "meter")
    assert "energy_wh decreases from 2000 (seq 1) to 1500 (seq 2)" in findings[0].message


def test_meter_register_decreasing_is_flagged() -> None:
    s = valid_stream()
    payload(s, "S-A", "meter", 1)["meter_wh"] = 10_500  # after 11 000
    assert "meter_wh decreases from 11000 (seq 0) to 10500 (seq 1)" in only(run(s.lines), "meter")[0].message


def test_session_ended_energy_below_the_last_meter_value_is_flagged() -> None:
    s = valid_stream()
    payload(s, "S-B", "session.ended")["energy_wh"] = 400
    assert "energy_wh 400 below the last meter value's 500" in only(run(s.lines), "meter")[0].message


def test_meter_values_without_session_started_are_flagged() -> None:
    s = connected()
    s.meter(1, "S-9", meter_wh=1, energy_wh=1)
    assert "without any event" in only(run(s.lines), "meter")[0].message
    s = connected()
    s.event(1, "S-1", "payment.authorized", terminal_session_id=None, authorized_minor=None)
    s.meter(1, "S-1", meter_wh=1, energy_wh=1)
    assert "without session.started" in only(run(s.lines, complete=False), "meter")[0].message


# --------------------------------------------------------------------------------------------------
# g: offline
# --------------------------------------------------------------------------------------------------


def test_offline_false_inside_a_broker_down_window_is_flagged() -> None:
    s = valid_stream()
    payload(s, "S-E", "session.started")["offline"] = False
    findings = only(run(s.lines), "offline")
    assert "while the agent was disconnected" in findings[0].message
    assert "(broker_down)" in findings[0].message


def test_offline_true_while_connected_is_flagged() -> None:
    s = valid_stream()
    payload(s, "S-A", "meter", 1)["offline"] = True
    assert "while the agent was connected" in only(run(s.lines), "offline")[0].message


def test_offline_flag_near_a_window_edge_or_in_an_unknown_window_is_not_checked() -> None:
    s = connected()
    s.broker_down().tick(1.5)
    s.event(1, "S-1", "payment.authorized", terminal_session_id=None, authorized_minor=None)  # offline
    s.tick(5).marker("broker_up").tick(5)
    s.event(1, "S-1", "session.started", method="rfid", meter_wh=0)  # offline, reconnecting: unknown
    s.tick(5).birth().tick(1.5)
    s.event(1, "S-1", "session.ended", reason="tap", energy_wh=0, cost_minor=0, amount_minor=0)
    s.receipt(1, "S-1", "account", method="rfid")
    lines = copy.deepcopy(s.lines)
    for line in lines:
        p = line.get("payload", {})
        if "offline" in p:
            p["offline"] = not p["offline"]
    assert run(lines) == []
    assert of(run(lines, tolerance_s=1.0), "offline")  # the edges are 1.5 s away


def test_the_last_will_opens_an_offline_window() -> None:
    s = connected()
    s.will().tick(5)
    s.event(1, "S-1", "payment.declined", outcome="failed")  # created while dead? a new process
    s.tick(5).birth().tick(3)
    s.receipt(1, "S-1", "failed")
    assert run(s.lines) == []
    payload(s, "S-1", "payment.declined")["offline"] = False
    assert "(status offline (live))" in only(run(s.lines), "offline")[0].message


def test_a_retained_birth_at_subscription_opens_a_connected_window() -> None:
    s = Stream()
    s.marker("capture_up").tick(0.01)
    s.connected = True
    s.status("online", retain=True)
    s.tick(5)
    s.event(1, "S-1", "payment.declined", outcome="declined", offline=True)
    s.receipt(1, "S-1", "declined")
    findings = of(run(s.lines), "offline")
    assert "status online (retained)" in findings[0].message


def test_offline_is_not_checked_before_any_evidence() -> None:
    s = Stream()
    s.connected = True  # no birth captured
    s.event(1, "S-1", "payment.declined", outcome="declined", offline=True)
    s.receipt(1, "S-1", "declined")
    assert run(s.lines) == []


@pytest.mark.parametrize(
    ("evidence", "link"),
    [
        ([("status", "online", False)], Link.CONNECTED),
        ([("status", "online", False), ("marker", "broker_down")], Link.DISCONNECTED),
        ([("marker", "broker_down"), ("marker", "capture_down")], Link.DISCONNECTED),
        # Mosquitto publishes the wills as it shuts down: the broker is still down afterwards
        (
            [("marker", "broker_down"), ("status", "offline", False), ("marker", "capture_down")],
            Link.DISCONNECTED,
        ),
        ([("marker", "broker_down"), ("marker", "agent_killed"), ("marker", "broker_up")], Link.UNKNOWN),
        ([("marker", "broker_down"), ("marker", "broker_up")], Link.UNKNOWN),
        ([("marker", "broker_down"), ("marker", "capture_up")], Link.UNKNOWN),
        ([("status", "online", False), ("marker", "capture_down")], Link.UNKNOWN),
        ([("status", "offline", False), ("marker", "agent_started")], Link.DISCONNECTED),
        ([("status", "online", False), ("marker", "agent_killed")], Link.DISCONNECTED),
        ([("status", "offline", False), ("marker", "capture_down")], Link.UNKNOWN),
        ([("marker", "capture_down"), ("status", "online", True)], Link.CONNECTED),
        ([("status", "online", False), ("marker", "some note")], Link.CONNECTED),
    ],
)
def test_timeline_evidence(evidence: list[tuple[Any, ...]], link: Link) -> None:
    timeline = Timeline()
    for t, item in enumerate(evidence):
        if item[0] == "status":
            timeline.status(float(t), item[1], retained=item[2])
        else:
            timeline.marker(float(t), item[1])
    assert timeline.link is link
    assert timeline.locate(100.0).link is link
    assert timeline.windows()[-1].link is link


@pytest.mark.parametrize(
    ("evidence", "link"),
    [
        ([(0, "online"), (1, "broker_hang")], Link.UNKNOWN),
        # shorter than the agent's PUBACK watchdog: it cannot have dropped the link
        ([(0, "online"), (1, "broker_hang"), (6, "broker_hang_over")], Link.CONNECTED),
        # longer: connected again only with the agent's next birth
        ([(0, "online"), (1, "broker_hang"), (13, "broker_hang_over")], Link.UNKNOWN),
        ([(0, "online"), (1, "broker_hang"), (13, "broker_hang_over"), (14, "online")], Link.CONNECTED),
        # a short hang does not undo what other evidence said meanwhile
        (
            [(0, "online"), (1, "broker_hang"), (2, "agent_killed"), (3, "broker_hang_over")],
            Link.DISCONNECTED,
        ),
        ([(0, "online"), (5, "broker_hang_over")], Link.CONNECTED),  # no hang began: no change
    ],
)
def test_timeline_broker_hang(evidence: list[tuple[float, str]], link: Link) -> None:
    """Issue 12: the fuzzer's hung broker; a message stamped inside the hang may carry either flag."""
    timeline = Timeline()
    for t, name in evidence:
        if name == "online":
            timeline.status(float(t), "online", retained=False)
        else:
            timeline.marker(float(t), name)
    assert timeline.link is link


# --------------------------------------------------------------------------------------------------
# h: schema
# --------------------------------------------------------------------------------------------------


def test_an_unknown_event_name_is_flagged() -> None:
    s = connected()
    s.event(1, "S-1", "payment.refunded", terminal_session_id="T-1")
    assert "unknown event name 'payment.refunded'" in only(run(s.lines), "schema")[0].message


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("seq", "1", ".seq: expected an integer"),
        ("amount_minor", -1, ".amount_minor: expected an integer >= 0"),
        ("energy_wh", 1.5, ".energy_wh: expected an integer"),
        ("energy_wh", True, ".energy_wh: expected an integer"),
        ("session_id", "", ".session_id: expected a non-empty string"),
        ("ts", "2026-01-01 10:00:00", ".ts: '2026-01-01 10:00:00' is not an ISO 8601"),
        ("ts", "2026-13-01T10:00:00Z", "is not an ISO 8601"),
        ("msg_id", "ABC", ".msg_id: 'ABC' does not match"),
        ("reason", "bored", ".reason: 'bored' is not one of"),
        ("offline", "no", ".offline: expected a boolean"),
        ("connector_id", 0, ".connector_id: expected an integer >= 1"),
        ("cost_minor", None, ".cost_minor: expected an integer"),
    ],
)
def test_field_types_are_checked(field: str, value: Any, expected: str) -> None:
    s = valid_stream()
    payload(s, "S-B", "session.ended")[field] = value
    messages = [f.message for f in run(s.lines, complete=False) if f.rule == "schema"]
    assert any(expected in m for m in messages), messages


def test_a_missing_required_field_is_flagged() -> None:
    s = valid_stream()
    del payload(s, "S-A", "payment.captured")["amount_minor"]
    del payload(s, "S-A", "meter")["energy_wh"]
    del payload(s, "S-A", "receipt")["currency"]
    messages = [f.message for f in run(s.lines) if f.rule == "schema"]
    assert any(".amount_minor: required field missing" in m for m in messages)
    assert any(".energy_wh: required field missing" in m for m in messages)
    assert any(".currency: required field missing" in m for m in messages)


def test_contract_changes_meter_wh_null_and_any_updated_reason_are_accepted() -> None:
    s = valid_stream()
    payload(s, "S-F", "session.updated")["reason"] = "tariff_changed"
    payload(s, "S-A", "session.started")["meter_wh"] = None
    del payload(s, "S-E", "session.started")["meter_wh"]
    payload(s, "S-A", "meter", 0)["power_w"] = None
    del payload(s, "S-A", "meter", 1)["power_w"]
    assert run(s.lines) == []


def test_payloads_that_are_not_json_objects_and_unknown_topics() -> None:
    s = valid_stream()
    s.deliver(f"{PREFIX}/connectors/1/events", {"_raw_b64": "AAEC"})
    s.deliver(f"{PREFIX}/alarms", [1, 2])  # type: ignore[arg-type]
    last = payload(s, "S-A", "meter", 2)
    s.deliver(f"{PREFIX}/connectors/x/meter", last | {"msg_id": s.msg_id(), "seq": 9})
    s.deliver(f"{PREFIX}/sessions", {"x": 1})
    s.deliver(f"{PREFIX}/status", {"state": "sleeping"})
    messages = [f.message for f in only(run(s.lines, prefix=PREFIX), "schema")]
    assert "payload is not JSON" in messages
    assert "payload is not a JSON object" in messages
    assert "connector level 'x' of the topic is not a number" in messages
    assert "topic under the prefix is not a topic of the contract" in messages
    assert any(m.startswith("status: .state:") for m in messages)


def test_a_connector_id_that_differs_from_the_topic() -> None:
    s = valid_stream()
    started = payload(s, "S-B", "session.started")
    for line in s.lines:
        if line.get("payload") is started:
            line["topic"] = f"{PREFIX}/connectors/3/events"
    assert "connector_id 2 but the topic is connector 3" in only(run(s.lines), "schema")[0].message


def test_retained_state_commands_auth_and_other_stations_are_ignored() -> None:
    s = valid_stream()
    garbage: list[Any] = [{"_raw_b64": "//8="}, [1], "x", {"state": 7}]
    for topic in ("terminal", "connectors/1/state", "cmd/start", "cmd/start/result", "auth/request"):
        for value in garbage:
            s.deliver(f"{PREFIX}/{topic}", value)
    s.deliver(f"{PREFIX}/status", {"_raw_b64": ""})  # a retained topic cleared
    s.deliver("evpay/v1/ST-2/connectors/1/events", {"event": "nonsense"})
    assert run(s.lines, prefix=PREFIX) == []
    assert [f.topic for f in run(s.lines)] == ["evpay/v1/ST-2/connectors/1/events"] * 2  # both stations


def test_an_unrelated_topic_without_a_prefix_is_flagged() -> None:
    s = valid_stream()
    s.deliver("somewhere/else", {"x": 1})
    assert only(run(s.lines), "schema")[0].topic == "somewhere/else"


def test_two_stations_are_checked_apart() -> None:
    a, b = valid_stream(), valid_stream()
    for line in b.lines:
        if "topic" in line:
            line["topic"] = line["topic"].replace("ST-1", "ST-2")
            if "msg_id" in line["payload"]:  # random UUIDs: never the same on two stations
                line["payload"]["msg_id"] = line["payload"]["msg_id"].replace("-8000-", "-9000-")
    assert run(a.lines + b.lines) == []
    payload(b, "S-E", "session.started")["offline"] = False
    findings = only(run(a.lines + b.lines), "offline")
    assert findings[0].topic is not None
    assert findings[0].topic.startswith("evpay/v1/ST-2/")


def test_finding_text_and_json() -> None:
    finding = Finding("seq", "gap", session_id="S-1", topic="t", msg_id="m", line=3)
    assert str(finding) == "seq: gap [session=S-1 topic=t msg_id=m line=3]"
    assert finding.to_json() == {
        "rule": "seq", "message": "gap", "session_id": "S-1", "topic": "t", "msg_id": "m", "line": 3,
    }  # fmt: skip
    assert str(Finding("input", "bad")) == "input: bad"


def test_timestamps_are_read_as_utc() -> None:
    assert iso(0.0) == "1970-01-01T00:00:00.000Z"
