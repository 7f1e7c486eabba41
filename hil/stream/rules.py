"""Check a captured upstream stream against the public contract (docs/upstream.md, docs/asyncapi.yaml).

``python -m hil.check_stream FILE [--prefix PREFIX] [--complete] [--json] [--tolerance S]
[--lenient-sessions]`` or :func:`check`. An independent reading of the contract — JSON over MQTT, as
a back office sees it — that imports nothing of the agent, so it cannot share the agent's bugs.

Input: the lines of :mod:`hil.stream.lines` (messages and markers), processed in capture-time order.
Retained state (``status``, ``terminal``, ``connectors/{id}/state``) is ignored except ``status``,
which feeds rule ``offline``; ``auth/…`` and ``cmd/…`` are ignored. Everything else is an outbox
message: events, meter values, receipts, reconciliation reports and alarms.

Rules (a finding's ``rule``) and why:

``input``
    A line that is not a message or a marker (not UTF-8, not JSON, a field missing or of the wrong
    type — e.g. the last line of a capture killed mid-write). Such a line is skipped, never a crash.

``msg_id`` (b: one ``msg_id`` per logical message)
    Delivery is at least once and "a repeat is always identical" (upstream.md, "msg_id, seq,
    offline"): a repeat with the same ``msg_id`` on the same topic with the same payload is dropped
    before any other rule runs. The same ``msg_id`` with a different payload (or topic) is a finding:
    a back office that de-duplicates on ``msg_id`` would lose one of them. The same logical message
    — same station, session, topic and ``seq`` for events and meter values, same ``receipt_id`` for
    receipts — under two ``msg_id`` values and otherwise equal is a finding ("regenerated"): the
    agent re-created a message instead of republishing it (e.g. after a restart), and a back office
    counts it twice. The first arrival is the one the other rules see.

``schema`` (h)
    Each payload against its shape in :mod:`hil.stream.schema` (required fields, JSON types, integers
    >= 0 for ``*_minor``/``*_wh``/``seq``, known enumerations, timestamps ISO 8601 UTC with ``Z``);
    unknown event names; a payload that is not a JSON object; a ``connector_id`` that differs from
    the topic's; a topic under the prefix that the contract does not define. A back office parses
    exactly this. Messages keep taking part in the other rules as far as their fields allow.

``seq`` (a)
    Per session, the events' ``seq`` are 0, 1, 2, … without a gap ("a gap means a lost message"):
    a missing number is a lost event. Two *different* messages with one ``seq`` (events or meter
    values) are a finding: ``seq`` orders a session and may never be reused. Meter values may have
    gaps (the full outbox drops the oldest meter values first), so meter ``seq`` need only be unique.

``session`` (c)
    Per session at most one ``session.started`` and at most one ``session.ended``; the end only
    after the start (a payment authorized and voided before energy ever flowed has neither);
    nothing after the end (in ``seq`` order); a ``session.updated`` never as the session's first
    event (it reports a restored session, which had events before). With ``--complete`` every
    ``session.started`` has its ``session.ended``. A session's events and meter values are all on
    one connector. A back office opens and closes its session record on these two events: a second
    start would open it twice, an end without a start closes nothing. (Contract 1.1.0, in
    ``agent/upstream/contract.py``: a resume after a restart is a ``session.updated``, not a second
    start.) ``--lenient-sessions`` accepts what docs/upstream.md still describes for contract 1.0.0: a
    second ``session.started`` after a ``session.updated`` with ``resolution: resumed`` (next
    ``seq``, new ``msg_id``), and a ``session.ended`` without ``session.started`` when nothing was
    delivered (``energy_wh`` and ``amount_minor`` 0: voided on the plug-in timeout).

``payment`` (d)
    A session has at most one authorization (``payment.authorized`` / ``payment.partially_approved``).
    An authorization with a ``terminal_session_id`` (EMV; RFID authorizations have none and are never
    settled on a terminal) ends in exactly one ``payment.captured`` or ``payment.voided``: never both,
    never two, and with ``--complete`` never none (``payment.failed`` does not settle it: the money
    is still at risk). Settlement and ``payment.incremented`` come after the authorization, with its
    ``terminal_session_id``; an increment raises the authorized total and comes before the
    settlement. ``payment.captured.amount_minor`` <= the authorized total at that point (the
    authorization, raised by increments). The captured amount equals the ``session.ended``
    ``amount_minor`` (what was captured); after a void it is 0. A declined payment has no capture
    or void. Money must add up end to end.

``receipt`` (e)
    At most one receipt per session (RCPT-1), its ``receipt_id`` the session id (upstream.md); a
    receipt belongs to a session seen in the events, and a started session's receipt comes with its
    ``session.ended``. With ``--complete`` every finished session has one: ended, declined, or
    voided (before energy, so without ``session.ended``). (An RFID authorization that never
    started gets a receipt too, but nothing in the stream says it is over: not required.) The
    lines' ``gross_minor`` add up to ``total_minor`` (and ``net_minor``/``vat_minor`` to theirs; a
    line's net + VAT = gross), including a negative ``cap_adjustment`` line when the session hit its
    authorized cap. Its status agrees with the events: ``captured`` iff there is a
    ``payment.captured``, and then ``captured_minor`` = ``total_minor`` = the captured amount;
    ``voided`` iff there is a void (and no capture); ``declined``/``failed`` after a decline;
    ``voided``, ``declined``, ``failed`` and ``free_vend`` charge nothing (total 0); ``account``
    totals the ``session.ended`` ``amount_minor``. A back office bills from the receipt: it must
    say what the events say.

``meter`` (f)
    Per session in ``seq`` order ``energy_wh`` and ``meter_wh`` never decrease (a register and a
    session total only grow); ``session.ended.energy_wh`` >= the last meter value's ``energy_wh``;
    meter values belong to a session that has a ``session.started`` (energy flows only after it).

``offline`` (g)
    ``offline: true`` marks a message created while the agent had no broker connection. From the
    ``status`` messages and the markers (:mod:`hil.stream.timeline`) the capture knows windows in
    which the agent was connected or disconnected; an event or meter value whose ``ts`` (its creation
    time, the agent's clock) lies in a disconnected window must have ``offline: true``, and in a
    connected window ``offline: false`` — unless it is within the tolerance (default 2 s) of a
    window edge: ``ts`` is the agent's clock (a meter value's, when the charger reported it), ``t``
    the capture's arrival time, and the agent learns of a lost connection a moment after it
    happens. Windows whose state is unknown (the capture was blind, or the broker is back but the
    agent's birth has not arrived) are not judged.

Exit status of the command: 0 no finding, 1 findings, 2 unreadable input (the file cannot be read,
or not one of its lines is a capture line) or bad arguments.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from hil.stream import schema
from hil.stream.lines import (
    JsonValue,
    LineError,
    MarkerLine,
    MessageLine,
    canonical,
    parse_line,
    raw_payload,
)
from hil.stream.schema import is_int, parse_ts
from hil.stream.timeline import Link, Timeline
from hil.stream.topics import Topic, TopicKind, TopicParser

__all__ = ["DEFAULT_TOLERANCE_S", "RULES", "Finding", "check", "check_file", "main"]

DEFAULT_TOLERANCE_S: Final = 2.0
RULES: Final = ("input", "msg_id", "schema", "seq", "session", "payment", "receipt", "meter", "offline")

_IGNORED: Final = frozenset(
    {TopicKind.TERMINAL, TopicKind.CONNECTOR_STATE, TopicKind.AUTH, TopicKind.COMMAND}
)
_AUTHORIZATIONS: Final = ("payment.authorized", "payment.partially_approved")
_SETTLEMENTS: Final = ("payment.captured", "payment.voided")
_CHARGE_NOTHING: Final = ("voided", "declined", "failed", "free_vend")


@dataclass(frozen=True, slots=True)
class Finding:
    """One breach of the contract. ``line`` is the 1-based input line of the offending message."""

    rule: str
    message: str
    session_id: str | None = None
    topic: str | None = None
    msg_id: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = " ".join(
            f"{key}={value}"
            for key, value in (
                ("session", self.session_id),
                ("topic", self.topic),
                ("msg_id", self.msg_id),
                ("line", self.line),
            )
            if value is not None
        )
        return f"{self.rule}: {self.message}" + (f" [{where}]" if where else "")

    def to_json(self) -> dict[str, str | int | None]:
        return asdict(self)


# --------------------------------------------------------------------------------------------------
# one outbox message after de-duplication
# --------------------------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Msg:
    line: int
    t: float
    topic: str
    where: Topic
    payload: dict[str, JsonValue]
    text: str  # canonical payload

    @property
    def msg_id(self) -> str | None:
        value = self.payload.get("msg_id")
        return value if isinstance(value, str) else None

    @property
    def event(self) -> str | None:
        value = self.payload.get("event")
        return value if isinstance(value, str) and value in schema.EVENTS else None

    @property
    def name(self) -> str:
        """For messages: the event name, else the topic kind."""
        value = self.payload.get("event")
        if self.where.kind is TopicKind.EVENTS:
            return value if isinstance(value, str) else "event"
        return "meter value" if self.where.kind is TopicKind.METER else self.where.kind.value

    @property
    def session_id(self) -> str | None:
        value = self.payload.get("session_id")
        return value if isinstance(value, str) and value else None

    @property
    def seq(self) -> int:
        """The ``seq`` field, -1 when it is not an integer >= 0."""
        value = self.payload.get("seq")
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else -1

    def int_of(self, key: str) -> int | None:
        value = self.payload.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def str_of(self, key: str) -> str | None:
        value = self.payload.get(key)
        return value if isinstance(value, str) else None

    def content(self) -> str:
        """The payload without ``msg_id`` (equal for a regenerated copy)."""
        return canonical({k: v for k, v in self.payload.items() if k != "msg_id"})

    def label(self) -> str:
        seq = self.seq
        return (
            f"{self.name} (seq {seq})"
            if seq >= 0 and self.where.kind is not TopicKind.RECEIPTS
            else self.name
        )


@dataclass(slots=True)
class _Session:
    prefix: str
    session_id: str
    events: dict[int, _Msg] = field(default_factory=dict)  # seq → first arrival
    meter: dict[int, _Msg] = field(default_factory=dict)
    receipts: list[_Msg] = field(default_factory=list)

    def ordered(self) -> list[_Msg]:
        return [self.events[seq] for seq in sorted(self.events)]

    def named(self, *names: str) -> list[_Msg]:
        return [m for m in self.ordered() if m.event in names]

    def first(self, name: str) -> _Msg | None:
        found = self.named(name)
        return found[0] if found else None


def _ranges(numbers: Iterable[int]) -> str:
    ordered = sorted(numbers)
    parts: list[str] = []
    start = prev = ordered[0]
    for number in [*ordered[1:], None]:
        if number is not None and number == prev + 1:
            prev = number
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if number is not None:
            start = prev = number
    return ", ".join(parts)


class _Checker:
    def __init__(
        self, *, complete: bool, prefix: str | None, tolerance_s: float, lenient_sessions: bool
    ) -> None:
        self.complete = complete
        self.parser = TopicParser(prefix)
        self.tolerance_s = tolerance_s
        self.lenient_sessions = lenient_sessions
        self.findings: list[Finding] = []
        self.messages: list[_Msg] = []  # unique outbox messages, arrival order
        self.sessions: dict[tuple[str, str], _Session] = {}
        self.receipts: dict[tuple[str, str], _Msg] = {}  # (prefix, receipt_id) → first arrival
        self.timelines: dict[str, Timeline] = {}

    def add(self, rule: str, message: str, m: _Msg | None = None, *, session_id: str | None = None) -> None:
        self.findings.append(
            Finding(
                rule,
                message,
                session_id=session_id or (m.session_id if m is not None else None),
                topic=m.topic if m is not None else None,
                msg_id=m.msg_id if m is not None else None,
                line=m.line if m is not None else None,
            )
        )

    def session(self, prefix: str, session_id: str) -> _Session:
        key = (prefix, session_id)
        found = self.sessions.get(key)
        if found is None:
            found = self.sessions[key] = _Session(prefix, session_id)
        return found

    # -- reading -------------------------------------------------------------------------------------

    def run(
        self, lines: Iterable[str | bytes | Mapping[str, object] | MessageLine | MarkerLine]
    ) -> list[Finding]:
        parsed: list[tuple[float, int, MessageLine | MarkerLine]] = []
        for number, raw in enumerate(lines, start=1):
            if isinstance(raw, MessageLine | MarkerLine):
                parsed.append((raw.t, number, raw))
                continue
            if isinstance(raw, str | bytes) and not raw.strip():
                continue
            try:
                line = parse_line(raw)
            except LineError as exc:
                self.findings.append(Finding("input", f"line {number}: {exc}", line=number))
                continue
            parsed.append((line.t, number, line))
        parsed.sort(key=lambda item: (item[0], item[1]))
        prefixes = {
            where.prefix
            for _, _, line in parsed
            if isinstance(line, MessageLine) and (where := self.parser(line.topic)) is not None
        }
        self.timelines = {prefix: Timeline() for prefix in sorted(prefixes)}
        seen: dict[str, _Msg] = {}
        variants: dict[str, set[str]] = defaultdict(set)
        for _, number, line in parsed:
            if isinstance(line, MarkerLine):
                for timeline in self.timelines.values():
                    timeline.marker(line.t, line.marker)
            else:
                self.read_message(number, line, seen, variants)
        self.rule_schema()
        self.group()
        for session in self.sessions.values():
            self.rule_seq(session)
            self.rule_session(session)
            self.rule_payment(session)
            self.rule_meter(session)
        self.rule_receipts()
        self.rule_offline()
        order = {rule: index for index, rule in enumerate(RULES)}
        return sorted(self.findings, key=lambda f: order.get(f.rule, len(order)))  # stable within a rule

    def read_message(
        self, number: int, line: MessageLine, seen: dict[str, _Msg], variants: dict[str, set[str]]
    ) -> None:
        where = self.parser(line.topic)
        if where is None:
            if self.parser.prefix is None:
                self.findings.append(
                    Finding("schema", "topic is not a topic of the contract", topic=line.topic, line=number)
                )
            return
        if where.kind is TopicKind.UNKNOWN:
            self.findings.append(
                Finding(
                    "schema",
                    "topic under the prefix is not a topic of the contract",
                    topic=line.topic,
                    line=number,
                )
            )
            return
        if where.kind in _IGNORED:
            return
        payload = line.payload
        raw = raw_payload(payload)
        if raw is not None:
            cleared = where.kind is TopicKind.STATUS and raw == b""  # a retained topic deleted
            if not cleared:
                self.findings.append(Finding("schema", "payload is not JSON", topic=line.topic, line=number))
            return
        if not isinstance(payload, dict):
            self.findings.append(
                Finding("schema", "payload is not a JSON object", topic=line.topic, line=number)
            )
            return
        if where.kind is TopicKind.STATUS:
            problems = schema.validate(schema.STATUS, payload)
            if problems:
                self.findings.append(
                    Finding("schema", f"status: {'; '.join(problems)}", topic=line.topic, line=number)
                )
                return
            state = payload["state"]
            assert isinstance(state, str)
            self.timelines[where.prefix].status(line.t, state, retained=line.retain)
            return
        m = _Msg(number, line.t, line.topic, where, payload, canonical(payload))
        msg_id = m.msg_id
        if msg_id is not None:
            first = seen.get(msg_id)
            if first is not None:
                if first.topic == m.topic and first.text == m.text:
                    return  # an identical re-delivery (at least once)
                variant = f"{m.topic}\n{m.text}"
                if variant not in variants[msg_id]:
                    variants[msg_id].add(variant)
                    what = "a different topic" if first.topic != m.topic else "a different payload"
                    self.add(
                        "msg_id", f"msg_id reused with {what} than its first delivery (line {first.line})", m
                    )
                return
            seen[msg_id] = m
        self.messages.append(m)

    # -- h: schema -----------------------------------------------------------------------------------

    def rule_schema(self) -> None:
        for m in self.messages:
            kind = m.where.kind
            if kind is TopicKind.EVENTS:
                name = m.payload.get("event")
                if not isinstance(name, str) or name not in schema.EVENTS:
                    shown = repr(name)[:60] if isinstance(name, str) else "missing"
                    self.add("schema", f"unknown event name {shown}", m)
                    common = tuple(f for f in schema.EVENT_COMMON if f.name != "event")
                    problems = schema.validate(common, m.payload)
                else:
                    problems = schema.validate(schema.EVENTS[name], m.payload)
            elif kind is TopicKind.METER:
                problems = schema.validate(schema.METER, m.payload)
            elif kind is TopicKind.RECEIPTS:
                problems = schema.validate(schema.RECEIPT, m.payload)
            elif kind is TopicKind.ALARMS:
                problems = schema.validate(schema.ALARM, m.payload)
            else:
                problems = schema.validate(schema.RECONCILIATION, m.payload)
            if problems:
                self.add("schema", f"{m.name}: {'; '.join(problems)}", m)
            if kind in (TopicKind.EVENTS, TopicKind.METER):
                cid = m.int_of("connector_id")
                if m.where.connector_id is None:
                    self.add(
                        "schema",
                        f"connector level {m.where.connector_text!r} of the topic is not a number",
                        m,
                    )
                elif cid is not None and cid != m.where.connector_id:
                    self.add(
                        "schema",
                        f"{m.name}: connector_id {cid} but the topic is connector {m.where.connector_id}",
                        m,
                    )

    # -- grouping and b (regenerated) ------------------------------------------------------------------

    def group(self) -> None:
        for m in self.messages:
            kind = m.where.kind
            if kind is TopicKind.RECEIPTS:
                receipt_id = m.str_of("receipt_id")
                if not receipt_id:
                    continue
                key = (m.where.prefix, receipt_id)
                first = self.receipts.get(key)
                if first is None:
                    self.receipts[key] = m
                    if m.session_id is not None:
                        self.session(m.where.prefix, m.session_id).receipts.append(m)
                    continue
                differs = "" if first.content() == m.content() else " and a different content"
                self.add(
                    "msg_id",
                    f"receipt {receipt_id!r} regenerated: a second msg_id{differs} "
                    f"(first at line {first.line}, msg_id {first.msg_id})",
                    m,
                )
                continue
            if kind not in (TopicKind.EVENTS, TopicKind.METER) or m.session_id is None or m.seq < 0:
                continue
            session = self.session(m.where.prefix, m.session_id)
            stream = session.events if kind is TopicKind.EVENTS else session.meter
            first = stream.get(m.seq)
            if first is None:
                stream[m.seq] = m
            elif first.content() == m.content():
                self.add(
                    "msg_id",
                    f"{m.label()} regenerated: same content as line {first.line} under a second msg_id "
                    f"(first {first.msg_id})",
                    m,
                )
            else:
                what = "events" if kind is TopicKind.EVENTS else "meter values"
                self.add(
                    "seq",
                    f"seq {m.seq} reused by two different {what}: {first.name} (line {first.line}, msg_id "
                    f"{first.msg_id}) and {m.name}",
                    m,
                )

    # -- a: seq --------------------------------------------------------------------------------------

    def rule_seq(self, s: _Session) -> None:
        if not s.events:
            return
        top = max(s.events)
        missing = set(range(top + 1)) - set(s.events)
        if missing:
            first = s.events[min(s.events)]
            head = "do not start at 0; " if 0 in missing else ""
            self.add(
                "seq",
                f"events {head}seq {_ranges(missing)} missing (of 0-{top}): lost event(s)",
                first if 0 in missing else s.events[min(n for n in s.events if n > min(missing))],
                session_id=s.session_id,
            )

    # -- c: sessions ---------------------------------------------------------------------------------

    def rule_session(self, s: _Session) -> None:
        events = s.ordered()
        if not events:
            if s.meter:
                m = s.meter[min(s.meter)]
                self.add("meter", "meter values of a session without any event (no session.started)", m)
            return
        started = s.named("session.started")
        ended = s.named("session.ended")
        if len(ended) > 1:
            seqs = ", ".join(str(m.seq) for m in ended)
            self.add("session", f"session.ended {len(ended)} times (seq {seqs})", ended[1])
        end = ended[0] if ended else None
        if end is not None:
            for m in events:
                if m.seq > end.seq and m.event != "session.ended":
                    self.add("session", f"{m.label()} after session.ended (seq {end.seq})", m)
        for previous, again in itertools.pairwise(started):
            resumed = [
                u
                for u in s.named("session.updated")
                if previous.seq < u.seq < again.seq and u.payload.get("resolution") == "resumed"
            ]
            if not (self.lenient_sessions and resumed):
                why = (
                    " without a session.updated (resolution resumed) in between"
                    if self.lenient_sessions
                    else ""
                )
                self.add(
                    "session",
                    f"second session.started (seq {again.seq}) after seq {previous.seq}{why}",
                    again,
                )
        if end is not None and not any(m.seq < end.seq for m in started):
            delivered = (end.int_of("energy_wh") or 0) > 0 or (end.int_of("amount_minor") or 0) > 0
            if not self.lenient_sessions or delivered:
                detail = (
                    f" though energy_wh {end.int_of('energy_wh')} / "
                    f"amount_minor {end.int_of('amount_minor')} "
                    "were delivered"
                    if delivered
                    else ""
                )
                self.add("session", f"session.ended (seq {end.seq}) without a session.started{detail}", end)
        for u in s.named("session.updated"):
            if u is events[0]:
                self.add("session", f"{u.label()} is the session's first event (nothing to restore)", u)
        if self.complete and started and end is None:
            self.add("session", "session.started but no session.ended (the run is complete)", started[0])
        connectors = {m.int_of("connector_id") for m in [*events, *s.meter.values()]} - {None}
        if len(connectors) > 1:
            shown = ", ".join(str(c) for c in sorted(c for c in connectors if c is not None))
            self.add("session", f"events and meter values on several connectors ({shown})", events[0])

    # -- d: payments ---------------------------------------------------------------------------------

    def rule_payment(self, s: _Session) -> None:
        auths = s.named(*_AUTHORIZATIONS)
        settles = s.named(*_SETTLEMENTS)
        declined = s.named("payment.declined")
        increments = s.named("payment.incremented")
        end = s.first("session.ended")
        if len(auths) > 1:
            self.add("payment", f"{len(auths)} authorizations in one session ({auths[1].label()})", auths[1])
        auth = auths[0] if auths else None
        tsid = auth.str_of("terminal_session_id") if auth is not None else None
        if declined and settles:
            self.add("payment", f"declined payment has a {settles[0].label()}", settles[0])
        if len(settles) > 1:
            both = " and ".join(m.label() for m in settles)
            self.add("payment", f"payment settled {len(settles)} times: {both}", settles[1])
        settle = settles[0] if settles else None
        for m in settles:
            if auth is None or auth.seq > m.seq:
                self.add("payment", f"{m.label()} without an authorization before it", m)
            elif tsid is None:
                self.add("payment", f"{m.label()} of an authorization without terminal_session_id", m)
            elif m.str_of("terminal_session_id") != tsid:
                self.add(
                    "payment",
                    f"{m.label()} terminal_session_id {m.str_of('terminal_session_id')!r} is not the "
                    f"authorization's {tsid!r}",
                    m,
                )
        limit = auth.int_of("authorized_minor") if auth is not None else None
        limits: list[tuple[int, int | None]] = [(auth.seq, limit)] if auth is not None else []
        for m in increments:
            if auth is None or auth.seq > m.seq:
                self.add("payment", f"{m.label()} without an authorization before it", m)
                continue
            if settle is not None and m.seq > settle.seq:
                self.add("payment", f"{m.label()} after the settlement ({settle.label()})", m)
            if tsid is not None and m.str_of("terminal_session_id") != tsid:
                self.add("payment", f"{m.label()} terminal_session_id is not the authorization's {tsid!r}", m)
            new = m.int_of("authorized_minor")
            if new is not None and limit is not None and new <= limit:
                self.add("payment", f"{m.label()} authorized_minor {new} does not raise {limit}", m)
            if new is not None:
                limit = new
                limits.append((m.seq, new))
        captured = s.first("payment.captured")
        voided = s.first("payment.voided")
        if captured is not None:
            amount = captured.int_of("amount_minor")
            at_capture = [value for seq, value in limits if seq < captured.seq]
            cap = at_capture[-1] if at_capture else None
            if amount is not None and cap is not None and amount > cap:
                self.add("payment", f"captured {amount} above the authorized total {cap}", captured)
            ended_amount = end.int_of("amount_minor") if end is not None else None
            if amount is not None and ended_amount is not None and amount != ended_amount:
                self.add(
                    "payment",
                    f"captured {amount} but session.ended (seq {end.seq if end else '?'}) amount_minor "
                    f"{ended_amount}",
                    captured,
                )
        if (
            voided is not None
            and captured is None
            and end is not None
            and (end.int_of("amount_minor") or 0) != 0
        ):
            self.add(
                "payment", f"voided payment but session.ended amount_minor {end.int_of('amount_minor')}", end
            )
        if self.complete and auth is not None and tsid is not None and not settles:
            failed = s.first("payment.failed")
            extra = f"; {failed.label()}: {failed.str_of('reason')!r}" if failed is not None else ""
            self.add("payment", f"{auth.label()} never captured or voided (the run is complete){extra}", auth)

    # -- f: meter ------------------------------------------------------------------------------------

    def rule_meter(self, s: _Session) -> None:
        values = [s.meter[seq] for seq in sorted(s.meter)]
        for key in ("energy_wh", "meter_wh"):
            previous: _Msg | None = None
            for m in values:
                value = m.int_of(key)
                if value is None:
                    continue
                if previous is not None and value < (previous.int_of(key) or 0):
                    self.add(
                        "meter",
                        f"{key} decreases from {previous.int_of(key)} (seq {previous.seq}) "
                        f"to {value} (seq {m.seq})",
                        m,
                    )
                previous = m
        if not values or not s.events:
            return
        if not s.named("session.started"):
            self.add("meter", "meter values of a session without session.started", values[0])
        end = s.first("session.ended")
        last = next((m for m in reversed(values) if m.int_of("energy_wh") is not None), None)
        if end is not None and last is not None:
            ended_wh, last_wh = end.int_of("energy_wh"), last.int_of("energy_wh")
            if ended_wh is not None and last_wh is not None and ended_wh < last_wh:
                self.add(
                    "meter",
                    f"session.ended energy_wh {ended_wh} below the last meter value's {last_wh} "
                    f"(seq {last.seq})",
                    end,
                )

    # -- e: receipts ---------------------------------------------------------------------------------

    def rule_receipts(self) -> None:
        for s in self.sessions.values():
            end, declined = s.first("session.ended"), s.first("payment.declined")
            if len(s.receipts) > 1:
                ids = ", ".join(repr(r.str_of("receipt_id")) for r in s.receipts)
                self.add("receipt", f"{len(s.receipts)} receipts for one session ({ids})", s.receipts[1])
            for r in s.receipts:
                self.receipt(s, r, end, declined)
            voided = s.first("payment.voided")
            finished = end or declined or (voided if s.first("session.started") is None else None)
            if self.complete and not s.receipts and finished is not None:
                self.add("receipt", f"no receipt after {finished.label()} (the run is complete)", finished)

    def receipt(self, s: _Session, r: _Msg, end: _Msg | None, declined: _Msg | None) -> None:
        receipt_id, status = r.str_of("receipt_id"), r.str_of("status")
        if receipt_id != s.session_id:
            self.add("receipt", f"receipt_id {receipt_id!r} is not the session id", r)
        if not s.events:
            self.add("receipt", "receipt of a session without any event", r)
        elif end is None and s.first("session.started") is not None:
            self.add("receipt", "receipt of a started session that has no session.ended", r)
        cids = {m.int_of("connector_id") for m in s.events.values()} - {None}
        if r.int_of("connector_id") is not None and cids and r.int_of("connector_id") not in cids:
            self.add("receipt", f"connector_id {r.int_of('connector_id')} is not the session's", r)
        lines = r.payload.get("lines", [])
        total = r.int_of("total_minor") if "total_minor" in r.payload else 0
        if isinstance(lines, list) and all(isinstance(line, dict) for line in lines):
            sums: dict[str, int] = {}
            for key in ("gross_minor", "net_minor", "vat_minor"):
                values = [line.get(key) for line in lines if isinstance(line, dict)]
                if all(is_int(v) for v in values):
                    sums[key] = sum(v for v in values if isinstance(v, int))
            for index, line in enumerate(lines):
                assert isinstance(line, dict)
                net, vat, gross = line.get("net_minor"), line.get("vat_minor"), line.get("gross_minor")
                if is_int(net) and is_int(vat) and is_int(gross) and net + vat != gross:  # type: ignore[operator]
                    self.add(
                        "receipt",
                        f"line {index} ({line.get('kind')}): net {net} + VAT {vat} != gross {gross}",
                        r,
                    )
            if "gross_minor" in sums and total is not None and sums["gross_minor"] != total:
                self.add("receipt", f"lines add up to {sums['gross_minor']}, total_minor is {total}", r)
            for key in ("net_minor", "vat_minor"):
                declared = r.int_of(key)
                if key in sums and declared is not None and sums[key] != declared:
                    self.add("receipt", f"lines' {key} add up to {sums[key]}, the receipt says {declared}", r)
        captured, voided = s.first("payment.captured"), s.first("payment.voided")
        captured_minor = r.int_of("captured_minor")
        if status == "captured":
            if captured is None:
                self.add("receipt", "receipt status captured but the session has no payment.captured", r)
            else:
                amount = captured.int_of("amount_minor")
                if amount is not None and (captured_minor != amount or total != amount):
                    self.add(
                        "receipt",
                        f"captured {amount} but the receipt's captured_minor {captured_minor} / "
                        f"total_minor {total}",
                        r,
                    )
        elif captured is not None:
            self.add("receipt", f"receipt status {status!r} after {captured.label()}", r)
        if voided is not None and captured is None and status != "voided":
            self.add("receipt", f"receipt status {status!r} after {voided.label()}", r)
        if status == "voided" and voided is None:
            self.add("receipt", "receipt status voided but the session has no payment.voided", r)
        if declined is not None and status not in ("declined", "failed"):
            self.add("receipt", f"receipt status {status!r} after {declined.label()}", r)
        if status in _CHARGE_NOTHING and (total or captured_minor):
            self.add(
                "receipt",
                f"a {status} receipt charges nothing, got total_minor {total} / "
                f"captured_minor {captured_minor}",
                r,
            )
        owed = end.int_of("amount_minor") if end is not None else None
        if status in ("account", "captured") and owed is not None and total is not None and total != owed:
            self.add("receipt", f"total_minor {total} but session.ended amount_minor {owed}", r)

    # -- g: offline ----------------------------------------------------------------------------------

    def rule_offline(self) -> None:
        for m in self.messages:
            if m.where.kind not in (TopicKind.EVENTS, TopicKind.METER):
                continue
            offline = m.payload.get("offline", False)
            created = parse_ts(m.payload.get("ts"))
            if not isinstance(offline, bool) or created is None:
                continue  # a schema finding already
            window = self.timelines[m.where.prefix].locate(created)
            if window.link is Link.UNKNOWN or not window.inside(created, self.tolerance_s):
                continue
            expected = window.link is Link.DISCONNECTED
            if offline != expected:
                span = (
                    f"{_clock(window.start)} ({window.opened_by}) to "
                    f"{_clock(window.end)} ({window.closed_by})"
                )
                self.add(
                    "offline",
                    f"{m.label()} created at {m.str_of('ts')} while the agent was {window.link.value} "
                    f"({span}) has offline: {str(offline).lower()}",
                    m,
                )


def _clock(at: float) -> str:
    if math.isinf(at):
        return "end" if at > 0 else "start"
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def check(
    lines: Iterable[str | bytes | Mapping[str, object] | MessageLine | MarkerLine],
    *,
    complete: bool,
    prefix: str | None = None,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    lenient_sessions: bool = False,
) -> list[Finding]:
    """The findings of a captured stream (empty: it keeps the contract). Never raises on bad input.

    ``lines``: capture-file lines (text or bytes, one JSON object each; blank ones are skipped),
    parsed objects, or :class:`MessageLine`/:class:`MarkerLine`. ``complete``: the capture covers
    the whole run and everything settled (every started session ended, every payment settled, every
    receipt sent). ``prefix``: only topics under it (``{station_id}`` and ``+`` match one level);
    default: inferred from the contract's topic suffixes. ``tolerance_s``: rule ``offline``'s margin
    around a window edge. ``lenient_sessions``: see rule ``session``.
    """
    return _Checker(
        complete=complete, prefix=prefix, tolerance_s=tolerance_s, lenient_sessions=lenient_sessions
    ).run(lines)


def check_file(
    path: Path,
    *,
    complete: bool,
    prefix: str | None = None,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    lenient_sessions: bool = False,
) -> list[Finding]:
    """:func:`check` of a capture file (raises ``OSError`` when it cannot be read)."""
    return check(
        path.read_bytes().split(b"\n"),
        complete=complete,
        prefix=prefix,
        tolerance_s=tolerance_s,
        lenient_sessions=lenient_sessions,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hil.check_stream``; the exit status (0 clean, 1 findings, 2 unreadable input)."""
    parser = argparse.ArgumentParser(
        prog="python -m hil.check_stream",
        description="Check a captured upstream MQTT stream (python -m hil.capture) against the contract.",
    )
    parser.add_argument("file", help="capture file (JSON lines); - for standard input")
    parser.add_argument(
        "--prefix", help="topic prefix, e.g. evpay/v1/ST-1 ({station_id} and + match a level)"
    )
    parser.add_argument(
        "--complete", action="store_true", help="the capture covers the whole run and everything settled"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per finding")
    parser.add_argument(
        "--tolerance", type=float, default=DEFAULT_TOLERANCE_S, metavar="S",
        help=f"offline rule: seconds around a connection change not checked (default {DEFAULT_TOLERANCE_S})",
    )  # fmt: skip
    parser.add_argument(
        "--lenient-sessions",
        action="store_true",
        help="at most one session.started per session, and no session.ended without one",
    )
    args = parser.parse_args(argv)
    if not args.tolerance >= 0:
        parser.error("--tolerance must be >= 0")
    try:
        data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as exc:
        print(f"check_stream: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    lines = data.split(b"\n")
    findings = check(
        lines,
        complete=args.complete,
        prefix=args.prefix,
        tolerance_s=args.tolerance,
        lenient_sessions=args.lenient_sessions,
    )
    counted = sum(1 for line in lines if line.strip())
    unreadable = sum(1 for finding in findings if finding.rule == "input")
    if counted and unreadable == counted:
        print(f"check_stream: {args.file} is not a capture file (no line can be read)", file=sys.stderr)
        for finding in findings[:3]:
            print(f"check_stream: {finding}", file=sys.stderr)
        return 2
    for finding in findings:
        print(json.dumps(finding.to_json()) if args.json else str(finding))
    print(f"check_stream: {len(findings)} finding(s) in {counted} line(s) of {args.file}", file=sys.stderr)
    return 1 if findings else 0
