"""The rig's process handle (``hil/rig/procs.py``) with real child processes: a simulator's address
is read from its latest start only — not from an earlier start (a restart listens elsewhere) nor
from a log an earlier run left in a reused directory (``python -m hil.fuzz --out DIR`` twice: the
second run connected to the first run's ports and every seed failed as a rig problem)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hil.rig.procs import Proc, first_json_line


def _announce(port: int) -> list[str]:
    line = json.dumps({"control": f"127.0.0.1:{port}"})
    return [sys.executable, "-c", f"print('starting'); print({line!r}, flush=True)"]


async def test_the_address_comes_from_the_latest_start(tmp_path: Path) -> None:
    log = tmp_path / "sim.log"
    log.write_text('{"control": "127.0.0.1:1"}\nan earlier run\n', encoding="utf-8")
    proc = Proc("sim", log)
    await proc.spawn(_announce(1001))
    assert await first_json_line(proc, within=10.0) == {"control": "127.0.0.1:1001"}
    assert await proc.wait(10.0) == 0
    await proc.spawn(_announce(1002))  # a restart
    assert await first_json_line(proc, within=10.0) == {"control": "127.0.0.1:1002"}
    assert await proc.wait(10.0) == 0
    text = log.read_text(encoding="utf-8")
    assert "an earlier run" in text  # the log itself keeps everything
    assert "1001" in text
    assert "1001" not in proc.log_since_start()
