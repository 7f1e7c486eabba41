"""The assertions of one fuzz seed, over what the seed left behind (:class:`Evidence`).

Everything is read as an outsider would: the upstream stream a back office captured (with the
results of its own ``set_tariff`` commands), the terminal simulator's sessions table, the charger
simulator's meter, the harness's own record of what it did (taps, plug cycles, kills, commands
sent), and the agent's log. The money arithmetic is a second, independent reading of docs/tariff.md
and OCPI 2.2.1 (:class:`IndependentTariff`); nothing of ``agent`` is imported.

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
    independent price, by the tariff that applies to the session (rule ``tariff``), of what its
    charging periods say it used (Wh; ms charging and not charging), capped at the amount the
    terminal authorized; each priced receipt line (kind, quantity, net, VAT, gross) is the
    independent line; the charged time fits in the session. A voided payment delivered nothing
    billable.
``tariff``
    docs/tariff.md "Changing the tariff": a session is priced by the tariff in force when it began
    (the receipt's ``started_at``: its card read) — the configured one, or that of the last
    ``set_tariff`` applied by then. A command applies between its publish and its ``accepted``
    result (either tariff within :data:`TARIFF_WINDOW_S` of them); one whose result never came
    (a kill, an outage) may have applied at any time after it was sent, or never; a refused one
    never did. Whatever a session was priced by, no later session is priced by an earlier tariff.
    Every ``set_tariff`` answered is answered ``accepted`` (the world sends valid tariffs only).
``periods``
    ``charging_periods`` (contract 1.2.0, docs/upstream.md): on ``session.ended`` and the
    receipt, equal; ``start_date_time`` non-decreasing; ENERGY adds up to ``energy_wh``;
    the periods do not overlap (a gap — the agent was down — is allowed) and run from after the
    session began to no earlier than its last meter value and no later than ``session.ended``
    (:data:`PERIOD_SLACK_S`); MAX_CURRENT only in a world whose charger reports ``current_a``,
    never above the connector's ``max_current_a``.
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
``charger_payment``
    The bridge's ``payment`` topic as the charger simulator received it (docs/charger-bridge.md,
    docs/ocpp21.md): every message names a session of the stream and its terminal session id; per
    session at most one distinct ``settled`` content (repeats of the same content are allowed); a
    ``Settled`` settlement's ``settlement_minor`` = ``payment.captured`` = the ``session.ended``
    ``amount_minor`` = the terminal's committed amount; a ``Canceled`` one belongs to a voided
    payment and settles 0; a captured or voided payment has its settlement; no PAN-like digit run
    (the journal's guard, ``agent.store.journal.check_no_pan``) in any payload.
``rig``
    The seed could not run as planned (a process did not start, a control channel failed).
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any, Final

from agent.store.journal import JournalError, check_no_pan
from hil.fuzz.world import TariffWorld, World
from hil.rig.invariants import payment_is_open
from hil.stream import Line, MessageLine, check
from hil.stream.schema import parse_ts
from hil.stream.topics import TopicKind, TopicParser

__all__ = [
    "LOG_WHITELIST",
    "Charged",
    "Evidence",
    "Finding",
    "IndependentTariff",
    "PlugCycle",
    "PricedLine",
    "TapRecord",
    "TariffCommand",
    "evaluate",
    "round_half_up",
]

TIME_SLACK_MS: Final = 1500  # a charged time may exceed the receipt's started→stopped by clock rounding
TAP_SLACK_S: Final = 1.0  # harness clock vs the agent's event timestamps (same host)
# a set_tariff takes effect between its publish and its result: a session begun this long before
# the publish or after the result may be priced only by the tariff before or after it
TARIFF_WINDOW_S: Final = 2.0
TARIFF_ORDER_SLACK_S: Final = 0.5  # two sessions begun this close may have taken either order
PERIOD_SLACK_S: Final = 1.5  # charging periods vs the events' and meter values' timestamps
CURRENT_SLACK_A: Final = Fraction(1, 100)  # MAX_CURRENT (3 decimals) vs the simulator's (2 decimals)

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
    (
        r"^<3>mqtt: failed to receive on socket: \[Errno 32\] Broken pipe",
        # the same outage met by a *send*: paho's _packet_write logs a failed send with the same
        # "failed to receive" text. Since issue 12 the agent hands a committed message to paho in
        # the turn that stored it, so a write can be the first operation on the aborted socket.
        # The agent logs the loss at WARNING, reconnects and sends the message again (ERR-6).
        "paho-mqtt logs a send on an aborted broker connection at ERROR; the agent reconnects",
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


@dataclass(frozen=True, slots=True)
class TariffCommand:
    """A ``set_tariff`` the back office published: ``index`` into ``World.tariff_changes``, its
    ``correlation_id``, when (epoch s, just before the publish) and, when the broker did not
    acknowledge it, why (it may or may not have arrived)."""

    index: int
    correlation_id: str
    t_sent: float
    publish_error: str | None = None


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
    tariff_commands: Sequence[TariffCommand] = ()
    unexpected_exits: Sequence[str] = ()
    stop_code: int | None = 0
    rig_problems: Sequence[str] = ()
    # the charger simulator's ``payments`` (None: not collected, the rule is skipped)
    charger_payments: Sequence[Mapping[str, Any]] | None = None


# --- the tariff, independently (docs/tariff.md; OCPI 2.2.1 for the OCPI form) -----------------------


def round_half_up(value: Fraction) -> int:
    """Nearest integer, ties away from zero."""
    whole, rest = divmod(abs(value.numerator), value.denominator)
    if 2 * rest >= value.denominator:
        whole += 1
    return whole if value >= 0 else -whole


MS_PER_HOUR: Final = 3_600_000
OCPI_TIME_STEP_MS: Final = 1000  # OCPI 2.2.1 §Tariffs 4.4.5: TIME / PARKING_TIME step_size is in s


@dataclass(frozen=True, slots=True)
class Charged:
    """What a session used, as its ``charging_periods`` tell (docs/upstream.md): energy in Wh, time
    charging (TIME) and time not charging (PARKING_TIME: suspended; the fuzz worlds have no idle fee,
    so no idle time) in ms, and ``order``: the kinds (``charging`` / ``parking``) of the periods
    that have time, in order (OCPI applies a step to the dimension of the last priced one)."""

    energy_wh: int
    charging_ms: int = 0
    parking_ms: int = 0
    order: tuple[str, ...] = ("charging",)


@dataclass(frozen=True, slots=True)
class PricedLine:
    kind: str
    quantity: int
    net_minor: int
    vat_minor: int
    gross_minor: int

    @property
    def amounts(self) -> tuple[int, int, int]:
        return self.net_minor, self.vat_minor, self.gross_minor


class IndependentTariff:
    """A world's tariff (:class:`hil.fuzz.world.TariffWorld`: energy per kWh, time per minute, session
    fee; no bands, idle fee, minimum or maximum) priced from the documents alone.

    * Simple form (docs/tariff.md): ``energy`` = Wh * price / 1000; ``time`` = the charging time (and
      the suspended time with ``charging_and_suspended``) * price / 60000 ms; ``session_fee``.
    * OCPI form (OCPI 2.2.1 §Tariffs 4.4.5, prices excl. VAT, ``vat`` per component): ENERGY per kWh
      → ``energy``; TIME per hour of charging → ``time``; PARKING_TIME per hour not charging →
      ``idle_fee``; FLAT → ``session_fee``. ``step_size`` (1 s for time) once per session: the
      total of the dimension of the last time-priced period is rounded up to the step (mod_cdrs
      step_size: switching from charging to parking leaves the charging time unrounded).
    * Rounding (docs/tariff.md §Rounding): every line exact, the gross total and the net total each
      rounded half-up once, VAT their difference, the lines' whole minor units by largest
      remainder (the earlier line on a tie) so they add up to the totals. Lines whose exact amount
      is zero are left out. Line order: energy, time, session fee, idle (parking) fee."""

    ORDER = ("energy", "time", "session_fee", "idle_fee")  # the receipt's line order

    def __init__(self, tariff: TariffWorld) -> None:
        self.ocpi = tariff.form == "ocpi"
        self.scale = 10**tariff.minor_unit_digits
        self.gross_prices = tariff.prices_include_vat and not self.ocpi
        self.rate = Fraction(tariff.vat_rate_percent)
        self.energy = Fraction(tariff.energy_per_kwh)
        self.per_ms = Fraction(tariff.time_per_minute) / 60_000
        self.with_suspended = tariff.time_applies_to == "charging_and_suspended"
        self.fee = Fraction(tariff.session_fee)

    def quantities(self, used: Charged) -> dict[str, int]:
        """Quantity per line kind (Wh, ms, 1 session), before pricing."""
        if not self.ocpi:
            time_ms = used.charging_ms + (used.parking_ms if self.with_suspended else 0)
            return {"energy": used.energy_wh, "time": time_ms, "session_fee": 1}
        found = {"energy": used.energy_wh, "time": used.charging_ms, "session_fee": 1}
        priced = {"charging": "time"}
        if self.with_suspended:  # a PARKING_TIME component at the TIME price
            found["idle_fee"] = used.parking_ms
            priced["parking"] = "idle_fee"
        if self.per_ms:  # no time component at all when the time price is 0
            last = next((priced[kind] for kind in reversed(used.order) if kind in priced), None)
            if last is not None and found[last]:
                found[last] = -(-found[last] // OCPI_TIME_STEP_MS) * OCPI_TIME_STEP_MS
        return found

    def _exact(self, kind: str, quantity: int) -> tuple[Fraction, Fraction]:
        """(net, gross) of one line in minor units, exact."""
        if kind == "energy":
            price = self.energy * self.scale * quantity / 1000
        elif kind in ("time", "idle_fee"):
            price = self.per_ms * self.scale * quantity
        elif kind == "session_fee":
            price = self.fee * self.scale * quantity
        else:
            raise ValueError(f"not a line of the fuzz tariff: {kind}")
        if self.gross_prices:
            return price * 100 / (100 + self.rate), price
        return price, price * (100 + self.rate) / 100

    def quote(self, used: Charged) -> dict[str, PricedLine]:
        """The priced lines (kind → line), in the receipt's order."""
        quantities = self.quantities(used)
        exact = {kind: (quantities[kind], *self._exact(kind, quantities[kind])) for kind in self.ORDER
                 if kind in quantities}  # fmt: skip
        exact = {kind: row for kind, row in exact.items() if row[1] or row[2]}
        kinds = list(exact)
        gross = _largest_remainder(
            round_half_up(sum((row[2] for row in exact.values()), Fraction(0))),
            [exact[k][2] for k in kinds],
        )
        net = _largest_remainder(
            round_half_up(sum((row[1] for row in exact.values()), Fraction(0))),
            [exact[k][1] for k in kinds],
        )
        return {k: PricedLine(k, exact[k][0], n, g - n, g) for k, n, g in zip(kinds, net, gross, strict=True)}

    def lines(self, energy_wh: int, time_ms: int) -> dict[str, tuple[int, int, int]]:
        """(net, VAT, gross) per line kind of ``energy_wh`` and ``time_ms`` of charging."""
        return {k: line.amounts for k, line in self.quote(Charged(energy_wh, time_ms)).items()}

    def total(self, energy_wh: int, time_ms: int, parking_ms: int = 0) -> int:
        order = ("charging", "parking") if parking_ms else ("charging",)
        used = Charged(energy_wh, time_ms, parking_ms, order)
        return sum(line.gross_minor for line in self.quote(used).values())


def _largest_remainder(total: int, parts: list[Fraction]) -> list[int]:
    floors = [int(p // 1) for p in parts]
    order = sorted(range(len(parts)), key=lambda i: (floors[i] - parts[i], i))
    for i in order[: total - sum(floors)]:
        floors[i] += 1
    return floors


# --- the stream, as a back office reads it -----------------------------------------------------------


@dataclass(slots=True)
class _Session:
    session_id: str
    connector_id: int | None = None
    events: dict[int, dict[str, Any]] = field(default_factory=dict)  # seq → first arrival
    receipt: dict[str, Any] | None = None
    meters: list[dict[str, Any]] = field(default_factory=list)  # meter values, each once

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

    @property
    def created_at(self) -> float | None:
        """When the session began: the receipt's ``started_at`` (the card read or the start that
        opened it), else its first event."""
        if self.receipt is not None and (at := parse_ts(self.receipt.get("started_at"))) is not None:
            return at
        stamps = [parse_ts(self.events[seq].get("ts")) for seq in sorted(self.events)]
        return next((t for t in stamps if t is not None), None)


@dataclass(frozen=True, slots=True)
class _Result:
    """A command result as the capture received it (``t``: epoch s of its arrival)."""

    t: float
    payload: dict[str, Any]

    @property
    def status(self) -> object:
        return self.payload.get("status")


@dataclass(slots=True)
class _Stream:
    sessions: dict[str, _Session]
    alarms: list[dict[str, Any]]
    results: dict[tuple[str, str], _Result]  # (command, correlation_id) → first result


def _read_stream(lines: Iterable[Line], prefix: str) -> _Stream:
    parser = TopicParser(prefix)
    sessions: dict[str, _Session] = {}
    alarms: list[dict[str, Any]] = []
    results: dict[tuple[str, str], _Result] = {}
    seen: set[str] = set()
    for line in lines:
        if not isinstance(line, MessageLine) or not isinstance(line.payload, dict):
            continue
        where = parser(line.topic)
        payload: dict[str, Any] = line.payload
        if where is not None and where.kind is TopicKind.COMMAND and line.topic.endswith("/result"):
            name, correlation = payload.get("command"), payload.get("correlation_id")
            if isinstance(name, str) and isinstance(correlation, str):
                results.setdefault((name, correlation), _Result(line.t, payload))
            continue
        kinds = (TopicKind.EVENTS, TopicKind.RECEIPTS, TopicKind.ALARMS, TopicKind.METER)
        if where is None or where.kind not in kinds:
            continue
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
        if where.kind is TopicKind.METER:
            session.meters.append(payload)
            continue
        session.connector_id = where.connector_id
        seq = payload.get("seq")
        if isinstance(seq, int) and seq not in session.events:
            session.events[seq] = payload
    return _Stream(sessions, alarms, results)


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


def _number(value: object) -> Fraction | None:
    """A JSON number, exactly as written (a float by its shortest text)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return Fraction(value) if isinstance(value, int) else Fraction(repr(value))


@dataclass(slots=True)
class _Periods:
    """``charging_periods`` (OCPI 2.2.1 CDR shape, docs/upstream.md) as read: ENERGY kWh, TIME and
    PARKING_TIME hours (each period's read back to the ms), MAX_CURRENT A."""

    starts: list[float] = field(default_factory=list)
    energy_kwh: Fraction = Fraction(0)
    charging_ms: int = 0
    parking_ms: int = 0
    order: list[str] = field(default_factory=list)  # kinds of the periods with time, in order
    end: float | None = None  # the last period's start + its time (epoch s)
    ends: list[float] = field(default_factory=list)  # each period's start + its time (epoch s)
    currents: list[Fraction] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def time_ms(self) -> int:
        return self.charging_ms + self.parking_ms

    def charged(self, energy_wh: int) -> Charged:
        return Charged(energy_wh, self.charging_ms, self.parking_ms, tuple(self.order) or ("charging",))


def _read_periods(value: object) -> _Periods:
    found = _Periods()
    if not isinstance(value, list):
        found.problems.append(f"charging_periods is not a list: {value!r}"[:200])
        return found
    for i, period in enumerate(value):
        start = parse_ts(period.get("start_date_time")) if isinstance(period, dict) else None
        dims = period.get("dimensions") if isinstance(period, dict) else None
        if start is None or not isinstance(dims, list):
            found.problems.append(f"charging_periods[{i}] malformed: {period!r}"[:200])
            continue
        found.starts.append(start)
        duration_ms = 0
        for dim in dims:
            kind = dim.get("type") if isinstance(dim, dict) else None
            volume = _number(dim.get("volume")) if isinstance(dim, dict) else None
            if not isinstance(kind, str) or volume is None or volume < 0:
                found.problems.append(f"charging_periods[{i}]: dimension {dim!r}"[:200])
                continue
            if kind == "ENERGY":
                found.energy_kwh += volume
            elif kind in ("TIME", "PARKING_TIME"):
                ms = round_half_up(volume * MS_PER_HOUR)
                duration_ms += ms
                if kind == "TIME":
                    found.charging_ms += ms
                else:
                    found.parking_ms += ms
                if ms:
                    found.order.append("charging" if kind == "TIME" else "parking")
            elif kind == "MAX_CURRENT":
                found.currents.append(volume)
        found.end = start + duration_ms / 1000
        found.ends.append(found.end)
    return found


# --- which tariff prices a session (docs/tariff.md "Changing the tariff") ----------------------------


@dataclass(frozen=True, slots=True)
class _TariffTimeline:
    """When each ``set_tariff`` may have taken effect, as the back office saw it: not before it was
    sent, and by its ``accepted`` result (both within :data:`TARIFF_WINDOW_S`); a command without a
    result may have applied at any time after it was sent, or never; a refused one never did."""

    commands: tuple[tuple[TariffCommand, _Result | None], ...]

    def allowed(self, created: float | None) -> set[int]:
        """The tariffs (0: the configured, ``i + 1``: command ``i``'s) that may price a session
        begun at ``created``: the one in force then."""
        possible = {0}
        for command, result in self.commands:
            k = command.index + 1
            if created is not None and created < command.t_sent - TARIFF_WINDOW_S:
                break  # sent after the session began (and so is every later one)
            if result is not None and result.status != "accepted":
                continue  # refused: changed nothing
            if result is not None and created is not None and created > result.t + TARIFF_WINDOW_S:
                possible = {k}
            else:
                possible |= {k}
        return possible


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
        self.tariffs = [IndependentTariff(t) for t in self.world.tariffs]
        commands = sorted(evidence.tariff_commands, key=lambda c: (c.t_sent, c.index))
        self.timeline = _TariffTimeline(
            tuple((c, self.stream.results.get(("set_tariff", c.correlation_id))) for c in commands)
        )
        self.priced_by: list[tuple[float, str, set[int]]] = []  # (began, session, tariffs) per capture

    def add(self, rule: str, message: str) -> None:
        self.findings.append(Finding(rule, message))

    def run(self) -> list[Finding]:
        for problem in self.e.rig_problems:
            self.add("rig", problem)
        self.rule_stream()
        self.rule_terminal()
        self.rule_orphans()
        self.rule_tariff_commands()
        self.rule_money()
        self.rule_tariff_order()
        self.rule_periods()
        self.rule_energy()
        self.rule_stop()
        self.rule_log()
        self.rule_process()
        self.rule_journal()
        self.rule_charger_payment()
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
        for line in lines:
            if line.get("kind") == "energy" and _int(line.get("quantity")) != energy_wh:
                self.add(
                    "money", f"{name}: energy line {line.get('quantity')} Wh, receipt energy_wh {energy_wh}"
                )
        used = self._used(receipt, ended, lines, energy_wh)
        authorized = _int(sim.get("authorized_minor"))
        problems = {k: self._priced(k, lines, used, amount, authorized) for k in range(len(self.tariffs))}
        matches = {k for k, found in problems.items() if not found}
        began = session.created_at
        allowed = self.timeline.allowed(began)
        if matches & allowed:
            if began is not None:
                self.priced_by.append((began, session.session_id, matches & allowed))
        else:
            expected = max(allowed)  # the latest tariff that may apply: the one the messages use
            for problem in problems[expected]:
                self.add("money", f"{name}: {problem}")
            if len(self.tariffs) > 1:
                self.add(
                    "tariff",
                    f"{name} (begun {_stamp(began)}) may be priced by tariff {_tariff_names(allowed)}; "
                    f"its receipt matches {_tariff_names(matches) if matches else 'none of the tariffs'}",
                )
        time_ms = sum(
            _int(line.get("quantity")) or 0 for line in lines if line.get("kind") in ("time", "idle_fee")
        )
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

    def _used(
        self,
        receipt: dict[str, Any],
        ended: dict[str, Any] | None,
        lines: list[dict[str, Any]],
        energy_wh: int,
    ) -> Charged:
        """What the session used: its charging periods (``rule_periods`` checks them), or, without
        readable ones, the receipt's time lines."""
        for source in (receipt, ended or {}):
            if "charging_periods" in source:
                periods = _read_periods(source["charging_periods"])
                if not periods.problems:
                    return periods.charged(energy_wh)

        def quantity(kind: str) -> int:
            return sum(_int(line.get("quantity")) or 0 for line in lines if line.get("kind") == kind)

        parking = quantity("idle_fee")
        return Charged(
            energy_wh, quantity("time"), parking, ("charging", "parking") if parking else ("charging",)
        )

    def _priced(
        self, k: int, lines: list[dict[str, Any]], used: Charged, amount: int | None, authorized: int | None
    ) -> list[str]:
        """How the receipt's lines and the captured amount differ from tariff ``k``'s price of
        ``used`` (empty: they are that price)."""
        tariff = self.tariffs[k]
        expected = tariff.quote(used)
        problems: list[str] = []
        quoted = 0
        seen: set[str] = set()
        for line in lines:
            kind, quantity = line.get("kind"), _int(line.get("quantity"))
            if kind == "cap_adjustment":
                continue
            if kind not in IndependentTariff.ORDER or quantity is None:
                problems.append(f"receipt line {kind!r} ({line.get('quantity')}) not in the tariff")
                continue
            seen.add(str(kind))
            want = expected.get(str(kind))
            got = (_int(line.get("net_minor")), _int(line.get("vat_minor")), _int(line.get("gross_minor")))
            if got != (want.amounts if want is not None else (0, 0, 0)):
                problems.append(
                    f"{kind} line of {quantity} {line.get('unit')}: (net, VAT, gross) {got}, independently "
                    f"{want.amounts if want is not None else (0, 0, 0)}"
                )
            elif want is not None and quantity != want.quantity:
                problems.append(
                    f"{kind} line of {quantity} {line.get('unit')}, independently {want.quantity}"
                )
            quoted += got[2] or 0
        for kind, want in expected.items():
            if kind not in seen and want.amounts != (0, 0, 0):
                problems.append(f"no {kind} line, independently {want.quantity} priced {want.amounts}")
        full = sum(line.gross_minor for line in expected.values())
        expected_amount = full if authorized is None else min(full, authorized)
        parking = f", parking {used.parking_ms} ms" if used.parking_ms else ""
        if amount != expected_amount:
            problems.append(
                f"captured {amount}, independently tariff({used.energy_wh} Wh, {used.charging_ms} ms"
                f"{parking}) = {full} capped at the authorized {authorized} = {expected_amount}"
            )
        if quoted != full:
            problems.append(f"the receipt's tariff lines add up to {quoted}, independently {full}")
        return problems

    def rule_tariff_commands(self) -> None:
        """A ``set_tariff`` of a valid tariff (every one the world sends) is accepted, naming its
        currency (docs/commands.md)."""
        for command, result in self.timeline.commands:
            if result is None:
                continue
            change = self.world.tariff_changes[command.index]
            data = result.payload.get("data") or {}
            label = f"set_tariff #{command.index + 1} ({change.describe()})"
            if result.status != "accepted":
                self.add(
                    "tariff",
                    f"{label}: answered {result.status}/{result.payload.get('code')}: "
                    f"{result.payload.get('reason')}",
                )
            elif not isinstance(data, dict) or data.get("currency") != change.tariff.currency:
                self.add(
                    "tariff",
                    f"{label}: accepted with data {data}, expected currency {change.tariff.currency}",
                )

    def rule_tariff_order(self) -> None:
        """A tariff that priced a session was in force from then on: a session begun later is never
        priced by an earlier tariff (an unanswered ``set_tariff`` either never applied, or applied
        once and for good) — docs/tariff.md "Changing the tariff"."""
        floor: list[tuple[float, str, int]] = []  # (began, session, the lowest tariff it could take)
        for began, session_id, ks in sorted(self.priced_by):
            bound = max(
                ((k, sid) for t, sid, k in floor if t < began - TARIFF_ORDER_SLACK_S), default=(0, "")
            )
            fitting = [k for k in ks if k >= bound[0]]
            if not fitting:
                self.add(
                    "tariff",
                    f"session {session_id} (begun {_stamp(began)}) is priced by tariff {_tariff_names(ks)}, "
                    f"but session {bound[1]}, begun earlier, was already priced by tariff "
                    f"{_tariff_names({bound[0]})}: a set_tariff that applied was undone",
                )
                continue
            floor.append((began, session_id, min(fitting)))

    def rule_periods(self) -> None:
        """``charging_periods`` (contract 1.2.0, docs/upstream.md) on ``session.ended`` and the
        receipt: the same; start times non-decreasing; ENERGY adds up to ``energy_wh``; the periods do
        not overlap (gaps allowed: time the agent was down) and lie within the session (after its start,
        up to its last meter value, before ``session.ended``); MAX_CURRENT only from a charger that
        reports ``current_a``, within the connector's limit."""
        report_current = self.world.charger.report_current
        for session in self.stream.sessions.values():
            ended = session.first("session.ended")
            if ended is None:
                continue
            name = f"session {session.session_id}"
            receipt = session.receipt
            if "charging_periods" not in ended:
                self.add("periods", f"{name}: session.ended without charging_periods")
                continue
            value = ended["charging_periods"]
            if receipt is not None:
                if "charging_periods" not in receipt:
                    self.add("periods", f"{name}: receipt without charging_periods")
                elif _canonical(receipt["charging_periods"]) != _canonical(value):
                    self.add(
                        "periods",
                        f"{name}: charging_periods differ: session.ended {_canonical(value)[:300]}, receipt "
                        f"{_canonical(receipt['charging_periods'])[:300]}",
                    )
            periods = _read_periods(value)
            for problem in periods.problems:
                self.add("periods", f"{name}: {problem}")
            starts = periods.starts
            for i in range(1, len(starts)):
                if starts[i] < starts[i - 1]:
                    self.add(
                        "periods",
                        f"{name}: charging_periods[{i}] starts {_stamp(starts[i])}, before the period "
                        f"before it ({_stamp(starts[i - 1])})",
                    )
            energy_wh = _int(ended.get("energy_wh"))
            if energy_wh is not None and periods.energy_kwh * 1000 != energy_wh:
                self.add(
                    "periods",
                    f"{name}: ENERGY of the charging periods adds up to "
                    f"{float(periods.energy_kwh * 1000)} Wh, session.ended energy_wh {energy_wh}",
                )
            if not starts or periods.end is None:
                continue
            span_ms = (periods.end - starts[0]) * 1000
            if periods.time_ms > span_ms + PERIOD_SLACK_S * 1000:
                self.add(
                    "periods",
                    f"{name}: TIME + PARKING_TIME of the charging periods is {periods.time_ms} ms, but they "
                    f"span {span_ms:.0f} ms ({_stamp(starts[0])} → {_stamp(periods.end)})",
                )
            for i in range(1, len(starts)):  # a gap (the agent was down) is allowed, an overlap not
                if starts[i] < periods.ends[i - 1] - PERIOD_SLACK_S:
                    self.add(
                        "periods",
                        f"{name}: charging_periods[{i}] starts {_stamp(starts[i])}, before the period "
                        f"before it ends ({_stamp(periods.ends[i - 1])})",
                    )
            began = session.created_at
            if began is not None and starts[0] < began - PERIOD_SLACK_S:
                self.add(
                    "periods", f"{name}: the first charging period starts {_stamp(starts[0])}, before the "
                    f"session began ({_stamp(began)})",
                )  # fmt: skip
            end_ts = parse_ts(ended.get("ts"))
            if end_ts is not None and periods.end > end_ts + PERIOD_SLACK_S:
                self.add(
                    "periods",
                    f"{name}: the charging periods run until {_stamp(periods.end)}, after session.ended "
                    f"({ended.get('ts')})",
                )
            metered = [t for m in session.meters if (t := parse_ts(m.get("ts"))) is not None]
            if metered and periods.end < max(metered) - PERIOD_SLACK_S:
                self.add(
                    "periods",
                    f"{name}: the charging periods end {_stamp(periods.end)}, before the session's last "
                    f"meter value ({_stamp(max(metered))}): time is missing",
                )
            if periods.currents and not report_current:
                self.add("periods", f"{name}: MAX_CURRENT {[float(a) for a in periods.currents]} A, but the "
                         "charger never reports current_a")  # fmt: skip
            cid = session.connector_id
            if cid is not None and 1 <= cid <= len(self.world.charger.max_current_a):
                limit = self.world.charger.max_current_a[cid - 1]
                over = [float(a) for a in periods.currents if a > limit + CURRENT_SLACK_A]
                if over:
                    self.add("periods", f"{name}: MAX_CURRENT {over} A above the connector's {limit} A")

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

    def rule_charger_payment(self) -> None:
        if self.e.charger_payments is None:
            return
        by_session: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for record in self.e.charger_payments:
            payload = record.get("payload")
            if not isinstance(payload, dict):
                self.add("charger_payment", f"record without a payload: {record!r:.200}")
                continue
            try:
                check_no_pan("charger payment", payload)  # the journal's own PAN guard (OPS-2)
            except JournalError as exc:
                self.add("charger_payment", f"a payment message: {exc}")
            by_session[str(payload.get("session_id"))].append(payload)
        for sid, payloads in sorted(by_session.items()):
            name = f"session {sid}"
            session = self.stream.sessions.get(sid)
            if session is None:
                self.add("charger_payment", f"{name}: payment messages for a session the stream never had")
                continue
            refs = {p.get("psp_ref") for p in payloads}
            if refs != {session.terminal_session_id}:
                self.add(
                    "charger_payment",
                    f"{name}: psp_ref {sorted(map(str, refs))} ≠ terminal session "
                    f"{session.terminal_session_id}",
                )
            settled = {_canonical(p) for p in payloads if p.get("event") == "settled"}
            if len(settled) > 1:
                self.add(
                    "charger_payment", f"{name}: {len(settled)} different settlements: {sorted(settled)}"
                )
            if not settled:
                continue
            last = json.loads(sorted(settled)[0])
            captured, voided = session.first("payment.captured"), session.first("payment.voided")
            ended = session.first("session.ended")
            amount = _int(last.get("settlement_minor"))
            if last.get("status") == "Settled":
                want = _int(captured.get("amount_minor")) if captured is not None else None
                if captured is None or amount != want:
                    self.add("charger_payment", f"{name}: settled {amount}, payment.captured {want}")
                if ended is not None and _int(ended.get("amount_minor")) != amount:
                    self.add(
                        "charger_payment",
                        f"{name}: settled {amount}, session.ended {ended.get('amount_minor')}",
                    )
                number = _tsid_int(str(last.get("psp_ref")))
                sim = self.sim_by_id.get(number) if number is not None else None
                if sim is None or _int(sim.get("committed_minor")) != amount:
                    committed = sim.get("committed_minor") if sim is not None else None
                    self.add(
                        "charger_payment", f"{name}: settled {amount}, the terminal committed {committed}"
                    )
            elif last.get("status") == "Canceled":
                if voided is None or amount != 0:
                    self.add(
                        "charger_payment", f"{name}: Canceled settlement of {amount} without payment.voided"
                    )
            else:
                self.add("charger_payment", f"{name}: settlement status {last.get('status')!r}")
        for sid, session in sorted(self.stream.sessions.items()):
            done = session.first("payment.captured") or session.first("payment.voided")
            if done is not None and not any(p.get("event") == "settled" for p in by_session.get(sid, ())):
                self.add(
                    "charger_payment",
                    f"session {sid}: {done.get('event')} but no settlement reached the charger",
                )


def _stamp(t: float | None) -> str:
    if t is None:
        return "?"
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _tariff_names(ks: Iterable[int]) -> str:
    return " or ".join("#0 (configured)" if k == 0 else f"#{k} (set_tariff #{k})" for k in sorted(ks))


def _canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def evaluate(evidence: Evidence, figures: dict[str, int] | None = None) -> list[Finding]:
    """Every finding of the seed (empty: the seed passed). ``figures``, when given, receives what
    the tariff rules saw: ``priced_by_set_tariff`` (captured sessions only a ``set_tariff``'s
    tariff prices) and ``priced_by_ocpi`` (… only an OCPI-form tariff prices)."""
    oracle = _Oracle(evidence)
    findings = oracle.run()
    if figures is not None:
        tariffs = evidence.world.tariffs
        figures["priced_by_set_tariff"] = sum(min(ks) >= 1 for _, _, ks in oracle.priced_by)
        figures["priced_by_ocpi"] = sum(
            all(tariffs[k].form == "ocpi" for k in ks) for _, _, ks in oracle.priced_by
        )
    return findings
