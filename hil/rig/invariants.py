"""Invariants of a finished rig run, read from the terminal simulator's ``sessions`` table and the
journal (``evpay-agent sessions --json``): ERR-5 / STOP-7 (every approved session ends in exactly
one Commit or Void) and the journal's agreement with the terminal."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hil.rig.procs import HarnessError

__all__ = [
    "FINAL_SIM_STATUSES",
    "journal_by_sid",
    "journal_problems",
    "payment_is_open",
    "settlement_problems",
    "sim_disposals",
]

FINAL_SIM_STATUSES = {"committed", "voided", "expired_committed", "expired_voided"}


def sim_disposals(session: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [h for h in session.get("history", []) if h.get("event") in ("committed", "voided")]


def settlement_problems(sim_sessions: Sequence[Mapping[str, Any]]) -> list[str]:
    """ERR-5 / STOP-7 on the terminal: every approved session ended in exactly one commit or void."""
    problems: list[str] = []
    for s in sim_sessions:
        sid = s["session_id"]
        disposals = sim_disposals(s)
        if s["status"] == "approved":
            problems.append(f"session {sid} still approved (authorized {s['authorized_minor']})")
        if len(disposals) != 1 and s["status"] != "approved":
            problems.append(f"session {sid}: {len(disposals)} disposals {disposals}")
        refused = [h for h in s.get("history", []) if h.get("event") == "commit_refused"]
        if refused:
            problems.append(f"session {sid}: commit above the authorized amount attempted {refused}")
        if s["status"] == "committed" and not (0 < (s["committed_minor"] or 0) <= s["authorized_minor"]):
            problems.append(f"session {sid}: committed {s['committed_minor']} of {s['authorized_minor']}")
    return problems


def payment_is_open(p: Mapping[str, Any]) -> bool:
    """A journal payment not yet finished: an EMV payment without a confirmed disposal, or any
    payment without ``ended_at``."""
    if p.get("terminal_session_id") is not None and not (p.get("disposal") and p.get("disposal_confirmed")):
        return True
    return p.get("ended_at") is None


def journal_problems(
    payments: Sequence[Mapping[str, Any]],
    sim_sessions: Sequence[Mapping[str, Any]],
    *,
    orphans_voided: bool = False,
) -> list[str]:
    """The journal agrees with the terminal: no open payment; each terminal session's disposal and
    amount are the journal's. ``orphans_voided``: a voided terminal session without a journal
    payment is fine (P6X restart recovery voids approvals the journal never saw, docs/runtime.md)."""
    problems = [
        f"payment {p.get('payment_id')} open: state={p.get('state')} disposal={p.get('disposal')} "
        f"confirmed={p.get('disposal_confirmed')} ended_at={p.get('ended_at')}"
        for p in payments
        if payment_is_open(p)
    ]
    by_sid: dict[int, list[Mapping[str, Any]]] = {}
    for p in payments:
        if p.get("terminal_session_id") is not None:
            by_sid.setdefault(int(p["terminal_session_id"]), []).append(p)
    for s in sim_sessions:
        sid = int(s["session_id"])
        rows = by_sid.get(sid, [])
        if not rows and orphans_voided and s["status"] == "voided":
            continue
        if len(rows) != 1:
            problems.append(f"terminal session {sid} ({s['status']}) has {len(rows)} journal payments")
            continue
        p = rows[0]
        if s["status"] == "committed":
            if p.get("disposal") != "commit" or p.get("final_minor") != s["committed_minor"]:
                problems.append(
                    f"session {sid}: terminal committed {s['committed_minor']}, journal "
                    f"disposal={p.get('disposal')} final_minor={p.get('final_minor')}"
                )
        elif s["status"] == "voided" and p.get("disposal") != "void":
            problems.append(f"session {sid}: terminal voided, journal disposal={p.get('disposal')}")
    return problems


def journal_by_sid(payments: Sequence[Mapping[str, Any]], sid: int) -> dict[str, Any]:
    rows = [
        p
        for p in payments
        if p.get("terminal_session_id") is not None and int(p["terminal_session_id"]) == sid
    ]
    if len(rows) != 1:
        raise HarnessError(f"expected one journal payment for terminal session {sid}, got {rows}")
    return dict(rows[0])
