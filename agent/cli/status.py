"""``evpay-agent status [-c FILE | --state-dir DIR] [--json]``: the running daemon's live state (OPS-3).

Asks the daemon over its control socket ``{state_dir}/control.sock`` (:mod:`agent.runtime.control`;
the state directory from the config file, like ``sessions`` and ``reconcile``, or given with
``--state-dir``, which needs no readable config). Prints per connector its state and current
session (session id, energy so far, running cost, elapsed time, payment state), the terminal link
and PSP state, the upstream connection and outbox depth, pending settlements and active alarms.
``--json`` prints the daemon's status object as received: one line (the fields are listed in
``docs/runtime.md``).

Exit codes: 0 printed; 1 the daemon did not answer properly (timeout, error reply); 2 bad config;
3 the daemon is not running (no control socket, or nothing listens on it); 4 permission denied
on the control socket (it is 0600, owned by the agent's user).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

from agent.config.schema import DEFAULT_CONFIG_PATH, load_config
from agent.errors import ConfigError
from agent.runtime.control import (
    CLIENT_TIMEOUT_S,
    ControlError,
    ControlPermissionDenied,
    DaemonNotRunning,
    request,
    socket_path,
)
from agent.runtime.status import STATUS_REQUEST

EXIT_NO_ANSWER = 1
EXIT_CONFIG = 2
EXIT_NOT_RUNNING = 3
EXIT_PERMISSION = 4


def money(minor: object, digits: int, currency: str | None) -> str:
    """``1234`` with 2 digits → ``12.34 EUR`` (integer arithmetic; ``-`` for none)."""
    if not isinstance(minor, int):
        return "-"
    sign = "-" if minor < 0 else ""
    whole, frac = divmod(abs(minor), 10**digits)
    text = f"{sign}{whole}.{frac:0{digits}d}" if digits else f"{sign}{whole}"
    return f"{text} {currency}" if currency else text


def duration(seconds: object) -> str:
    """``3725`` → ``1:02:05``."""
    if not isinstance(seconds, int) or seconds < 0:
        return "-"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _uptime(doc: Mapping[str, Any]) -> int | None:
    try:
        started = datetime.fromisoformat(str(doc["started_at"]).replace("Z", "+00:00"))
        now = datetime.fromisoformat(str(doc["ts"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return None
    return max(0, int((now - started).total_seconds()))


def render(doc: Mapping[str, Any]) -> str:
    """The human view of a status document (compact lines, one block per part)."""
    digits = doc.get("minor_unit_digits")
    digits = digits if isinstance(digits, int) else 2
    currency = doc.get("currency")

    def cost(value: object) -> str:
        return money(value, digits, currency if isinstance(currency, str) else None)

    flags = [
        "ready" if doc.get("ready") else "starting",
        *(["recovering"] if doc.get("ready") and not doc.get("recovered") else []),
        *(["stopping"] if doc.get("stopping") else []),
    ]
    health = doc.get("health")
    lines = [
        f"station {doc.get('station_id')}  evpay-agent {doc.get('version')}  pid {doc.get('pid')}  "
        f"up {duration(_uptime(doc))}  {' '.join(flags)}" + (f"  UNHEALTHY: {health}" if health else "")
    ]
    terminal = doc.get("terminal")
    if isinstance(terminal, Mapping):
        psp = terminal.get("psp_state") or "-"
        line = f"terminal   {terminal.get('link')}  psp {psp}  since {terminal.get('since')}"
        if terminal.get("last_error"):
            line += f"  last error: {terminal['last_error']}"
        lines.append(line)
    else:
        lines.append("terminal   unknown")
    upstream = doc.get("upstream")
    if isinstance(upstream, Mapping):
        state = "connected" if upstream.get("connected") else "NOT connected"
        near = "  (near full)" if upstream.get("outbox_near_full") else ""
        lines.append(f"upstream   {state}  outbox {upstream.get('outbox_depth')} unsent{near}")
    connectors = doc.get("connectors")
    for c in connectors if isinstance(connectors, Sequence) else ():
        if not isinstance(c, Mapping):
            continue
        extra = [] if c.get("available", True) else ["disabled"]
        extra.append("plugged" if c.get("plugged") else "unplugged")
        lines.append(f"connector {c.get('connector_id')}  {c.get('state')}  {' '.join(extra)}")
        session = c.get("session")
        if c.get("session_id"):
            payment = session.get("payment_state") if isinstance(session, Mapping) else None
            elapsed = session.get("elapsed_s") if isinstance(session, Mapping) else None
            parts = [
                f"  session {c.get('session_id')}",
                str(c.get("method") or "-"),
                f"payment {payment or '-'}",
                f"{c.get('energy_wh', 0)} Wh",
                cost(c.get("cost_minor")),
                f"elapsed {duration(elapsed)}",
            ]
            if c.get("authorized_minor") is not None:
                parts.append(f"authorized {cost(c.get('authorized_minor'))}")
            if c.get("power_w") is not None:
                parts.append(f"{c.get('power_w')} W")
            lines.append("  ".join(parts))
    pending = doc.get("pending_settlements")
    pending = pending if isinstance(pending, Sequence) else []
    lines.append(f"pending settlements  {len(pending) or 'none'}")
    for p in pending:
        if isinstance(p, Mapping):
            amount = f" {cost(p.get('amount_minor'))}" if p.get("disposal") == "commit" else ""
            sent = "sent" if p.get("sent") else "not sent"
            lines.append(
                f"  {p.get('session_id')}  connector {p.get('connector_id')}  {p.get('disposal')}{amount}  "
                f"{sent}, attempts {p.get('attempts')}, decided {p.get('decided_at')}"
            )
    alarms = doc.get("alarms")
    alarms = alarms if isinstance(alarms, Sequence) else []
    lines.append(f"alarms  {len(alarms) or 'none'}")
    for a in alarms:
        if isinstance(a, Mapping):
            where = "".join(
                f" {key} {a[field]}"
                for key, field in (("connector", "connector_id"), ("session", "session_id"))
                if a.get(field) is not None
            )
            lines.append(
                f"  [{a.get('severity')}] {a.get('alarm')}{where}: {a.get('message')} ({a.get('ts')})"
            )
    if doc.get("journal_error"):
        lines.append(f"journal: {doc['journal_error']}")
    return "\n".join(lines) + "\n"


def _state_dir(args: argparse.Namespace) -> Path:
    from agent.cli import CliError

    if args.state_dir is not None:
        return Path(args.state_dir)
    try:
        loaded = load_config(args.config)
    except ConfigError as exc:
        raise CliError(str(exc), EXIT_CONFIG) from None
    return Path(loaded.config.state_dir)


def _status(args: argparse.Namespace) -> int:
    from agent.cli import CliError

    path = socket_path(_state_dir(args))
    try:
        doc = request(path, STATUS_REQUEST, timeout_s=args.timeout)
    except DaemonNotRunning as exc:  # a state, not an error: "evpay-agent: the daemon is not running (…)"
        print(f"evpay-agent: {exc}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    except ControlPermissionDenied as exc:
        raise CliError(str(exc), EXIT_PERMISSION) from None
    except ControlError as exc:
        raise CliError(str(exc), EXIT_NO_ANSWER) from None
    if "error" in doc:
        raise CliError(f"the daemon answered: {doc['error']}", EXIT_NO_ANSWER)
    if args.json:
        sys.stdout.write(msgspec.json.encode(doc).decode() + "\n")
    else:
        sys.stdout.write(render(doc))
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "status",
        help="show the running agent's live state (connectors, sessions, terminal, settlements, alarms)",
        description=(
            "Show the running agent's live state, read over its control socket "
            "{state_dir}/control.sock. Exit 0; 1 no proper answer; 2 bad config; "
            f"{EXIT_NOT_RUNNING} the agent is not running; {EXIT_PERMISSION} permission denied."
        ),
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG_PATH, help="config file")
    where.add_argument("--state-dir", type=Path, help="the agent's state directory (instead of --config)")
    parser.add_argument("--json", action="store_true", help="print the status object (one JSON line)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=CLIENT_TIMEOUT_S,
        help=f"seconds to wait for the answer (default {CLIENT_TIMEOUT_S:g})",
    )
    parser.set_defaults(func=_status)
