"""The README's first command runs ``python -m hil.demo``: it must show a complete paid session."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest


@pytest.mark.parametrize("family", ["apollo", "p6x"])
def test_demo_completes_a_paid_session(family: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "hil.demo", "--driver-only", "--family", family],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for name in (
        "Synchronize",
        "Setup",
        "Enable",
        "StartSession",
        "CardRead",
        "SessionApproved",
        "CommitSession",
    ):
        assert name in out
    assert "paid session complete" in out
    assert '"committed_minor": 1234' in out


@dataclass(frozen=True)
class DemoRun:
    """One ``python -m hil.demo --workdir DIR`` run and what it left in ``DIR``."""

    proc: subprocess.CompletedProcess[str]
    workdir: Path

    @property
    def journal_path(self) -> Path:
        return self.workdir / "state" / "journal.sqlite3"

    @property
    def agent_log(self) -> str:
        return (self.workdir / "agent.log").read_text(encoding="utf-8")

    def journal_dump(self) -> str:
        conn = sqlite3.connect(self.journal_path)
        try:
            return "\n".join(conn.iterdump())
        finally:
            conn.close()

    def journal_rows(self, sql: str) -> list[sqlite3.Row]:
        conn = sqlite3.connect(self.journal_path)
        conn.row_factory = sqlite3.Row
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()

    def upstream(self) -> list[dict[str, Any]]:
        lines = (self.workdir / "upstream.jsonl").read_text(encoding="utf-8").splitlines()
        return [m for m in map(json.loads, lines) if "payload" in m]

    def events(self, name: str) -> list[dict[str, Any]]:
        return [m["payload"] for m in self.upstream() if m["payload"].get("event") == name]

    def receipt(self) -> dict[str, Any]:
        (receipt,) = [m["payload"] for m in self.upstream() if m["topic"].endswith("/receipts")]
        return dict(receipt)

    def cli(self, *args: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "agent", *args, "-c", str(self.workdir / "agent.yaml")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def terminal_session_id(self) -> int:
        """The session id of the terminal's sessions table, as the demo printed it."""
        (sid,) = re.findall(r"^  session (\S+): committed", self.proc.stdout, flags=re.MULTILINE)
        assert sid.isdigit(), sid
        return int(sid)


@pytest.fixture(scope="module")
def agent_demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """The README's first command, run once for this module, keeping its journal, log and capture."""
    workdir = tmp_path_factory.mktemp("demo")
    proc = subprocess.run(
        [sys.executable, "-m", "hil.demo", "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return DemoRun(proc, workdir)


@pytest.mark.req("START-2", "STOP-3", "STOP-8")
def test_agent_demo_charges_and_commits_the_tariff_price(agent_demo: DemoRun) -> None:
    """The README's first command: Mosquitto, both simulators and the real daemon, one paid session."""
    proc = agent_demo.proc
    out = proc.stdout
    for state in ("new=awaiting_card", "new=authorizing", "new=charging", "new=settling", "new=available"):
        assert state in out
    assert "paid session complete: one commit of" in out
    assert "agent stopped with SIGTERM, exit code 0" in out
    assert "transitions.core" not in out  # library internals stay out of the agent's log


# --- issue 11: demo and journal consistency ------------------------------------------------------


def test_demo_shows_one_terminal_session_id_everywhere(agent_demo: DemoRun) -> None:
    """The terminal's 4-byte Session ID (psp-reference §5.14) is written as its decimal value in the
    demo's output, the agent's log, the journal, the upstream events and receipt, ``sessions --json``
    and the reconciliation report — never as hex (issue 11: ``C8F09ED8`` and ``3371212504``)."""
    sid = agent_demo.terminal_session_id()
    text = str(sid)
    (row,) = agent_demo.journal_rows("SELECT terminal_session_id FROM payments")
    assert row["terminal_session_id"] == text
    assert {
        e["data"] and json.loads(e["data"]).get("session_id")
        for e in agent_demo.journal_rows(
            "SELECT data FROM events WHERE json_extract(data, '$.session_id') IS NOT NULL "
            "AND kind != 'charger_settlement'"
        )
    } == {text}
    # the settlement given to the charger (docs/ocpp21.md) names the agent's session as
    # ``session_id``, like the upstream events, and the terminal's as ``psp_ref``
    (settlement,) = agent_demo.journal_rows("SELECT data FROM events WHERE kind = 'charger_settlement'")
    assert json.loads(settlement["data"])["psp_ref"] == text
    for name in ("payment.authorized", "payment.captured"):
        (event,) = agent_demo.events(name)
        assert event["terminal_session_id"] == text, name
    assert agent_demo.receipt()["terminal_session_id"] == text
    (payment,) = json.loads(agent_demo.cli("sessions", "--json"))
    assert payment["terminal_session_id"] == sid
    logged = set(re.findall(r"session_id=(\S+)", agent_demo.agent_log))
    assert logged == {text}, logged
    started = datetime.fromisoformat(str(payment["started_at"]))
    since = (started - timedelta(hours=1)).isoformat()
    until = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    report = json.loads(agent_demo.cli("reconcile", "--since", since, "--until", until, "--json"))
    assert [p["terminal_session_id"] for p in report["payments"]] == [text]
    hexes = {f"{sid:08X}", f"{sid:08x}", f"{sid:X}", f"0x{sid:08X}"}
    for where, content in (
        ("demo output", agent_demo.proc.stdout),
        ("agent log", agent_demo.agent_log),
        ("journal", agent_demo.journal_dump()),
        ("upstream", (agent_demo.workdir / "upstream.jsonl").read_text(encoding="utf-8")),
    ):
        found = [h for h in hexes if re.search(rf"(?<![0-9A-Za-z]){h}(?![0-9A-Za-z])", content)]
        assert not found, f"{where} shows terminal session {sid} as {found}"


def test_demo_journals_the_card_brand(agent_demo: DemoRun) -> None:
    """The demo taps a VISA card: the journal says VISA (the payment row, ``sessions --json``, the
    approval's event) and never ``brand: null``; card data is the masked PAN only."""
    assert "taps a VISA card" in agent_demo.proc.stdout
    (row,) = agent_demo.journal_rows("SELECT brand, masked_pan FROM payments")
    assert (row["brand"], row["masked_pan"]) == ("VISA", "476173******0010")
    (payment,) = json.loads(agent_demo.cli("sessions", "--json"))
    assert payment["brand"] == "VISA"
    assert agent_demo.receipt()["brand"] == "VISA"
    data = [json.loads(r["data"]) for r in agent_demo.journal_rows("SELECT data FROM events")]
    # the approval's event and the settlement given to the charger (docs/ocpp21.md)
    assert [d["card_brand"] for d in data if "card_brand" in d] == ["VISA", "VISA"]
    assert all(d.get("brand", "VISA") == "VISA" for d in data)
    dump = agent_demo.journal_dump()
    assert '"brand": null' not in dump
    assert '"card": null' not in dump
    assert "4761730000000010" not in dump  # the simulator's card never leaves it unmasked


_OFFSET = re.compile(r"\d{2}:\d{2}(?:\.\d+)?[+-]\d{2}:\d{2}")  # an ISO 8601 time with a numeric offset
_STAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(\S)")


def test_demo_writes_one_timestamp_format(agent_demo: DemoRun) -> None:
    """RFC 3339 UTC with ``Z`` in every journal row (every table and JSON column), every upstream
    payload, the CLI's JSON and the agent's log: no ``+00:00`` (issue 11)."""
    (payment,) = json.loads(agent_demo.cli("sessions", "--json"))
    for where, content in (
        ("journal", agent_demo.journal_dump()),
        ("upstream", json.dumps([m["payload"] for m in agent_demo.upstream()])),
        ("sessions --json", json.dumps(payment)),
        ("demo output", agent_demo.proc.stdout),
        ("agent log", agent_demo.agent_log),
    ):
        assert "+00:00" not in content, where
        assert not _OFFSET.search(content), (where, _OFFSET.search(content))
        suffixes = {m.group(1) for m in _STAMP.finditer(content)}
        assert suffixes <= {"Z"}, (where, suffixes)
    assert str(payment["started_at"]).endswith("Z")
    assert len(agent_demo.journal_rows("SELECT at FROM events")) > 5


def test_demo_first_start_restores_nothing(agent_demo: DemoRun) -> None:
    """A new, empty journal: the restart recovery says there was nothing to restore (issue 11:
    ``restore done restored=1`` on a first start)."""
    log = agent_demo.agent_log
    assert "recovery: no open payment to restore" in log
    assert "restored=" not in log
    assert "restore done" not in log
