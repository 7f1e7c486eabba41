"""``check-config`` reports every error in one run (issue 11, acceptance 3), sorted by line, each
``FILE:LINE: PATH: REASON``; warnings follow and do not fail; ``--example`` for the shipped example.

The invariant over random worlds: injecting any subset of independent faults into a valid file gives
exactly that subset of errors — no fault hides another, none is reported twice, none is invented.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config.placeholders import edit_lines
from agent.config.schema import ConfigErrors, load_config
from agent.config.yamlload import load_yaml
from agent.errors import ConfigError
from tests.config.test_config import BASE, EXAMPLE, SECRET_TEXT, edit, write_config

pytestmark = pytest.mark.req("CFG-1")


@dataclass(frozen=True)
class Fault:
    """One independent fault of BASE: the edit, and the error it must give (line, path, reason start)."""

    name: str
    old: str
    new: str
    line: int
    path: str
    reason: str


MISSING_SECRET = "/nonexistent/evpay-agent/upstream.password"

FAULTS: tuple[Fault, ...] = (
    Fault(
        "bad-pattern", "station_id: CS-1", 'station_id: "CS 1"', 1, "station_id", "Expected `str` matching"
    ),
    Fault(
        "wrong-type",
        "keepalive_s: 10",
        'keepalive_s: "10"',
        5,
        "terminal.keepalive_s",
        "Expected `int`, got `str`",
    ),
    Fault(
        "bad-literal",
        "read_card_header: 0x41",
        "read_card_header: 0x42",
        7,
        "terminal.quirks.read_card_header",
        "Invalid enum value 66",
    ),
    Fault(
        "bad-broker",
        "broker_url: mqtt://127.0.0.1:1883",
        "broker_url: http://127.0.0.1",
        9,
        "charger.broker_url",
        "unsupported scheme 'http'",
    ),
    Fault(
        "out-of-range",
        "max_current_a: 16",
        "max_current_a: 2",
        14,
        "connectors[1].max_current_a",
        "Expected `int` >= 6",
    ),
    Fault(
        "unknown-key",
        "stop_modes: [tap, unplug]",
        "stop_mode: [tap, unplug]",
        17,
        "session.stop_mode",
        "unknown key",
    ),
    Fault(
        "float-money",
        "amount_minor: 5000",
        "amount_minor: 50.5",
        20,
        "authorization.amount_minor",
        "Expected `int`, got `float`",
    ),
    Fault(
        "bad-tariff",
        'vat_rate_percent: "21"',
        'vat_rate_percent: "21%"',
        24,
        "tariff.vat_rate_percent",
        "expected a decimal string",
    ),
    Fault(
        "bad-port",
        "mqtts://backend.example.com:8883",
        "mqtts://backend.example.com:0",
        27,
        "upstream.broker_url",
        "port 0 is not a valid port",
    ),
    Fault(
        "missing-secret",
        "password_file: SECRET",
        f"password_file: {MISSING_SECRET}",
        29,
        "upstream.password_file",
        f"cannot read {MISSING_SECRET}: No such file",
    ),
)
LINE_RE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): (?P<path>[^:]+): (?P<reason>.+)$")


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "upstream.password"
    path.write_text(SECRET_TEXT + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


def _cli() -> list[str]:
    script = Path(sys.executable).parent / "evpay-agent"
    return [str(script)] if script.exists() else [sys.executable, "-m", "agent.cli"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*_cli(), *args], capture_output=True, text=True, check=False)


def with_faults(faults: tuple[Fault, ...]) -> str:
    return edit(BASE, *((f.old, f.new) for f in faults))


def errors_of(path: Path) -> tuple[ConfigError, ...]:
    with pytest.raises(ConfigErrors) as info:
        load_config(path)
    return info.value.errors


def assert_exactly(path: Path, errors: tuple[ConfigError, ...], faults: tuple[Fault, ...]) -> None:
    expected = sorted(faults, key=lambda f: f.line)
    assert [(e.line, e.path) for e in errors] == [(f.line, f.path) for f in expected], "\n".join(
        map(str, errors)
    )
    for error, fault in zip(errors, expected, strict=True):
        assert error.file == str(path)
        assert error.reason.startswith(fault.reason), (fault.name, str(error))
        assert str(error) == f"{path}:{fault.line}: {fault.path}: {error.reason}"


def test_faults_are_valid_edits(tmp_path: Path, secret_file: Path) -> None:
    """BASE is valid, every fault alone gives exactly its own error."""
    assert load_config(write_config(tmp_path, BASE, secret_file)).warnings == ()
    assert len({f.line for f in FAULTS}) == len(FAULTS)
    for fault in FAULTS:
        path = write_config(tmp_path, with_faults((fault,)), secret_file)
        assert_exactly(path, errors_of(path), (fault,))


def test_five_independent_errors_in_one_run(tmp_path: Path, secret_file: Path) -> None:
    """Acceptance 3: a wrong type, an unknown key, an out-of-range number, a missing secret file and
    a bad tariff field, in five sections: five lines, sorted by line, in one run."""
    names = ("wrong-type", "out-of-range", "unknown-key", "bad-tariff", "missing-secret")
    five = tuple(f for f in FAULTS if f.name in names)
    path = write_config(tmp_path, with_faults(five), secret_file)
    assert_exactly(path, errors_of(path), five)

    result = run_cli("check-config", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert [int(m["line"]) for m in map(LINE_RE.match, lines[:5]) if m] == [5, 14, 17, 24, 29]
    assert lines[:5] == [
        f"{path}:5: terminal.keepalive_s: Expected `int`, got `str`",
        f"{path}:14: connectors[1].max_current_a: Expected `int` >= 6",
        f"{path}:17: session.stop_mode: unknown key",
        f"{path}:24: tariff.vat_rate_percent: expected a decimal string, got '21%'",
        f"{path}:29: upstream.password_file: cannot read {MISSING_SECRET}: No such file or directory",
    ]
    assert lines[5].startswith("hint: 1 referenced secret or TLS file does not exist")
    assert "--example" in lines[5]
    assert lines[6:] == [f"evpay-agent: error: {path}: 5 errors"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chosen=st.sets(st.sampled_from(FAULTS), min_size=1))
def test_any_subset_of_faults_gives_exactly_that_subset(
    tmp_path: Path, secret_file: Path, chosen: set[Fault]
) -> None:
    faults = tuple(chosen)
    path = write_config(tmp_path, with_faults(faults), secret_file)
    assert_exactly(path, errors_of(path), faults)


def test_all_faults_at_once(tmp_path: Path, secret_file: Path) -> None:
    path = write_config(tmp_path, with_faults(FAULTS), secret_file)
    assert_exactly(path, errors_of(path), FAULTS)


def test_rules_across_sections_run_on_what_validated(tmp_path: Path, secret_file: Path) -> None:
    """A P6X with ui start mode is refused although the upstream section is broken too; and two
    rules broken in one section are both reported."""
    text = edit(
        BASE,
        ("family: apollo", "family: p6x"),
        ("mqtts://backend.example.com:8883", "mqtts://backend.example.com:0"),
        ("amount_minor: 5000", "amount_minor: 50000"),
        ("strategy: fixed", "strategy: incremental"),
    )
    path = write_config(tmp_path, text, secret_file)
    shown = [f"{e.line}: {e.path}: {e.reason}" for e in errors_of(path)]
    assert shown == [
        "16: session.start_modes[2]: ui needs an Apollo terminal (psp-reference §5.21)",
        "19: authorization.strategy: incremental needs Update Session, Apollo only (psp-reference §5.20)",
        "20: authorization.amount_minor: 50000 is above maximum_minor 15000",
        "27: upstream.broker_url: port 0 is not a valid port",
    ]


def test_warnings_follow_errors_and_do_not_fail(tmp_path: Path, secret_file: Path) -> None:
    warned = edit(BASE, ("mqtts://backend.example.com:8883", "mqtt://backend.example.com:1883"))
    path = write_config(tmp_path, warned, secret_file)
    warning = f"{path}:27: upstream.broker_url: warning: plain mqtt:// to the backend; use mqtts:// (UP-4)"
    result = run_cli("check-config", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stderr == warning + "\n"
    assert result.stdout.startswith(f"{path}: OK")

    bad = write_config(tmp_path, edit(warned, ("max_current_a: 16", "max_current_a: 2")), secret_file)
    result = run_cli("check-config", str(bad))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{bad}:14: connectors[1].max_current_a: Expected `int` >= 6",
        warning,
        f"evpay-agent: error: {bad}: 1 error, 1 warning",
    ]


def test_run_refuses_with_every_error(tmp_path: Path, secret_file: Path) -> None:
    two = tuple(f for f in FAULTS if f.name in ("wrong-type", "bad-tariff"))
    path = write_config(tmp_path, with_faults(two), secret_file)
    result = run_cli("run", "-c", str(path))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{path}:5: terminal.keepalive_s: Expected `int`, got `str`",
        f"{path}:24: tariff.vat_rate_percent: expected a decimal string, got '21%'",
        f"evpay-agent: error: {path}: 2 errors; not starting",
    ]


def test_yaml_errors_stay_single(tmp_path: Path, secret_file: Path) -> None:
    """A file that does not parse gives its one error: nothing after it can be checked."""
    path = write_config(tmp_path, edit(BASE, ("  keepalive_s: 10\n", "\tkeepalive_s: 10\n")), secret_file)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert not isinstance(info.value, ConfigErrors)
    assert str(info.value).startswith(f"{path}:5: invalid YAML:")


# ---------------------------------------------------------------------------------------------------
# the shipped example and --example
# ---------------------------------------------------------------------------------------------------


def marked_lines(text: str) -> list[int]:
    """Key lines carrying the marker (a comment line of its own does not count)."""
    return [
        n
        for n, line in enumerate(text.splitlines(), 1)
        if "# EDIT:" in line and not line.lstrip().startswith("#")
    ]


def test_example_fails_plain_check_with_a_hint() -> None:
    result = run_cli("check-config", str(EXAMPLE))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    errors = [line for line in lines if LINE_RE.match(line)]
    assert len(errors) == 5, result.stderr  # 2 password files, 3 TLS files; nothing else
    assert all("No such file or directory" in line for line in errors)
    hints = [line for line in lines if line.startswith("hint: ")]
    assert len(hints) == 1
    assert "--example" in hints[0]
    assert "placeholders" in hints[0]
    assert lines[-1] == f"evpay-agent: error: {EXAMPLE}: 5 errors"


def test_example_passes_check_config_example() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    result = run_cli("check-config", "--example", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    out = result.stdout.splitlines()
    marked = marked_lines(text)
    assert len(marked) >= 10
    listed = [LINE_RE.match(line) for line in out[: len(marked)]]
    assert [int(m["line"]) for m in listed if m] == marked
    for match in listed:
        assert match is not None
        assert match["reason"].startswith("edit this before starting: ")
        assert match["reason"] != "edit this before starting: "
    assert (
        out[len(marked)]
        == f"{EXAMPLE}: OK (station CS-0042, 2 connectors, terminal apollo at tcp://10.0.0.5:3201)"
    )
    assert out[len(marked) + 1 :] == [
        f"{EXAMPLE}: example: 5 placeholder files assumed present; "
        f"edit the {len(marked)} lines marked # EDIT: before starting"
    ]
    # the secret and TLS files (the placeholders) are all marked
    for number, line in enumerate(text.splitlines(), 1):
        if "/etc/evpay-agent/" in line and not line.lstrip().startswith("#") and "_file:" in line:
            assert number in marked, line


def test_edit_lines_name_their_key() -> None:
    doc = load_yaml(
        "a: 1  # EDIT: first. more\n# EDIT: a comment line\nb:\n  - c: 2  # EDIT: deep\n", "x.yaml"
    )
    text = "a: 1  # EDIT: first. more\n# EDIT: a comment line\nb:\n  - c: 2  # EDIT: deep\n"
    assert [str(e) for e in edit_lines(text, doc)] == [
        "x.yaml:1: a: edit this before starting: first",
        "x.yaml:4: b[0].c: edit this before starting: deep",
    ]


def test_example_mode_checks_everything_else(tmp_path: Path) -> None:
    """--example excuses only secret / TLS files that do not exist: a real error still fails, and
    so does a secret path that exists but cannot be read."""
    text = EXAMPLE.read_text(encoding="utf-8")
    bad = tmp_path / "agent.yaml"
    bad.write_text(edit(text, ("keepalive_s: 10 ", "keepalive_s: 99 ")), encoding="utf-8")
    result = run_cli("check-config", "--example", str(bad))
    assert result.returncode == 2
    assert result.stderr.splitlines()[0].endswith("terminal.keepalive_s: Expected `int` <= 15")
    assert result.stderr.splitlines()[-1] == f"evpay-agent: error: {bad}: 1 error"

    directory = tmp_path / "secret-dir"
    directory.mkdir()
    dir_secret = edit(text, ("/etc/evpay-agent/upstream.password", str(directory)))
    bad.write_text(dir_secret, encoding="utf-8")
    result = run_cli("check-config", "--example", str(bad))
    assert result.returncode == 2
    assert f"upstream.password_file: cannot read {directory}: Is a directory" in result.stderr
    assert "hint:" not in result.stderr

    loaded = load_config(EXAMPLE, placeholders=True)
    assert len(loaded.placeholders) == 5
    with pytest.raises(ConfigErrors):
        load_config(EXAMPLE)


def test_duplicate_keys_are_collected_with_the_rest(tmp_path: Path, secret_file: Path) -> None:
    """A duplicate key is an error like any other: the first value is kept, the rest is checked."""
    text = edit(
        BASE,
        ("  keepalive_s: 10\n", "  keepalive_s: 10\n  url: tcp://10.0.0.6:3201\n"),
        ("max_current_a: 16", "max_current_a: 2"),
    )
    path = write_config(tmp_path, text, secret_file)
    assert [str(e) for e in errors_of(path)] == [
        f"{path}:6: terminal.url: duplicate key (first at line 3)",
        f"{path}:15: connectors[1].max_current_a: Expected `int` >= 6",
    ]
    with pytest.raises(ConfigError, match="duplicate key"):  # without collect the loader raises
        load_yaml(text, "x.yaml")
