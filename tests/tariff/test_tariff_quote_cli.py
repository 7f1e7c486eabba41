"""``evpay-agent tariff quote|describe`` runs the real CLI and agrees with the library (issue 3)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import msgspec
import pytest

import agent.cli
from agent.money.tariff import Tariff, tariff_config_from_builtins
from statemachines.pricing import Usage, UsageKind

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "tariff.yaml"


@pytest.fixture(autouse=True)
def _only_the_tariff_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sibling sub-command modules are written in parallel; this tests the tariff command alone."""
    monkeypatch.setattr(agent.cli, "COMMAND_MODULES", ("agent.cli.tariff",))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = agent.cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def example_tariff() -> Tariff:
    import yaml

    return Tariff(tariff_config_from_builtins(yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))["tariff"]))


@pytest.mark.req("STOP-8", "STOP-9")
def test_quote_agrees_with_the_library(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys,
        "tariff",
        "quote",
        "--config",
        str(EXAMPLE),
        "--energy-wh",
        "22000",
        "--charging-s",
        "7200",
        "--idle-s",
        "1800",
        "--start",
        "2025-03-03T16:00:00",
    )
    assert (code, err) == (0, "")
    t = example_tariff()
    start = datetime(2025, 3, 3, 16, 0, tzinfo=ZoneInfo("Europe/Amsterdam"))  # no offset: tariff timezone
    usage = t.accumulate(Usage(), start, start + timedelta(seconds=7200), 22_000, UsageKind.CHARGING)
    end = start + timedelta(seconds=7200)
    usage = t.accumulate(usage, end, end + timedelta(seconds=1800), 0, UsageKind.IDLE)
    expected = json.loads(msgspec.json.encode(t.quote(usage)))
    assert json.loads(out) == expected
    # the worked example (docs/tariff.md): 16:00-17:00 base, 17:00-18:00 peak, 30 min idle
    assert [(ln["kind"], ln["band"], ln["gross_minor"]) for ln in expected["lines"]] == [
        ("energy", "", 429),  # 11 kWh * 0.39
        ("energy", "peak", 539),  # 11 kWh * 0.49
        ("time", "", 300),  # 60 min * 0.05
        ("time", "peak", 300),
        ("session_fee", "", 50),
        ("idle_fee", "", 300),  # (30 - 15 grace) min * 0.20
    ]
    assert expected["gross_minor"] == 1918
    assert list(json.loads(out)) == [  # deterministic key order
        "currency",
        "minor_unit_digits",
        "prices_include_vat",
        "vat_rate_percent",
        "lines",
        "net_minor",
        "vat_minor",
        "gross_minor",
    ]


def test_quote_with_offset_start_and_bare_tariff_document(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "bare.yaml"
    config.write_text(
        'currency: EUR\nprices_include_vat: false\nvat_rate_percent: "21"\nenergy_per_kwh: "0.30"\n'
        'time_per_minute: "0.02"\ntime_applies_to: charging_and_suspended\n',
        encoding="utf-8",
    )
    code, out, _ = run(
        capsys,
        "tariff",
        "quote",
        "--config",
        str(config),
        "--energy-wh",
        "10000",
        "--charging-s",
        "3600",
        "--suspended-s",
        "600",
        "--start",
        "2025-06-01T10:00:00Z",
    )
    assert code == 0
    quote = json.loads(out)
    # energy net 300 + vat 63; time 70 min * 2 = 140 net + vat 29.4 -> 29
    assert [(ln["kind"], ln["net_minor"], ln["vat_minor"], ln["gross_minor"]) for ln in quote["lines"]] == [
        ("energy", 300, 63, 363),
        ("time", 140, 29, 169),
    ]
    assert (quote["net_minor"], quote["vat_minor"], quote["gross_minor"]) == (440, 92, 532)


def test_quote_defaults_start_to_now(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "tariff", "quote", "--config", str(EXAMPLE), "--energy-wh", "0", "--charging-s", "0"
    )
    assert code == 0
    assert json.loads(out)["gross_minor"] == 100  # session fee 50, raised to the 1.00 minimum


@pytest.mark.req("START-8")
def test_describe(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "tariff", "describe", "--config", str(EXAMPLE))
    assert code == 0
    assert out.strip() == example_tariff().describe()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "tariff:\n  currency: EUR\n  prices_include_vat: true\n  energy_per_kwh: abc\n"
            '  vat_rate_percent: "21"\n',
            "bad.yaml:4: tariff.energy_per_kwh: expected a decimal string, got 'abc'",
        ),
        (
            'tariff:\n  currency: EUR\n  prices_include_vat: true\n  vat_rate_percent: "21"\n'
            '  energy_per_kwh: "0.39"\n  energy_per_kwh: "0.40"\n',
            "bad.yaml:6: tariff.energy_per_kwh: duplicate key (first at line 5)",
        ),
        (
            'currency: EUR\nprices_include_vat: true\nvat_rate_percent: "21"\ntimezone: UTC\nbands:\n'
            '  - name: a\n    start: "17:00"\n    end: "25:00"\n    energy_per_kwh: "1"\n',
            "bad.yaml:8: bands[0].end: expected a time HH:MM (00:00..24:00), got '25:00'",
        ),
        (
            "tariff:\n  currency: EUR\n  prices_include_vat: true\n  vat_rate_percent: 21\n",
            "bad.yaml:4: tariff.vat_rate_percent: expected a decimal string, got 21 (write it quoted",
        ),
        (
            "tariff:\n  currency: EUR\n  prices_include_vat: true\n",
            "bad.yaml:1: tariff: missing required field 'vat_rate_percent'",
        ),
        ("tariff: [\n", "bad.yaml:2: invalid YAML"),
        ("- 1\n", "bad.yaml:1: (document): expected object, got array"),
    ],
)
def test_bad_config_exits_2_naming_file_line_and_path(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, message: str
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text, encoding="utf-8")
    code, out, err = run(
        capsys,
        "tariff",
        "quote",
        "--config",
        str(config),
        "--energy-wh",
        "1",
        "--charging-s",
        "1",
        "--start",
        "2025-03-03T10:00:00Z",
    )
    assert (code, out) == (2, "")
    assert f"evpay-agent: error: {tmp_path}/{message}" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--energy-wh", "-1", "--charging-s", "1"], "expected a number >= 0"),
        (["--energy-wh", "x", "--charging-s", "1"], "expected a whole number"),
        (["--energy-wh", "1", "--charging-s", "1", "--start", "tomorrow"], "--start: expected an ISO 8601"),
    ],
)
def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    try:
        code = agent.cli.main(["tariff", "quote", "--config", str(EXAMPLE), *argv])
    except SystemExit as exc:  # argparse rejects the value itself
        code = int(exc.code or 0)
    assert code == 2
    assert message in capsys.readouterr().err


def test_missing_file_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "tariff", "describe", "--config", str(tmp_path / "nope.yaml"))
    assert code == 2
    assert "nope.yaml: cannot read" in err


def test_installed_entry_point(tmp_path: Path) -> None:
    """The real ``evpay-agent`` process; every sub-command module of agent.cli exists."""
    missing = [name for name in agent.cli.COMMAND_MODULES if importlib.util.find_spec(name) is None]
    assert not missing
    script = Path(sys.executable).with_name("evpay-agent")
    result = subprocess.run(
        [
            str(script),
            "tariff",
            "quote",
            "--config",
            str(EXAMPLE),
            "--energy-wh",
            "22000",
            "--charging-s",
            "7200",
            "--idle-s",
            "1800",
            "--start",
            "2025-03-03T16:00:00+01:00",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["gross_minor"] == 1918


# ---------------------------------------------------------------------------------- OCPI 2.2.1 forms

OCPI = Path(__file__).parent / "ocpi"


@pytest.mark.req("START-8")
def test_describe_ocpi_tariff_from_the_agent_config(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """``--config`` takes every tariff form, including ``tariff.ocpi_file`` read relative to the
    config file (as the agent's config loader reads it)."""
    (tmp_path / "tariffs").mkdir()
    (tmp_path / "tariffs" / "t2.json").write_text(
        (OCPI / "tariff_2_alt_text.json").read_text(encoding="utf-8")
    )
    config = tmp_path / "agent.yaml"
    config.write_text(
        "station_id: s1\ntariff:\n  ocpi_file: tariffs/t2.json\n  timezone: Europe/Berlin\n", encoding="utf-8"
    )
    code, out, err = run(capsys, "tariff", "describe", "--config", str(config), "--language", "nl")
    assert (code, out, err) == (0, "2.00 euro p/uur inclusief BTW.\n", "")


def test_config_with_a_bare_ocpi_tariff_in_yaml(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import yaml

    config = tmp_path / "t9.yaml"
    data = json.loads((OCPI / "tariff_9_025kwh_start.json").read_text(encoding="utf-8"))
    config.write_text(yaml.safe_dump({"tariff": data}), encoding="utf-8")
    code, out, _ = run(capsys, "tariff", "describe", "--config", str(config))
    assert (code, out) == (0, "0.60 EUR per session + 0.275 EUR/kWh · incl. VAT\n")


@pytest.mark.req("STOP-8")
def test_quote_an_ocpi_tariff(capsys: pytest.CaptureFixture[str]) -> None:
    """OCPI tariff 4 (complex), Monday 09:30 UTC: 165 min charging (no current reported, so the
    "below 32 A" element applies: a maximum holds on an unreported value) and 42 min idle."""
    code, out, err = run(
        capsys,
        "tariff",
        "quote",
        "--ocpi-tariff",
        str(OCPI / "tariff_4_complex.json"),
        "--timezone",
        "UTC",
        "--energy-wh",
        "20000",
        "--charging-s",
        str(165 * 60),
        "--idle-s",
        str(42 * 60),
        "--start",
        "2025-03-03T09:30:00Z",
    )
    assert (code, err) == (0, "")
    quote = json.loads(out)
    assert (quote["net_minor"], quote["gross_minor"]) == (900, 1030)  # the spec's 9.00 / 10.30
    assert [(ln["kind"], ln["band"], ln["gross_minor"]) for ln in quote["lines"]] == [
        ("time", "elements[1]", 330),
        ("session_fee", "elements[0]", 288),  # 2.875, allocated so the lines add up to 10.30
        ("idle_fee", "elements[4]", 412),
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--config", str(EXAMPLE), "--ocpi-tariff", str(OCPI / "tariff_8_simple_025kwh.json")],
            "not allowed with argument",
        ),
        ([], "one of the arguments --config --ocpi-tariff is required"),
        (
            ["--config", str(EXAMPLE), "--timezone", "UTC"],
            "--timezone UTC: the tariff in " + str(EXAMPLE) + " says timezone 'Europe/Amsterdam'",
        ),
    ],
)
def test_tariff_source_arguments(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    try:
        code = agent.cli.main(["tariff", "describe", *argv])
    except SystemExit as exc:  # argparse rejects the combination itself
        code = int(exc.code or 0)
    assert code == 2
    assert message in capsys.readouterr().err


def test_error_in_an_ocpi_file_names_that_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text(
        "country_code: DE\nparty_id: ALL\nid: '1'\ncurrency: EUR\nlast_updated: '2025-01-01T00:00:00Z'\n"
        "elements:\n  - price_components:\n      - {type: TIME, price: 1, vat: 100, step_size: 60}\n",
        encoding="utf-8",
    )
    config = tmp_path / "agent.yaml"
    config.write_text("tariff:\n  ocpi_file: t.yaml\n", encoding="utf-8")
    code, _, err = run(capsys, "tariff", "describe", "--config", str(config))
    assert code == 2
    assert err == (
        f"evpay-agent: error: {tmp_path}/t.yaml:8: elements[0].price_components[0].vat: "
        "expected a number below 100, got 100\n"
    )
