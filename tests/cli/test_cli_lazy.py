"""The CLI imports only the sub-command it runs (issue 12: start -> READY), and its table of
command names matches what the modules register."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

import agent.cli
from agent.cli import COMMAND_MODULES, COMMAND_NAMES, build_parser


def registered_commands(module: str) -> set[str]:
    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers()
    importlib.import_module(module).register(subparsers)
    return set(subparsers.choices)


def test_the_command_table_names_what_each_module_registers() -> None:
    assert sorted(set(COMMAND_NAMES.values())) == sorted(COMMAND_MODULES)
    for module in COMMAND_MODULES:
        names = {name for name, owner in COMMAND_NAMES.items() if owner == module}
        assert registered_commands(module) == names, module


def test_a_named_command_builds_its_parser_alone_and_the_help_lists_all() -> None:
    only_run = build_parser(["-v", "run", "--config", "x.yaml"])
    commands = next(a for a in only_run._actions if isinstance(a, argparse._SubParsersAction))
    assert set(commands.choices) == {"run"}
    everything = build_parser(["--help"])
    commands = next(a for a in everything._actions if isinstance(a, argparse._SubParsersAction))
    assert set(commands.choices) == set(COMMAND_NAMES)
    unknown = build_parser(["no-such-command"])
    commands = next(a for a in unknown._actions if isinstance(a, argparse._SubParsersAction))
    assert set(commands.choices) == set(COMMAND_NAMES)  # argparse's error lists every choice


def test_evpay_agent_status_does_not_import_the_other_commands() -> None:
    code = (
        "import sys, agent.cli\n"
        "agent.cli.build_parser(['status', '--help'][:1])\n"
        "print(sorted(m for m in sys.modules if m.startswith('agent.cli.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['agent.cli.status']"
    assert agent.cli.COMMAND_NAMES["status"] == "agent.cli.status"
