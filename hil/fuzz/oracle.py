"""The assertions of one fuzz seed, over what the seed left behind (:class:`Evidence`).

Everything is read as an outsider would: the upstream stream a back office captured, the terminal
simulator's sessions table, the charger simulator's meter, the harness's own record of what it did
(taps, plug cycles, kills), and the agent's log. The money arithmetic is a second, independent
reading of docs/tariff.md (:class:`IndependentTariff`); nothing of ``agent`` is imported.

Rules (a finding's ``rule``):

``stream``
    :func:`hil.stream.check` with ``complete=True``: the whole run, everything settled.
``terminal``
    Every approved terminal session ended in exactly one Commit or one Void; none is still approved;
    no Commit above the authorized amount was attempted or booked; a session the stream knows was
    settled by the agent, not voided by the terminal's own session timeout.
``orphan``
    A terminal approval the stream never mentions (a kill between Session Approved and the journal
    write, psp-reference §10.4) is allowed only with a ``possible_orphan_approval`` alarm for it
    (same masked PAN and amount); it must end voided: by the terminal's (scaled) Setup timeout on
    Apollo, by the agent's List Sessions at restart on P6X.
``money``
    Per captured payment: the terminal's committed amount = ``payment.captured`` = the
    ``session.ended`` ``amount_minor`` = the receipt's ``total_minor`` and ``captured_minor`` = the
    independent price of the receipt's quantities (Wh, ms, the session fee), capped at the amount the
    terminal authorized; each priced receipt line is the independent line; the charged time fits in
    the session. A voided payment delivered nothing billable.
``energy``
    Per plug cycle of a connector: the energy billed to the sessions that started in it
    (``session.ended`` ``energy_wh``) is at most what the charger simulator delivered in that cycle.
``stop``
    STOP-2: a session stopped by a tap was stopped by its own card (tapped after its authorization),
    and only when ``tap`` is a stop mode.
``log``
    No ``Traceback`` and no error line (``<3>`` or more severe) in the agent's log, except the ones in
    :data:`LOG_WHITELIST`, each with its reason.
``process``
    The agent never exited on its own except at an armed crash point; SIGTERM at the end exits 0.
``journal``
    No payment is open in the journal at the end (``evpay-agent sessions --json``).
``rig``
    The seed could not run as planned (a process did not start, a control channel failed).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Final

from hil.fuzz.world import TariffWorld, World
from hil.rig.invariants import payment_is_open
from hil.stream import Line, MessageLine, check
from hil.stream.schema import parse_ts
from hil.stream.topics import TopicKind, TopicParser

__all__ = [
    "LOG_WHITELIST",
    "Evidence",
    "Finding",
    "IndependentTariff",
    "PlugCycle",
    "TapRecord",
    "evaluate",
    "round_half_up",
]

TIME_SLACK_MS: Final = 1500  # a charged time may exceed the receipt's started→stopped by clock rounding
TAP_SLACK_S: Final = 1.0  # harness clock vs the agent's event timestamps (same host)

# Error lines (<3>) the agent may log in a world the fuzzer makes, each with why it is not a defect.
# A pattern is a regular expression searched in the line.
LOG_WHITELIST: Final[tuple[tuple[str, str], ...]] = (
    (
        r"^<3>mqtt: failed to receive on socket: \[Errno 104\] Connection reset by peer",
        # paho-mqtt's own line (logger "mqtt", under aiomqtt) when the back-office connection is
        # reset: the rig's TcpGate aborts the agent's upstream connection (TCP RST) at every broker
        # outage, as a crashed broker or a NAT timeout would. The agent logs the loss itself at
        # WARNING and reconnects; paho's priority is not the agent's to choose (ERR-6 holds).
        "paho-mqtt logs a reset broker connection at ERROR; the agent reconnects",
    ),
)


@dataclass(frozen=True, slots=True)
class Finding:
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.message}"


@dataclass(frozen=True, slots=True)
class TapRecord:
    """A card the harness presented: when (epoch s), meant for which connector, the simulator's answer."""

    t: float
    connector: int
    card_hash: str
    stranger: bool
    answer: str


@dataclass(slots=True)
class PlugCycle:
    """A vehicle plugged into a connector from ``t_plug`` to ``t_unplug`` (epoch s); the charger
    simulator's register at the plug-in and the energy it delivered until the unplug."""

    connector: int
    t_plug: float
    start_wh: int
    t_unplug: float | None = None
    delivered_wh: int | None = None


def _cycle_at(cycles: Sequence[PlugCycle], at: float | None) -> PlugCycle | None:
    """The plug cycle a session starting at ``at`` belongs to: the one open at ``at``; failing
    that, the last one plugged by ``at`` + ``TAP_SLACK_S`` (the two clocks differ a little). Only
    the slack rule assigned a session that started just before the next plug-in to that next
    cycle (fuzzer seed 172, an oracle false positive)."""
    if at is None:
        return None
    ordered = sorted(cycles, key=lambda c: c.t_plug)
    for candidate in ordered:
        if candidate.t_plug <= at and (candidate.t_unplug is None or at <= candidate.t_unplug):
            return candidate
    found: PlugCycle | None = None
    for candidate in ordered:
        if candidate.t_plug <= at + TAP_SLACK_S:
            found = candidate
    return found


@dataclass(slots=True)
class Evidence:
    world: World
    prefix: str
    lines: Sequence[Line]
    sim_sessions: Sequence[Mapping[str, Any]]
    journal: Sequence[Mapping[str, Any]] | None
    agent_log: str
    taps: Sequence[TapRecord] = ()
    cycles: Sequence[PlugCycle] = ()
    unexpected_exits: Sequence[str] = ()
    stop_code: int | None = 0
    rig_problems: Sequence[str] = ()


# --- the tariff, independently (docs/tariff.md "Rounding policy") -----------------------------------


def round_half_up(value: Fraction) -> int:
    """Nearest integer, ties away from zero."""
    whole, rest = divmod(abs(value.numerator), value.denominator)
    if 2 * rest >= value.denominator:
        whole += 1
    return whole if value >= 0 else -whole


class IndependentTariff:
    """The world's tariff (energy per kWh, time per minute, session fee; no bands, idle fee, minimum
    or maximum) priced from docs/tariff.md alone: each line rounded half-up in the basis the prices
    are given in, VAT per line, the total the sum of the lines' gross amounts."""

    def __init__(self, tariff: TariffWorld) -> None:
        self.scale = 10**tariff.minor_unit_digits
        self.gross_prices = tariff.prices_include_vat
        self.rate = Fraction(tariff.vat_rate_percent)
        self.energy = Fraction(tariff.energy_per_kwh)
        self.time = Fraction(tariff.time_per_minute)
        self.fee = Fraction(tariff.session_fee)

    def split(self, amount: int) -> tuple[int, int, int]:
        """(net, VAT, gross) of an amount rounded in the price basis."""
        if self.gross_prices:
            net = round_half_up(amount * Fraction(100) / (100 + self.rate))
            return net, amount - net, amount
        vat = round_half_up(amount * self.rate / 100)
        return amount, vat, amount + vat

    def line(self, kind: str, quantity: int) -> tuple[int, int, int]:
        """(net, VAT, gross) of the line ``kind`` (``energy`` Wh, ``time`` ms, ``session_fee`` 1)."""
        if kind == "energy":
            exact = self.energy * self.scale * quantity / 1000
        elif kind == "time":
            exact = self.time * self.scale * quantity / 60000
        elif kind == "session_fee":
            exact = self.fee * self.scale * quantity
        else:
            raise ValueError(f"not a line of the fuzz tariff: {kind}")
        amount = round_half_up(exact)
        return self.split(amount) if amount else (0, 0, 0)

    def total(self, energy_wh: int, time_ms: int) -> int:
        return sum(
            self.line(kind, quantity)[2]
            for kind, quantity in (("energy", energy_wh), ("time", time_ms), ("session_fee", 1))
        )


# --- the stream, as a back office reads it -----------------------------------------------------------


@dataclass(slots=True)
class _Session:
    session_id: str
    connector_id: int | None = None
    events: dict[int, dict[str, Any]] = field(default_factory=dict)  # seq → first arrival
    receipt: dict[str, Any] | None = None

    def named(self, name: str) -> list[dict[str, Any]]:
        return [self.events[seq] for seq in sorted(self.events) if self.events[seq].get("event") == name]

    def first(self, name: str) -> dict[str, Any] | None:
        found = self.named(name)
        return found[0] if found else None

    @property
    def terminal_session_id(self) -> str | None:
        for name in ("payment.authorized", "payment.partially_approved"):
            for event in self.named(name):
                value = event.get("terminal_session_id")
                if isinstance(value, str) and value:
                    return value
        return None


@dataclass(slots=True)
class _Stream:
    sessions: dict[str, _Session]
    alarms: list[dict[str, Any]]


def _read_stream(lines: Iterable[Line], prefix: str) -> _Stream:
    parser = TopicParser(prefix)
    sessions: dict[str, _Session] = {}
    alarms: list[dict[str, Any]] = []
    seen: set[str] = set()
    for line in lines:
        if not isinstance(line, MessageLine) or not isinstance(line.payload, dict):
            continue
        where = parser(line.topic)
        if where is None or where.kind not in (TopicKind.EVENTS, TopicKind.RECEIPTS, TopicKind.ALARMS):
            continue
        payload: dict[str, Any] = line.payload
        msg_id = payload.get("msg_id")
        if isinstance(msg_id, str):
            if msg_id in seen:
                continue
            seen.add(msg_id)
        if where.kind is TopicKind.ALARMS:
            alarms.append(payload)
            continue
        sid = payload.get("session_id")
        if not isinstance(sid, str):
            continue
        session = sessions.setdefault(sid, _Session(sid))
        if where.kind is TopicKind.RECEIPTS:
            if session.receipt is None:
                session.receipt = payload
            continue
        session.connector_id = where.connector_id
        seq = payload.get("seq")
        if isinstance(seq, int) and seq not in session.events:
            session.events[seq] = payload
    return _Stream(sessions, alarms)


def _tsid_int(value: str) -> int | None:
    try:
        return int(value)
    except ValueError:
        try:
            return int(value, 16)
        except ValueError:
            return None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# --- the rules --------------------------------------------------------------------------------------


class _Oracle:
    def __init__(self, evidence: Evidence) -> None:
        self.e = evidence
        self.world = evidence.world
        self.findings: list[Finding] = []
        self.stream = _read_stream(evidence.lines, evidence.prefix)
        self.sim_by_id: dict[int, Mapping[str, Any]] = {
            int(s["session_id"]): s for s in evidence.sim_sessions
        }
        self.known_tsids: dict[int, _Session] = {}
        for session in self.stream.sessions.values():
            tsid = session.terminal_session_id
            number = _tsid_int(tsid) if tsid is not None else None
            if number is not None:
                self.known_tsids[number] = session
        self.journal_tsids = {
            _tsid_int(str(p["terminal_session_id"]))
            for p in evidence.journal or ()
            if p.get("terminal_session_id") is not None
        }
        self.tariff = IndependentTariff(self.world.tariff)

    def add(self, rule: str, message: str) -> None:
        self.findings.append(Finding(rule, message))

    def run(self) -> list[Finding]:
        for problem in self.e.rig_problems:
            self.add("rig", problem)
        self.rule_stream()
        self.rule_terminal()
        self.rule_orphans()
        self.rule_money()
        self.rule_energy()
        self.rule_stop()
        self.rule_log()
        self.rule_process()
        self.rule_journal()
        return self.findings

    def rule_stream(self) -> None:
        for finding in check(self.e.lines, complete=True, prefix=self.e.prefix):
            self.add("stream", str(finding))

    def rule_terminal(self) -> None:
        for sid, s in sorted(self.sim_by_id.items()):
            status = s.get("status")
            history = list(s.get("history", []))
            disposals = [h for h in history if h.get("event") in ("committed", "voided")]
            label = f"terminal session {sid} ({status}, authorized {s.get('authorized_minor')})"
            if status == "approved":
                self.add("terminal", f"{label} is still approved at the end")
            if status in ("committed", "voided") and len(disposals) != 1:
                self.add("terminal", f"{label}: {len(disposals)} commits/voids {disposals}")
            if status in ("expired_voided", "expired_committed") and disposals:
                self.add("terminal", f"{label}: expired after {len(disposals)} commits/voids")
            if status == "expired_committed":
                self.add("terminal", f"{label}: committed in full by the Setup timeout (action must be void)")
            refused = [h for h in history if h.get("event") == "commit_refused"]
            if refused:
                self.add("terminal", f"{label}: commit above the authorized amount attempted {refused}")
            committed = _int(s.get("committed_minor"))
            authorized = _int(s.get("authorized_minor"))
            if status == "committed" and (committed is None or authorized is None or committed > authorized):
                self.add("terminal", f"{label}: committed {committed}")
            if status == "expired_voided" and sid in self.known_tsids:
                session = self.known_tsids[sid]
                self.add(
                    "terminal",
                    f"{label} of session {session.session_id} was voided by the terminal's session "
                    f"timeout ({self.world.terminal.session_timeout_real_s:.0f} s here), not settled by "
                    "the agent",
                )

    def rule_orphans(self) -> None:
        raised = [
            a
            for a in self.stream.alarms
            if a.get("alarm") == "possible_orphan_approval" and a.get("state") == "raised"
        ]
        unused = list(raised)
        for sid, s in sorted(self.sim_by_id.items()):
            if sid in self.known_tsids or sid in self.journal_tsids:
                continue
            card = s.get("card") or {}
            label = (
                f"terminal session {sid} ({s.get('status')}, requested {s.get('requested_minor')}, card "
                f"{card.get('masked_pan')})"
            )
            alarm = next(
                (
                    a
                    for a in unused
                    if (a.get("data") or {}).get("masked_pan") == card.get("masked_pan")
                    and (a.get("data") or {}).get("amount_minor") == s.get("requested_minor")
                ),
                None,
            )
            if alarm is None:
                self.add("orphan", f"{label}: approved on the terminal, unknown upstream, and no "
                         "possible_orphan_approval alarm for it")  # fmt: skip
            else:
                unused.remove(alarm)
            want = "expired_voided" if self.world.terminal.family == "apollo" else "voided"
            if s.get("status") != want:
                how = (
                    "the terminal's Setup timeout" if want == "expired_voided" else "List Sessions at restart"
                )
                self.add("orphan", f"{label}: expected {want} (by {how})")

    def rule_money(self) -> None:
        for session in self.stream.sessions.values():
            captured = session.first("payment.captured")
            voided = session.first("payment.voided")
            ended = session.first("session.ended")
            if captured is not None:
                self.captured(session, captured, ended)
            elif voided is not None and ended is not None:
                energy, cost = _int(ended.get("energy_wh")), _int(ended.get("cost_minor"))
                if energy and cost:
                    self.add(
                        "money",
                        f"session {session.session_id}: voided though it delivered {energy} Wh "
                        f"costing {cost}",
                    )

    def captured(self, session: _Session, captured: dict[str, Any], ended: dict[str, Any] | None) -> None:
        name = f"session {session.session_id}"
        amount = _int(captured.get("amount_minor"))
        tsid = captured.get("terminal_session_id")
        number = _tsid_int(tsid) if isinstance(tsid, str) else None
        sim = self.sim_by_id.get(number) if number is not None else None
        if sim is None:
            self.add(
                "money", f"{name}: captured {amount} on terminal session {tsid}, which the terminal never had"
            )
            return
        if sim.get("status") != "committed" or _int(sim.get("committed_minor")) != amount:
            self.add(
                "money",
                f"{name}: captured {amount} upstream, the terminal has {sim.get('status')} "
                f"{sim.get('committed_minor')} (session {number})",
            )
        if ended is None:
            never = (
                ""
                if session.first("session.started")
                else " (and without session.started: no energy ever flowed)"
            )
            self.add("money", f"{name}: captured {amount} without session.ended{never}")
        elif _int(ended.get("amount_minor")) != amount:
            self.add(
                "money", f"{name}: captured {amount}, session.ended amount_minor {ended.get('amount_minor')}"
            )
        receipt = session.receipt
        if receipt is None:
            self.add("money", f"{name}: captured {amount} without a receipt")
            return
        total, receipt_captured = _int(receipt.get("total_minor")), _int(receipt.get("captured_minor"))
        if receipt.get("status") != "captured" or total != amount or receipt_captured != amount:
            self.add(
                "money",
                f"{name}: captured {amount}, receipt {receipt.get('status')} total {total} captured "
                f"{receipt_captured}",
            )
        energy_wh = _int(receipt.get("energy_wh")) or 0
        if ended is not None and _int(ended.get("energy_wh")) != energy_wh:
            self.add(
                "money", f"{name}: receipt energy {energy_wh} Wh, session.ended {ended.get('energy_wh')} Wh"
            )
        lines = [line for line in receipt.get("lines", []) if isinstance(line, dict)]
        time_ms = 0
        quoted = 0
        for line in lines:
            kind, quantity = line.get("kind"), _int(line.get("quantity"))
            if kind == "cap_adjustment":
                continue
            if kind not in ("energy", "time", "session_fee") or quantity is None:
                self.add("money", f"{name}: receipt line {kind!r} ({line.get('quantity')}) not in the tariff")
                continue
            if kind == "energy" and quantity != energy_wh:
                self.add("money", f"{name}: energy line {quantity} Wh, receipt energy_wh {energy_wh}")
            if kind == "time":
                time_ms = quantity
            expected = self.tariff.line(kind, quantity)
            got = (_int(line.get("net_minor")), _int(line.get("vat_minor")), _int(line.get("gross_minor")))
            if got != expected:
                self.add(
                    "money",
                    f"{name}: {kind} line of {quantity} {line.get('unit')}: (net, VAT, gross) {got}, "
                    f"independently {expected}",
                )
            quoted += got[2] or 0
        full = self.tariff.total(energy_wh, time_ms)
        authorized = _int(sim.get("authorized_minor"))
        expected_amount = full if authorized is None else min(full, authorized)
        if amount != expected_amount:
            self.add(
                "money",
                f"{name}: captured {amount}, independently tariff({energy_wh} Wh, {time_ms} ms) = {full} "
                f"capped at the authorized {authorized} = {expected_amount}",
            )
        if quoted != full:
            self.add("money", f"{name}: the receipt's tariff lines add up to {quoted}, independently {full}")
        started, stopped = parse_ts(receipt.get("started_at")), parse_ts(receipt.get("stopped_at"))
        if (
            started is not None
            and stopped is not None
            and time_ms > (stopped - started) * 1000 + TIME_SLACK_MS
        ):
            self.add(
                "money",
                f"{name}: {time_ms} ms of time charged in a session of {(stopped - started):.3f} s "
                f"({receipt.get('started_at')} → {receipt.get('stopped_at')})",
            )

    def rule_energy(self) -> None:
        cycles: dict[int, list[PlugCycle]] = defaultdict(list)
        for each in self.e.cycles:
            cycles[each.connector].append(each)
        billed: dict[int, list[tuple[str, int]]] = defaultdict(list)  # id(cycle) → sessions
        by_id: dict[int, PlugCycle] = {}
        for session in self.stream.sessions.values():
            ended, started = session.first("session.ended"), session.first("session.started")
            energy = _int(ended.get("energy_wh")) if ended is not None else None
            if not energy or session.connector_id is None:
                continue
            at = parse_ts(started.get("ts")) if started is not None else None
            if at is None:
                at = parse_ts(ended.get("ts")) if ended is not None else None
            cycle = _cycle_at(cycles.get(session.connector_id, []), at)
            if cycle is None:
                self.add(
                    "energy",
                    f"session {session.session_id} billed {energy} Wh on connector {session.connector_id} "
                    "outside any plug cycle",
                )
                continue
            by_id[id(cycle)] = cycle
            billed[id(cycle)].append((session.session_id, energy))
        for key, sessions in billed.items():
            cycle = by_id[key]
            total = sum(wh for _, wh in sessions)
            if cycle.delivered_wh is None:
                self.add("energy", f"connector {cycle.connector}: plug cycle never closed ({sessions})")
            elif total > cycle.delivered_wh:
                shown = ", ".join(f"{sid} {wh} Wh" for sid, wh in sessions)
                self.add(
                    "energy",
                    f"connector {cycle.connector}: billed {total} Wh ({shown}) but the charger delivered "
                    f"{cycle.delivered_wh} Wh in that plug cycle (register {cycle.start_wh} at plug-in)",
                )

    def rule_stop(self) -> None:
        tap_stop = "tap" in self.world.session.stop_modes
        for session in self.stream.sessions.values():
            ended = session.first("session.ended")
            if ended is None or ended.get("reason") != "tap":
                continue
            name = f"session {session.session_id}"
            if not tap_stop:
                self.add("stop", f"{name} stopped by a tap, but tap is not a stop mode")
            tsid = session.terminal_session_id
            number = _tsid_int(tsid) if tsid is not None else None
            sim = self.sim_by_id.get(number) if number is not None else None
            if sim is None:
                continue
            own = (sim.get("card") or {}).get("card_hash")
            authorized = next(
                (
                    parse_ts(e.get("ts"))
                    for e in (
                        *session.named("payment.authorized"),
                        *session.named("payment.partially_approved"),
                    )
                ),
                None,
            )
            end = parse_ts(ended.get("ts"))
            if authorized is None or end is None:
                continue
            in_window = [t for t in self.e.taps if authorized - TAP_SLACK_S <= t.t <= end + TAP_SLACK_S]
            if not any(t.card_hash == own for t in in_window):
                others = sorted({t.card_hash[-6:] for t in in_window})
                self.add(
                    "stop",
                    f"{name} ended by a tap, but its own card (…{str(own)[-6:]}) was not tapped during "
                    f"it; tapped: {others} (STOP-2: another driver's card never stops a session)",
                )

    def rule_log(self) -> None:
        traceback_shown = False
        for line in self.e.agent_log.splitlines():
            if "Traceback" in line and not traceback_shown:
                traceback_shown = True
                self.add("log", f"traceback in the agent's log: {line.strip()[:200]}")
            if re.match(r"<[0-3]>", line) and not any(re.search(p, line) for p, _ in LOG_WHITELIST):
                self.add("log", f"error line: {line.strip()[:300]}")

    def rule_process(self) -> None:
        for exit_note in self.e.unexpected_exits:
            self.add("process", exit_note)
        if self.e.stop_code not in (0, None):
            self.add("process", f"SIGTERM at the end: the agent exited with {self.e.stop_code}, expected 0")

    def rule_journal(self) -> None:
        for p in self.e.journal or ():
            if payment_is_open(p):
                self.add(
                    "journal",
                    f"payment {p.get('payment_id')} still open: state {p.get('state')}, disposal "
                    f"{p.get('disposal')}, confirmed {p.get('disposal_confirmed')}",
                )


def evaluate(evidence: Evidence) -> list[Finding]:
    """Every finding of the seed (empty: the seed passed)."""
    return _Oracle(evidence).run()
