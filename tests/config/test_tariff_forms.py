"""``tariff:`` in every form (issue 10, docs/tariff.md, docs/configuration.md): the simple form, the
OCPI wrapper inline and the OCPI wrapper with ``ocpi_file`` (JSON or YAML, relative to the config
file's directory), which the config loader reads; errors name the file, the line and the path, in the
config file or in the OCPI file.

The OCPI cases need the OCPI forms of ``agent.money.tariff.tariff_from_builtins`` (the tariff rewrite).
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.config.schema import load_config
from agent.errors import ConfigError
from agent.money.tariff import tariff_from_builtins, tariff_to_builtins
from statemachines.pricing import Usage, UsageKind
from tests.config.test_config import BASE, SECRET_TEXT, edit, write_config

pytestmark = pytest.mark.req("CFG-1")

OCPI = {  # OCPI 2.2.1 §Tariffs 4.3.1: 0.30 EUR/kWh excl. 21 % VAT
    "country_code": "NL",
    "party_id": "EVP",
    "id": "t1",
    "currency": "EUR",
    "last_updated": "2026-01-01T00:00:00Z",
    "elements": [{"price_components": [{"type": "ENERGY", "price": "0.30", "vat": 21, "step_size": 1}]}],
}
SIMPLE_TARIFF = """\
tariff:
  currency: EUR
  prices_include_vat: true
  vat_rate_percent: "21"
  energy_per_kwh: "0.39"
"""
TARIFF_LINE = 21  # the line of "tariff:" in BASE


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "upstream.password"
    path.write_text(SECRET_TEXT + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


def with_tariff(block: str) -> str:
    """BASE with its ``tariff:`` block replaced (``block`` starts with ``tariff:``)."""
    return edit(BASE, (SIMPLE_TARIFF, block))


def ocpi_file_block(name: str, *extra: str) -> str:
    return "tariff:\n" + "".join(f"  {line}\n" for line in (f"ocpi_file: {name}", *extra))


def price_of_kwh(config_tariff: dict[str, Any]) -> int:
    """The gross price of 1 kWh charged at once (no time components)."""
    tariff = tariff_from_builtins(config_tariff)
    at = datetime(2026, 1, 1, 12, tzinfo=tariff.timezone)
    return tariff.cost_minor(tariff.accumulate(Usage(), at, at, 1000, UsageKind.CHARGING))


def test_base_config_line_of_the_tariff_is_what_the_cases_below_assume() -> None:
    assert BASE.splitlines()[TARIFF_LINE - 1] == "tariff:"
    assert SIMPLE_TARIFF in BASE


def test_the_simple_form_loads_as_before(tmp_path: Path, secret_file: Path) -> None:
    loaded = load_config(write_config(tmp_path, BASE, secret_file))
    assert loaded.config.tariff == {
        "currency": "EUR",
        "prices_include_vat": True,
        "vat_rate_percent": "21",
        "energy_per_kwh": "0.39",
    }
    assert price_of_kwh(loaded.config.tariff) == 39


def test_ocpi_wrapper_inline(tmp_path: Path, secret_file: Path) -> None:
    """The OCPI form written out under ``tariff.ocpi`` (depends on the tariff rewrite)."""
    block = "tariff:\n  timezone: Europe/Amsterdam\n  ocpi:\n" + "".join(
        f"    {line}\n" for line in yaml.safe_dump(OCPI, sort_keys=False).splitlines()
    )
    loaded = load_config(write_config(tmp_path, with_tariff(block), secret_file))
    assert loaded.tariff.currency == "EUR"
    assert price_of_kwh(loaded.config.tariff) == 36  # 0.30 + 21 % VAT = 0.363 per kWh


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_ocpi_file_relative_to_the_config_file_is_read_into_ocpi(
    tmp_path: Path, secret_file: Path, suffix: str
) -> None:
    """``ocpi_file`` (JSON or YAML, a path relative to the config file's directory): the loader
    reads it and the tariff is the OCPI wrapper with its content (depends on the tariff rewrite)."""
    config_dir = tmp_path / "etc"
    (config_dir / "tariffs").mkdir(parents=True)
    text = json.dumps(OCPI, indent=2) if suffix == ".json" else yaml.safe_dump(OCPI, sort_keys=False)
    (config_dir / "tariffs" / f"t1{suffix}").write_text(text, encoding="utf-8")
    block = ocpi_file_block(f"tariffs/t1{suffix}", "timezone: Europe/Amsterdam", "minor_unit_digits: 2")
    loaded = load_config(write_config(config_dir, with_tariff(block), secret_file))
    assert "ocpi_file" not in loaded.config.tariff
    assert loaded.config.tariff["ocpi"] == OCPI
    assert (loaded.config.tariff["timezone"], loaded.config.tariff["minor_unit_digits"]) == (
        "Europe/Amsterdam",
        2,
    )
    assert tariff_to_builtins(loaded.tariff) == tariff_to_builtins(loaded.config.to_tariff())
    assert price_of_kwh(loaded.config.tariff) == 36


def test_ocpi_file_absolute_path(tmp_path: Path, secret_file: Path) -> None:
    ocpi = tmp_path / "elsewhere" / "t1.json"
    ocpi.parent.mkdir()
    ocpi.write_text(json.dumps(OCPI), encoding="utf-8")
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    loaded = load_config(write_config(config_dir, with_tariff(ocpi_file_block(str(ocpi))), secret_file))
    assert loaded.tariff.currency == "EUR"


def _error(tmp_path: Path, secret_file: Path, block: str, files: dict[str, str] | None = None) -> str:
    for name, text in (files or {}).items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    path = write_config(tmp_path, with_tariff(block), secret_file)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert SECRET_TEXT not in message
    return message


def test_an_unreadable_ocpi_file_is_a_config_error_naming_the_file(tmp_path: Path, secret_file: Path) -> None:
    for name in ("missing.json", "missing.yaml"):
        message = _error(tmp_path, secret_file, ocpi_file_block(name))
        assert message == (
            f"{tmp_path / 'agent.yaml'}:{TARIFF_LINE + 1}: tariff.ocpi_file: cannot read "
            f"{tmp_path / name}: No such file or directory"
        )
    (tmp_path / "dir.json").mkdir()
    message = _error(tmp_path, secret_file, ocpi_file_block("dir.json"))
    assert message.startswith(f"{tmp_path / 'agent.yaml'}:{TARIFF_LINE + 1}: tariff.ocpi_file: cannot read ")


@pytest.mark.parametrize(
    ("files", "block", "expected"),
    [
        pytest.param(
            {"t.json": '{\n  "id": "t1",\n  "elements": [,]\n}\n'},
            ocpi_file_block("t.json"),
            "{dir}/t.json:3: invalid JSON: Expecting value (column 16)",
            id="bad-json",
        ),
        pytest.param(
            {"t.json": '{"id": "t1", "id": "t2"}'},
            ocpi_file_block("t.json"),
            "{dir}/t.json: duplicate key 'id'",
            id="json-duplicate-key",
        ),
        pytest.param(
            {"t.yaml": "id: t1\nid: t2\n"},
            ocpi_file_block("t.yaml"),
            "{dir}/t.yaml:2: id: duplicate key (first at line 1)",
            id="yaml-duplicate-key",
        ),
        pytest.param(
            {"t.json": "[1, 2]"},
            ocpi_file_block("t.json"),
            "{dir}/agent.yaml:22: tariff.ocpi_file: {dir}/t.json: expected an OCPI 2.2.1 Tariff object "
            "(a mapping), got a list",
            id="not-an-object",
        ),
        pytest.param(
            {},
            "tariff:\n  ocpi_file: t.json\n  ocpi: {}\n",
            "{dir}/agent.yaml:22: tariff.ocpi_file: give either ocpi or ocpi_file, not both",
            id="both",
        ),
        pytest.param(
            {},
            "tariff:\n  ocpi_file: t.json\n  currency: EUR\n",
            "{dir}/agent.yaml:23: tariff.currency: unknown key",
            id="simple-form-key-next-to-ocpi-file",
        ),
        pytest.param(
            {},
            "tariff:\n  ocpi_file: 7\n",
            "{dir}/agent.yaml:22: tariff.ocpi_file: Expected `str | null`, got `int`",
            id="ocpi-file-not-a-string",
        ),
    ],
)
def test_a_broken_ocpi_file_names_its_file_and_line(
    tmp_path: Path, secret_file: Path, files: dict[str, str], block: str, expected: str
) -> None:
    assert _error(tmp_path, secret_file, block, files) == expected.format(dir=tmp_path)


def test_an_invalid_ocpi_tariff_in_a_yaml_file_names_its_line_and_path(
    tmp_path: Path, secret_file: Path
) -> None:
    """An OCPI field error points into the OCPI file (depends on the tariff rewrite's OCPI paths)."""
    bad = {**OCPI, "elements": [{"price_components": [{"type": "ENERGY", "price": "0.30", "step_size": 0}]}]}
    text = yaml.safe_dump(bad, sort_keys=False)
    line = next(n for n, row in enumerate(text.splitlines(), 1) if "step_size" in row)
    message = _error(tmp_path, secret_file, ocpi_file_block("t.yaml"), {"t.yaml": text})
    assert message.startswith(f"{tmp_path / 't.yaml'}:{line}: elements[0].price_components[0].step_size: ")


def test_an_invalid_ocpi_tariff_in_a_json_file_names_the_file_and_path(
    tmp_path: Path, secret_file: Path
) -> None:
    """(depends on the tariff rewrite's OCPI paths)"""
    bad = {**OCPI, "currency": "euro"}
    message = _error(tmp_path, secret_file, ocpi_file_block("t.json"), {"t.json": json.dumps(bad)})
    assert message.startswith(f"{tmp_path / 't.json'}: currency: ")


def test_a_wrapper_error_names_the_config_line(tmp_path: Path, secret_file: Path) -> None:
    """``timezone`` is the config file's (depends on the tariff rewrite's OCPI wrapper)."""
    block = ocpi_file_block("t.json", "timezone: Mars/Olympus")
    message = _error(tmp_path, secret_file, block, {"t.json": json.dumps(OCPI)})
    where = f"{tmp_path / 'agent.yaml'}:{TARIFF_LINE + 2}: tariff.timezone"
    assert message == f"{where}: unknown IANA timezone 'Mars/Olympus'"


def test_check_config_with_an_ocpi_file(tmp_path: Path, secret_file: Path) -> None:
    """``evpay-agent check-config`` reads the OCPI file (depends on the tariff rewrite)."""
    (tmp_path / "t1.json").write_text(json.dumps(OCPI), encoding="utf-8")
    path = write_config(tmp_path, with_tariff(ocpi_file_block("t1.json")), secret_file)
    script = Path(sys.executable).parent / "evpay-agent"
    cli = [str(script)] if script.exists() else [sys.executable, "-m", "agent.cli"]
    result = subprocess.run([*cli, "check-config", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{path}: OK ")
    (tmp_path / "t1.json").unlink()
    result = subprocess.run([*cli, "check-config", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert f"tariff.ocpi_file: cannot read {tmp_path / 't1.json'}" in result.stderr
