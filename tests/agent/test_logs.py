"""The journald log format (agent/logs.py, OPS-2): priorities, masking, quiet libraries."""

from __future__ import annotations

import subprocess
import sys

import pytest

_SCRIPT = """
import logging, sys
from agent import logs
logs.configure(sys.argv[1])
logging.getLogger("transitions.core").warning("Can't trigger event unplug from state available!")
logging.getLogger("transitions.core").error("a real library error")
logging.getLogger("agent.runtime.shell").warning("screen not shown %s", logs.kv(kind="home"))
logging.getLogger("agent.runtime.shell").info("card 4111111111111111 read")
"""


def _stderr(level: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, level], capture_output=True, text=True, check=True, timeout=30
    )
    return done.stderr.splitlines()


@pytest.mark.req("OPS-2")
def test_req_ops_2_an_ignored_trigger_is_never_a_warning() -> None:
    """The rulebook ignores triggers on purpose (ignore_invalid_triggers); the transitions library
    logs each as a WARNING, which made an ordinary session look faulty. Debug shows it as debug;
    other levels hide it; the library's errors and the agent's own warnings are kept."""
    debug = _stderr("debug")
    assert "<7>transitions.core: Can't trigger event unplug from state available!" in debug
    assert "<3>transitions.core: a real library error" in debug
    assert "<4>agent.runtime.shell: screen not shown kind=home" in debug
    info = _stderr("info")
    assert not any("Can't trigger" in line for line in info)
    assert "<3>transitions.core: a real library error" in info
    assert "<4>agent.runtime.shell: screen not shown kind=home" in info
    assert "<6>agent.runtime.shell: card ************1111 read" in info  # the last line of defence
