"""Reconciliation report (REC-1, DESIGN.md §5.6; docs/reconciliation.md).

:func:`build_report` reads the journal **read-only** (its own SQLite connection, one snapshot; works
while the daemon writes, WAL) and builds a :class:`agent.upstream.contract.ReconciliationReport`: one line per
payment, the totals and every discrepancy. :func:`render_text` formats it for the CLI. Pure
computation apart from that one read; every amount is an integer in minor units.

Window
    A day is ``[00:00, next day 00:00)`` in the station's timezone: ``tz`` when given, else the
    tariff's ``timezone`` (``Tariff.timezone``), else UTC. A payment belongs to the window its
    ``started_at`` falls in; a payment still open (not committed, voided, declined, failed or ended)
    that started before the window is carried into every later report until it is closed, so an
    undisposed payment cannot hide in yesterday's report. ``recovery_*`` events (orphan voids) belong
    to the window their journal time falls in.

Discrepancy kinds (``Discrepancy.kind``; the codes of the brief in brackets)
    ``undisposed_payment`` [undisposed] error: an approved EMV payment, not final, whose Commit/Void
        was not sent and that has not progressed for ``undisposed_after_s`` (STOP-7).
    ``commit_unconfirmed`` [commit_not_confirmed] error: a Commit/Void sent, not confirmed by the
        terminal for ``undisposed_after_s``; or confirmed as *session not found* (disposed for the
        engine, but nobody knows whether the money was captured).
    ``captured_mismatch`` [captured_differs_from_cost] error: the Commit amount differs from the
        journal's computed cost, or a Void although energy was delivered at a cost (STOP-8).
    ``capped_at_authorized`` info: the cost exceeded the authorization and the Commit was capped at
        the authorized amount (AMT-4) — expected, listed for the record.
    ``free_vend`` [free_vend_energy] warning: energy delivered without a card payment (free vend).
    ``recovered_after_crash`` [recovered] warning: the payment was resumed or finalised by the restart
        recovery (ERR-5).
    ``orphan_voided`` warning: P6X List Sessions found a terminal session the journal never saw and
        voided it (``recovery_orphan_void``/``recovery_orphan_voided``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from pathlib import Path
from typing import Final, Literal

from agent.money.tariff import Tariff
from agent.store.journal import EventRow, PaymentRow, read_window
from agent.upstream.contract import (
    Discrepancy,
    DiscrepancyKind,
    ReconciledPayment,
    ReconciliationReport,
    ReconciliationTotals,
    masked_pan_ok,
    new_msg_id,
    utc_timestamp,
)

__all__ = [
    "DEFAULT_UNDISPOSED_AFTER_S",
    "SEVERITY",
    "Window",
    "build_report",
    "day_window",
    "has_discrepancy",
    "render_text",
]

DEFAULT_UNDISPOSED_AFTER_S: Final = 900  # session.undisposed_alarm_after_s default (STOP-7)

Status = Literal["open", "captured", "voided", "declined", "failed", "undisposed", "account", "free_vend"]
Kind = DiscrepancyKind
Recovery = Literal["resumed", "resent", "commit", "void", "ended"]
Severity = Literal["error", "warning", "info"]

SEVERITY: Final[dict[Kind, Severity]] = {
    "possible_orphan_approval": "error",
    "undisposed_payment": "error",
    "commit_unconfirmed": "error",
    "captured_mismatch": "error",
    "free_vend": "warning",
    "recovered_after_crash": "warning",
    "orphan_voided": "warning",
    "capped_at_authorized": "info",
}
_METHODS: Final = frozenset({"emv", "rfid", "remote", "free_vend"})
_OPEN_STATES: Final = frozenset({"authorizing", "approved", "charging", "stopping", "settling"})


@dataclass(frozen=True, slots=True)
class Window:
    """``[since, until)`` (timezone-aware) and the local ``day`` when it is one."""

    since: datetime
    until: datetime
    day: date | None = None


def day_window(day: date, tz: tzinfo) -> Window:
    """``day`` 00:00 to the next day's 00:00 in ``tz`` (23 or 25 hours on DST change days)."""
    start = datetime.combine(day, time(0), tzinfo=tz)
    end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz)
    return Window(start.astimezone(UTC), end.astimezone(UTC), day)


def _station_tz(tz: tzinfo | None, tariff: Tariff | None) -> tzinfo:
    if tz is not None:
        return tz
    if tariff is not None:
        return tariff.timezone
    return UTC


def _ts(text: str | None) -> str | None:
    return utc_timestamp(datetime.fromisoformat(text)) if text else None


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _method(row: PaymentRow) -> str:
    if row.method in _METHODS:
        return row.method
    return "rfid" if row.card_kind == "rfid" else "emv"


def _status(row: PaymentRow, method: str) -> Status:
    match row.state:
        case "committed":
            return "captured"
        case "voided":
            return "voided"
        case "declined":
            return "declined"
        case "failed":
            return "failed"
        case "settling":
            return "undisposed"
        case "ended":
            return "account" if method in ("rfid", "remote") else "free_vend"
        case _:
            return "open"


def _recovery(row: PaymentRow, events: Sequence[EventRow]) -> Recovery | None:
    """What the restart recovery did to this payment (derived from the journal's event order)."""
    if not row.recovered:
        return None
    kinds = [e.kind for e in events]
    if "recovery_unapproved" in kinds:
        return "ended"
    restored = next((i for i, e in enumerate(events) if e.kind == "payment_restored"), None)
    if restored is None:
        return "ended"
    before, after = kinds[:restored], kinds[restored + 1 :]
    data = events[restored].data
    if "commit" in before or "void" in before:
        return "resent"
    if data.get("energy_on") and data.get("plugged"):
        return "resumed"
    for kind in after:
        if kind in ("commit", "void"):
            return "commit" if kind == "commit" else "void"
    return "ended"


def _age_s(now: datetime, since: str) -> int:
    return max(0, int((now - _parse(since)).total_seconds()))


def _discrepancies(
    row: PaymentRow, method: str, recovery: Recovery | None, now: datetime, undisposed_after_s: int
) -> list[Discrepancy]:
    found: list[Discrepancy] = []

    def add(kind: Kind, detail: str, amount: int | None = None, age: int | None = None) -> None:
        found.append(
            Discrepancy(
                kind=kind,
                severity=SEVERITY[kind],
                session_id=row.payment_id,
                connector_id=row.connector_id,
                terminal_session_id=row.terminal_session_id,
                amount_minor=amount,
                age_s=age,
                detail=detail,
            )
        )

    emv = method == "emv" and row.approved and row.terminal_session_id is not None
    if emv and row.state in _OPEN_STATES:
        age = _age_s(now, row.started_at)
        idle = _age_s(now, row.disposal_decided_at or row.updated_at)
        what = row.disposal or "disposal"
        if row.disposal is not None and row.disposal_sent_at is not None:
            if idle >= undisposed_after_s:
                add(
                    "commit_unconfirmed",
                    f"{what} sent {row.disposal_attempts}x, not confirmed for {idle} s",
                    row.final_minor if row.disposal == "commit" else row.authorized_minor,
                    age,
                )
        elif idle >= undisposed_after_s:
            state = f"{what} decided, not sent" if row.disposal else f"{row.state}, no Commit/Void"
            add(
                "undisposed_payment",
                f"approved payment undisposed: {state} for {idle} s",
                row.authorized_minor,
                age,
            )
    if row.state == "committed" and row.disposal_outcome == "not_found":
        add(
            "commit_unconfirmed",
            "terminal answered session not found to the Commit: capture not confirmed",
            row.final_minor,
        )
    if row.disposal == "commit" and row.final_minor is not None and row.final_minor != row.cost_minor:
        capped = row.authorized_minor is not None and row.final_minor == row.authorized_minor
        if capped and row.cost_minor > row.final_minor:
            add(
                "capped_at_authorized",
                f"cost {row.cost_minor} capped at the authorized {row.authorized_minor}",
                row.cost_minor - row.final_minor,
            )
        else:
            add(
                "captured_mismatch",
                f"captured {row.final_minor} but the computed cost is {row.cost_minor}",
                row.final_minor - row.cost_minor,
            )
    if row.disposal == "void" and row.energy_wh > 0 and row.cost_minor > 0:
        add(
            "captured_mismatch",
            f"voided although {row.energy_wh} Wh were delivered at a cost of {row.cost_minor}",
            -row.cost_minor,
        )
    unpaid = method == "free_vend" or (row.state == "ended" and method == "emv")
    if unpaid and row.energy_wh > 0:
        add("free_vend", f"{row.energy_wh} Wh delivered without a card payment", row.cost_minor)
    if row.orphan_open:  # ERR-5 / psp-reference §10.4: until an operator clears it
        add(
            "possible_orphan_approval",
            f"card {row.masked_pan or '(unknown)'} read at {row.started_at} had no outcome when the agent "
            "restarted: the terminal may hold an approval; check the payment portal, void it there, "
            "then send clear_discrepancy",
            row.requested_minor,
            _age_s(now, row.started_at),
        )
    elif recovery is not None:
        add("recovered_after_crash", f"restored after a crash: {recovery}")
    return found


def _orphans(events: Sequence[EventRow]) -> list[Discrepancy]:
    """One ``orphan_voided`` per terminal session the recovery voided (outcome of the last try)."""
    outcome: dict[str, str] = {}
    order: list[str] = []
    for e in events:
        if e.kind not in ("recovery_orphan_void", "recovery_orphan_voided"):
            continue
        sid = str(e.data.get("session_id") or "")
        if not sid:
            continue
        if sid not in outcome:
            order.append(sid)
            outcome[sid] = "no outcome journaled (crash during the Void?)"
        if e.kind == "recovery_orphan_voided":
            outcome[sid] = f"outcome {e.data.get('outcome')}"
    return [
        Discrepancy(
            kind="orphan_voided",
            severity=SEVERITY["orphan_voided"],
            terminal_session_id=sid[:32],
            detail=f"terminal session the journal never saw, voided by the restart recovery: {outcome[sid]}",
        )
        for sid in order
    ]


def _line(row: PaymentRow, method: str, recovery: Recovery | None) -> ReconciledPayment:
    status = _status(row, method)
    captured: int | None = None
    if row.state == "committed":
        captured = row.final_minor or 0
    elif row.state == "voided":
        captured = 0
    pan = row.masked_pan if row.masked_pan and masked_pan_ok(row.masked_pan) else None
    started = _ts(row.started_at)
    assert started is not None
    return ReconciledPayment(
        session_id=row.payment_id,
        connector_id=row.connector_id,
        method=method,  # type: ignore[arg-type]  # checked against _METHODS in _method()
        terminal_session_id=row.terminal_session_id,
        status=status,
        started_at=started,
        ended_at=_ts(row.ended_at),
        energy_wh=row.energy_wh,
        computed_minor=row.cost_minor,
        authorized_minor=row.authorized_minor,
        captured_minor=captured,
        voided=row.state == "voided",
        voided_minor=(row.authorized_minor or 0) if row.state == "voided" else None,
        masked_pan=pan,
        recovery=recovery,
    )


def _totals(lines: Sequence[ReconciledPayment]) -> ReconciliationTotals:
    return ReconciliationTotals(
        payments=len(lines),
        authorized_minor=sum(p.authorized_minor or 0 for p in lines),
        captured_minor=sum(p.captured_minor or 0 for p in lines),
        voided=sum(1 for p in lines if p.voided),
        voided_minor=sum(p.voided_minor or 0 for p in lines),
        energy_wh=sum(p.energy_wh for p in lines),
        computed_minor=sum(p.computed_minor for p in lines),
        by_method=dict(sorted(Counter(p.method for p in lines).items())),
        by_status=dict(sorted(Counter(p.status for p in lines).items())),
    )


def build_report(
    source: Path | str,
    *,
    station_id: str,
    day: date | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    tz: tzinfo | None = None,
    tariff: Tariff | None = None,
    currency: str | None = None,
    now: datetime | None = None,
    undisposed_after_s: int = DEFAULT_UNDISPOSED_AFTER_S,
    trigger: Literal["daily", "command", "cli"] = "cli",
    correlation_id: str | None = None,
) -> ReconciliationReport:
    """The reconciliation report of ``day`` (local, see the module doc) or ``[since, until)``.

    ``source`` is the state directory or the journal file; read-only. Neither ``day`` nor
    ``since``/``until``: today (local). ``currency`` defaults to the tariff's (else ``EUR``).
    ``now`` (default: the clock) is the reference for the ages of open payments.
    Raises :class:`agent.store.journal.JournalError` (no journal, unreadable) and ``ValueError`` (window).
    """
    zone = _station_tz(tz, tariff)
    at = (now or datetime.now(UTC)).astimezone(UTC)
    if day is not None and (since is not None or until is not None):
        raise ValueError("give either a day or since/until, not both")
    if since is not None or until is not None:
        if since is None or until is None:
            raise ValueError("since and until go together")
        if since.tzinfo is None or until.tzinfo is None:
            raise ValueError("since and until need a timezone (e.g. 2026-03-01T00:00+01:00)")
        if until <= since:
            raise ValueError("until must be after since")
        window = Window(since.astimezone(UTC), until.astimezone(UTC))
    else:
        window = day_window(day or at.astimezone(zone).date(), zone)

    rows, events = read_window(source, since=window.since, until=window.until)
    by_payment: dict[str, list[EventRow]] = {}
    for e in events:
        if e.payment_id is not None:
            by_payment.setdefault(e.payment_id, []).append(e)

    lines: list[ReconciledPayment] = []
    found: list[Discrepancy] = []
    for row in rows:
        method = _method(row)
        recovery = _recovery(row, by_payment.get(row.payment_id, ()))
        lines.append(_line(row, method, recovery))
        found.extend(_discrepancies(row, method, recovery, at, undisposed_after_s))
    found.extend(_orphans(events))

    if window.day is not None:
        report_id = f"REC-{station_id}-{window.day.isoformat()}"
    else:
        report_id = f"REC-{station_id}-{window.since:%Y%m%dT%H%M%S}-{window.until:%Y%m%dT%H%M%S}"
    return ReconciliationReport(
        msg_id=new_msg_id(),
        report_id=report_id[:64],
        station_id=station_id,
        trigger=trigger,
        correlation_id=correlation_id,
        date=window.day.isoformat() if window.day is not None else None,
        period_start=utc_timestamp(window.since),
        period_end=utc_timestamp(window.until),
        generated_at=utc_timestamp(at),
        currency=currency or (tariff.currency if tariff is not None else "EUR"),
        payments=tuple(lines),
        totals=_totals(lines),
        discrepancies=tuple(found),
    )


def has_discrepancy(report: ReconciliationReport) -> bool:
    """True when the report lists a discrepancy that is not merely informational."""
    return any(d.severity != "info" for d in report.discrepancies)


# --- text -----------------------------------------------------------------------------------------


def _money(value: int | None, digits: int) -> str:
    if value is None:
        return "-"
    if digits == 0:
        return str(value)
    sign = "-" if value < 0 else ""
    whole, frac = divmod(abs(value), 10**digits)
    return f"{sign}{whole}.{frac:0{digits}d}"


def render_text(report: ReconciliationReport, *, minor_digits: int = 2) -> str:
    """The report as an operator reads it (exact: integer minor units shown with ``minor_digits``)."""

    def m(value: int | None) -> str:
        return _money(value, minor_digits)

    period = f"{report.period_start} .. {report.period_end}"
    title = f"Reconciliation {report.station_id}" + (f" {report.date}" if report.date else "")
    out = [title, f"period {period} ({report.currency}), generated {report.generated_at}", ""]
    out.append(
        f"{'payment':<28} {'conn':>4} {'method':<9} {'status':<10} {'authorized':>10} {'captured':>10} "
        f"{'voided':>10} {'cost':>10} {'Wh':>8} {'terminal':<10} card"
    )
    for p in report.payments:
        flag = f" recovered:{p.recovery}" if p.recovery else ""
        out.append(
            f"{p.session_id:<28} {p.connector_id:>4} {p.method:<9} {p.status:<10} "
            f"{m(p.authorized_minor):>10} {m(p.captured_minor):>10} {m(p.voided_minor):>10} "
            f"{m(p.computed_minor):>10} {p.energy_wh:>8} {p.terminal_session_id or '-':<10} "
            f"{p.masked_pan or '-'}{flag}"
        )
    if not report.payments:
        out.append("(no payments)")
    t = report.totals
    out += [
        "",
        f"totals: payments {t.payments}, authorized {m(t.authorized_minor)}, "
        f"captured {m(t.captured_minor)}, voided {t.voided} ({m(t.voided_minor)}), "
        f"energy {t.energy_wh} Wh, computed {m(t.computed_minor)}",
        "by method: " + (", ".join(f"{k} {v}" for k, v in t.by_method.items()) or "-"),
        "by status: " + (", ".join(f"{k} {v}" for k, v in t.by_status.items()) or "-"),
        "",
    ]
    if not report.discrepancies:
        out.append("discrepancies: none")
    else:
        out.append(f"discrepancies: {len(report.discrepancies)}")
        for d in report.discrepancies:
            who = d.session_id or (
                f"terminal session {d.terminal_session_id}" if d.terminal_session_id else "-"
            )
            amount = f" amount {m(d.amount_minor)}" if d.amount_minor is not None else ""
            age = f" age {d.age_s} s" if d.age_s is not None else ""
            out.append(f"  {d.severity.upper():<7} {d.kind:<22} {who}{amount}{age}: {d.detail}")
    return "\n".join(out) + "\n"
