"""Issue 11: one text form of a terminal session id everywhere — the decimal value of the 4-byte
Session ID the terminal reports (psp-reference §5.14), as the journal, upstream events, receipts,
logs, ``sessions --json`` and reconciliation write it; never hex (the demo showed ``C8F09ED8`` and
``3371212504`` for the same session)."""

from __future__ import annotations

import re
from pathlib import Path

from drivers.psp.errors import SessionNotFound
from drivers.psp.messages import CommitSession, Result
from hil.psp_sim.sessions import SimSession

SID = 0xC8F09ED8
REPO = Path(__file__).resolve().parents[2]
# a session id formatted as hex: "session %08X", f"{session_id:08X}", "0x{self.session_id:08X}" …
_HEX_SESSION = re.compile(
    r"session[^\n]{0,40}(%0?8?[xX]\b|:0?8?[xX]\}|hex\(\s*[a-z_.]*session)", re.IGNORECASE
)


def test_session_not_found_names_the_session_in_decimal() -> None:
    error = SessionNotFound(
        CommitSession(session_id=SID, amount_minor=55), Result(ok=False, reason=0x0C), SID
    )
    assert "session 3371212504 not found" in str(error)
    assert "C8F09ED8" not in str(error).upper()


def test_the_simulators_sessions_table_has_one_session_id() -> None:
    row = SimSession(
        session_id=SID, authorized_minor=2500, requested_minor=2500, reference=1, card={}
    ).to_json()
    assert row["session_id"] == SID
    assert not [key for key in row if "hex" in key]


def test_no_source_formats_a_session_id_as_hex() -> None:
    found = [
        f"{path.relative_to(REPO)}:{n}: {line.strip()}"
        for top in ("agent", "drivers", "hil", "statemachines")
        for path in sorted((REPO / top).rglob("*.py"))
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if _HEX_SESSION.search(line)
    ]
    assert not found, "\n".join(found)
