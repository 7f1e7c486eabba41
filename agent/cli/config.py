"""``evpay-agent check-config [--example] [FILE]``: validate the agent's config without starting
(CFG-1, DESIGN.md §5.7, issue 11).

Valid: prints the warnings (``FILE:LINE: PATH: warning: REASON``) to stderr and
``FILE: OK (station S, N connectors, terminal FAMILY at URL)`` to stdout; exit 0.

Invalid: prints **every** error found, one ``FILE:LINE: PATH: REASON`` line each, sorted by line,
then the warnings and ``hint:`` lines, to stderr, and ends with
``evpay-agent: error: FILE: N errors, M warnings``; exit 2. A file that cannot be read or is not
YAML gives one error (nothing after it can be checked).

``--example``: a secret or TLS file that does not exist counts as present (only that: everything
else is checked, an existing but unreadable file is still an error); on success the lines marked
``# EDIT:`` are listed on stdout as ``FILE:LINE: PATH: edit this before starting: WHY`` before
the OK line (:mod:`agent.config.placeholders`).

``evpay-agent run`` reports a bad config with :func:`report` too (all errors, exit 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from agent.config.placeholders import edit_lines
from agent.config.schema import DEFAULT_CONFIG_PATH, ConfigErrors, LoadedConfig, load_config
from agent.config.yamlload import read_yaml_file
from agent.errors import ConfigError

if TYPE_CHECKING:
    from agent.cli import CliError

EXIT_OK = 0
EXIT_INVALID = 2


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def report(exc: ConfigError, *, consequence: str = "", exit_code: int = EXIT_INVALID) -> CliError:
    """Print every error of ``exc``, then its warnings and hints, to stderr; return the
    :class:`~agent.cli.CliError` (its message counts them) for the caller to raise."""
    from agent.cli import CliError  # agent.cli imports this module

    errors: tuple[ConfigError, ...] = (exc,)
    warnings: tuple[str, ...] = ()
    hints: tuple[str, ...] = ()
    if isinstance(exc, ConfigErrors):
        errors, warnings, hints = exc.errors, exc.warnings, exc.hints
    for line in (*map(str, errors), *warnings, *(f"hint: {hint}" for hint in hints)):
        print(line, file=sys.stderr)
    counts = _count(len(errors), "error")
    if warnings:
        counts += f", {_count(len(warnings), 'warning')}"
    return CliError(f"{exc.file}: {counts}{consequence}", exit_code)


def check_config(path: Path, *, example: bool = False) -> LoadedConfig:
    """Load ``path`` as ``check-config`` does; on errors prints them (:func:`report`) and raises
    ``CliError`` (exit 2). ``example``: placeholder secret / TLS files count as present."""
    try:
        return load_config(path, placeholders=example)
    except ConfigError as exc:
        raise report(exc) from None


def summary(loaded: LoadedConfig) -> str:
    config = loaded.config
    count = len(config.connectors)
    return (
        f"{loaded.file}: OK (station {config.station_id}, {count} connector{'s' if count != 1 else ''}, "
        f"terminal {config.terminal.family} at {config.terminal.url})"
    )


def _check(args: argparse.Namespace) -> int:
    loaded = check_config(args.file, example=args.example)
    for warning in loaded.warnings:
        print(warning, file=sys.stderr)
    if args.example:
        text = args.file.read_text(encoding="utf-8-sig")
        edits = edit_lines(text, read_yaml_file(args.file))
        for edit in edits:
            print(edit)
        print(summary(loaded))
        print(
            f"{loaded.file}: example: {_count(len(loaded.placeholders), 'placeholder file')} assumed "
            f"present; edit the {_count(len(edits), 'line')} marked # EDIT: before starting"
        )
        return EXIT_OK
    print(summary(loaded))
    return EXIT_OK


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "check-config",
        help="validate the config file without starting",
        description=(
            "Validate the agent's YAML config: types, ranges, unknown keys, cross-field rules, the "
            "tariff and that every referenced secret and TLS file is readable. Every error is "
            "reported, one FILE:LINE: PATH: REASON line each, sorted by line; warnings follow "
            "and do not fail the check. Exit 0 when valid, 2 when not. Secret contents are never "
            "printed."
        ),
    )
    parser.add_argument(
        "--example",
        action="store_true",
        help="check a copy of the shipped example: secret and TLS files that do not exist count "
        "as present (placeholders); list the lines marked '# EDIT:' that must be edited",
    )
    parser.add_argument(
        "file",
        nargs="?",
        type=Path,
        default=DEFAULT_CONFIG_PATH,
        metavar="FILE",
        help=f"the config file (default {DEFAULT_CONFIG_PATH})",
    )
    parser.set_defaults(func=_check)
