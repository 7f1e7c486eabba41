"""The agent's YAML configuration (CFG-1, DESIGN.md §5.1): valid files, broken files, the CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest
from msgspec import inspect as mi

from agent.cli.config import check_config, summary
from agent.config import reference as configref
from agent.config.schema import AgentConfig, LoadedConfig, Secret, load_config
from agent.config.yamlload import load_yaml
from agent.errors import AgentError, ConfigError
from agent.money.tariff import TariffBand, TariffConfig, tariff_from_builtins, tariff_to_builtins
from drivers.psp.messages import CommitOrder, Family
from drivers.psp.profile import Quirks
from statemachines.authorization import AuthorizationStrategy
from statemachines.config import P6X, ConnectorConfig, OfflinePolicy, StartMode, StopMode

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "systemd" / "agent.example.yaml"
REFERENCE = ROOT / "docs" / "configuration.md"
SECRET_TEXT = "hunter2-do-not-print"

pytestmark = pytest.mark.req("CFG-1")

# Line numbers matter: the broken cases below name them.
BASE = """\
station_id: CS-1
terminal:
  url: tcp://10.0.0.5:3201
  family: apollo
  keepalive_s: 10
  quirks:
    read_card_header: 0x41
charger:
  broker_url: mqtt://127.0.0.1:1883
connectors:
  - id: 1
    max_current_a: 32
  - id: 2
    max_current_a: 16
session:
  start_modes: [tap, plug_in, ui]
  stop_modes: [tap, unplug]
authorization:
  strategy: fixed
  amount_minor: 5000
tariff:
  currency: EUR
  prices_include_vat: true
  vat_rate_percent: "21"
  energy_per_kwh: "0.39"
upstream:
  broker_url: mqtts://backend.example.com:8883
  username: cs-1
  password_file: SECRET
"""

P6X_SERIAL = [
    ("url: tcp://10.0.0.5:3201", "url: serial:///dev/ttyUSB0?baudrate=57600"),
    ("family: apollo", "family: p6x"),
]
NO_UI = [("start_modes: [tap, plug_in, ui]", "start_modes: [tap, plug_in]")]


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "upstream.password"
    path.write_text(SECRET_TEXT + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


def write_config(tmp_path: Path, text: str, secret: Path) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(text.replace("SECRET", str(secret)), encoding="utf-8")
    return path


def edit(text: str, *replacements: tuple[str, str]) -> str:
    for old, new in replacements:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


def test_base_config_is_valid(tmp_path: Path, secret_file: Path) -> None:
    loaded = load_config(write_config(tmp_path, BASE, secret_file))
    config = loaded.config
    assert config.station_id == "CS-1"
    assert [c.id for c in config.connectors] == [1, 2]
    assert config.terminal.session_timeout_s == 172_800  # TERM-2 default
    assert config.session.plug_in_timeout_s == 300  # START-6 default
    assert config.session.free_vend_when_offline is OfflinePolicy.REFUSE  # ERR-3 default
    assert config.authorization.allow_over_capture is False  # AMT-4 default
    assert loaded.secrets.upstream_password is not None
    assert loaded.secrets.upstream_password.reveal() == SECRET_TEXT
    assert loaded.secrets.charger_password is None
    assert loaded.warnings == ()
    assert tariff_to_builtins(loaded.tariff) == tariff_to_builtins(tariff_from_builtins(config.tariff))
    assert loaded.tariff.currency == "EUR"


# (id, replacements, expected message after "FILE:") — the whole message, or its prefix when it ends
# with "…"; one line per error ("FILE:" before each)
BROKEN: list[tuple[str, list[tuple[str, str]], str]] = [
    (
        "wrong-type",
        [("max_current_a: 16", 'max_current_a: "16"')],
        "14: connectors[1].max_current_a: Expected `int`, got `str`",
    ),
    (
        "wrong-type-bool",
        [("keepalive_s: 10", "keepalive_s: yes")],
        "5: terminal.keepalive_s: Expected `int`, got `bool`",
    ),
    (
        "unknown-key-top",
        [("station_id: CS-1\n", "station_id: CS-1\nstation: x\n")],
        "2: station: unknown key",
    ),
    (
        "unknown-key-depth2",  # two errors: the misspelt key is unknown and the right one missing
        [("family: apollo", "famly: apollo")],
        "2: terminal.family: missing required key\n4: terminal.famly: unknown key",
    ),
    (
        "unknown-key-depth3",
        [("read_card_header: 0x41", "read_card_hdr: 0x41")],
        "7: terminal.quirks.read_card_hdr: unknown key",
    ),
    (
        "unknown-key-list-item",
        [("max_current_a: 32\n", "max_current_a: 32\n    colour: red\n")],
        "13: connectors[0].colour: unknown key",
    ),
    (
        "duplicate-key-top",
        [("station_id: CS-1\n", "station_id: CS-1\nstation_id: CS-2\n")],
        "2: station_id: duplicate key (first at line 1)",
    ),
    (
        "duplicate-key-depth2",
        [("  keepalive_s: 10\n", "  keepalive_s: 10\n  url: tcp://10.0.0.6:3201\n")],
        "6: terminal.url: duplicate key (first at line 3)",
    ),
    (
        "duplicate-key-list-item",
        [("  - id: 2\n", "  - id: 2\n    id: 3\n")],
        "14: connectors[1].id: duplicate key (first at line 13)",
    ),
    ("missing-key", [("  family: apollo\n", "")], "2: terminal.family: missing required key"),
    ("missing-top-level-key", [("station_id: CS-1\n", "")], "1: station_id: missing required key"),
    ("bad-enum", [("family: apollo", "family: apolo")], "4: terminal.family: Invalid enum value 'apolo'"),
    (
        "out-of-range-keepalive",
        [("keepalive_s: 10", "keepalive_s: 20")],
        "5: terminal.keepalive_s: Expected `int` <= 15",
    ),
    (
        "out-of-range-card-decision",
        [("  stop_modes: [tap, unplug]\n", "  stop_modes: [tap, unplug]\n  card_decision_s: 31\n")],
        "18: session.card_decision_s: Expected `int` <= 30",
    ),
    (
        "float-money",
        [("amount_minor: 5000", "amount_minor: 50.00")],
        "20: authorization.amount_minor: Expected `int`, got `float`",
    ),
    (
        "float-tariff-price",
        [('energy_per_kwh: "0.39"', "energy_per_kwh: 0.39")],
        "25: tariff.energy_per_kwh: expected a decimal string, got 0.39…",
    ),
    (
        "tariff-semantics",
        [('vat_rate_percent: "21"', 'vat_rate_percent: "21%"')],
        "24: tariff.vat_rate_percent: expected a decimal string, got '21%'",
    ),
    (
        "bad-url-scheme",
        [("url: tcp://10.0.0.5:3201", "url: http://10.0.0.5")],
        "3: terminal.url: unsupported scheme 'http': use serial://, tcp:// or tls://",
    ),
    (
        "bad-serial-baudrate",
        [("url: tcp://10.0.0.5:3201", "url: serial:///dev/ttyUSB0?baudrate=1200")],
        "3: terminal.url: baudrate '1200' is not one of…",
    ),
    (
        "tls-on-p6x",
        [("url: tcp://10.0.0.5:3201", "url: tls://10.0.0.5:3201"), ("family: apollo", "family: p6x"), *NO_UI],
        "3: terminal.url: P6X has no TLS mode; use serial:// (psp-reference §1.1)",
    ),
    (
        "bad-broker-url",
        [("broker_url: mqtt://127.0.0.1:1883", "broker_url: mqtt://user:pw@127.0.0.1:1883")],
        "9: charger.broker_url: put no credentials in the URL: use username and password_file",
    ),
    (
        "ui-start-on-p6x",
        P6X_SERIAL,
        "16: session.start_modes[2]: ui needs an Apollo terminal (psp-reference §5.21)",
    ),
    (
        "ui-stop-on-p6x",
        [*P6X_SERIAL, *NO_UI, ("stop_modes: [tap, unplug]", "stop_modes: [tap, unplug, ui]")],
        "17: session.stop_modes[2]: ui needs an Apollo terminal (psp-reference §5.21)",
    ),
    (
        "incremental-on-p6x",
        [*P6X_SERIAL, *NO_UI, ("strategy: fixed", "strategy: incremental")],
        "19: authorization.strategy: incremental needs Update Session, Apollo only (psp-reference §5.20)",
    ),
    (
        "duplicate-connector-id",
        [("  - id: 2\n", "  - id: 1\n")],
        "13: connectors[1].id: duplicate connector id 1…",
    ),
    (
        "no-unplug-stop",
        [("stop_modes: [tap, unplug]", "stop_modes: [tap]")],
        "17: session.stop_modes: must include unplug…",
    ),
    (
        "amount-above-maximum",
        [("amount_minor: 5000", "amount_minor: 50000")],
        "20: authorization.amount_minor: 50000 is above maximum_minor 15000",
    ),
    (
        "alias",
        [
            ("start_modes: [tap, plug_in, ui]", "start_modes: &modes [tap, plug_in, ui]"),
            ("stop_modes: [tap, unplug]", "stop_modes: *modes"),
        ],
        "17: session.stop_modes: YAML alias *modes is not supported; write the value out",
    ),
    (
        "non-string-key",
        [("  keepalive_s: 10\n", "  keepalive_s: 10\n  1: x\n")],
        "6: terminal: key '1' is not a string…",
    ),
    (
        "multiple-documents",
        [("  password_file: SECRET\n", "  password_file: SECRET\n---\nstation_id: CS-2\n")],
        "30: more than one YAML document (---); a config file holds one",
    ),
    (
        "tab-indentation",
        [("  keepalive_s: 10\n", "\tkeepalive_s: 10\n")],
        "5: invalid YAML: found character '\\t' that cannot start any token; indent with spaces, not tabs…",
    ),
    (
        "relative-secret-path",
        [("password_file: SECRET", "password_file: upstream.password")],
        "29: upstream.password_file: must be an absolute path, got 'upstream.password'",
    ),
    (
        "wildcard-topic-prefix",
        [
            (
                "  broker_url: mqtt://127.0.0.1:1883\n",
                "  broker_url: mqtt://127.0.0.1:1883\n  prefix: charger/#\n",
            )
        ],
        "10: charger.prefix: no MQTT wildcards (# +), not empty and no leading or trailing /",
    ),
    (
        "missing-per-connector-placeholder",
        [
            (
                "  broker_url: mqtt://127.0.0.1:1883\n",
                "  broker_url: mqtt://127.0.0.1:1883\n  topics:\n    plug: x/plug\n",
            )
        ],
        "11: charger.topics.plug: needs {connector}: the topic is per connector",
    ),
    (
        "payment-topic-per-connector",  # the OCPP 2.1 payment facts (docs/ocpp21.md) are per connector
        [
            (
                "  broker_url: mqtt://127.0.0.1:1883\n",
                "  broker_url: mqtt://127.0.0.1:1883\n  topics:\n    payment: x/payment\n",
            )
        ],
        "11: charger.topics.payment: needs {connector}: the topic is per connector",
    ),
]


@pytest.mark.parametrize(("replacements", "expected"), [c[1:] for c in BROKEN], ids=[c[0] for c in BROKEN])
def test_broken_config_names_file_line_and_path(
    tmp_path: Path, secret_file: Path, replacements: list[tuple[str, str]], expected: str
) -> None:
    path = write_config(tmp_path, edit(BASE, *replacements), secret_file)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    full = "\n".join(f"{path}:{line}" for line in expected.split("\n"))
    if expected.endswith("…"):
        assert message.startswith(full[:-1]), message
    else:
        assert message == full
    assert isinstance(info.value, AgentError)
    assert info.value.file == str(path)
    assert SECRET_TEXT not in message


def test_secret_that_is_a_directory(tmp_path: Path, secret_file: Path) -> None:
    directory = tmp_path / "secrets"
    directory.mkdir()
    path = write_config(tmp_path, BASE, directory)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}:29: upstream.password_file: cannot read {directory}: Is a directory"


def test_secret_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nope.password"
    path = write_config(tmp_path, BASE, missing)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (
        str(info.value)
        == f"{path}:29: upstream.password_file: cannot read {missing}: No such file or directory"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 file")
def test_secret_without_permission(tmp_path: Path, secret_file: Path) -> None:
    secret_file.chmod(0)
    path = write_config(tmp_path, BASE, secret_file)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (
        str(info.value) == f"{path}:29: upstream.password_file: cannot read {secret_file}: Permission denied"
    )


def test_empty_secret(tmp_path: Path, secret_file: Path) -> None:
    secret_file.write_text("\n", encoding="utf-8")
    path = write_config(tmp_path, BASE, secret_file)
    with pytest.raises(ConfigError, match=r":29: upstream.password_file: .* is empty$"):
        load_config(path)


def test_unreadable_tls_key(tmp_path: Path, secret_file: Path) -> None:
    text = BASE + f"  tls:\n    cert_file: {secret_file}\n    key_file: {tmp_path}/missing.key\n"
    path = write_config(tmp_path, text, secret_file)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{path}:32: upstream.tls.key_file: cannot read {tmp_path}/missing.key: No such file or directory"
    )


def test_secret_content_never_shown(tmp_path: Path, secret_file: Path) -> None:
    """A secret is masked in repr/str and appears in no warning."""
    secret_file.chmod(0o644)  # world-readable: a warning naming the file, not the content
    loaded = load_config(write_config(tmp_path, BASE, secret_file))
    assert loaded.secrets.upstream_password is not None
    shown = repr(loaded) + str(loaded.secrets) + "".join(loaded.warnings)
    assert SECRET_TEXT not in shown
    assert any(
        "upstream.password_file: warning:" in w and "readable by everyone" in w for w in loaded.warnings
    )
    assert str(Secret(SECRET_TEXT)) == "Secret('********')"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "agent.yaml")
    assert str(info.value) == f"{tmp_path}/agent.yaml: cannot read: No such file or directory"
    with pytest.raises(ConfigError, match=r"agent\.yaml: cannot read: No such file or directory$"):
        load_config(tmp_path / "agent.yaml", display="agent.yaml")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "1: (document): expected a mapping of settings, got an empty file"),
        ("# nothing but a comment\n", "1: (document): expected a mapping of settings, got an empty file"),
        ("- a\n- b\n", "1: (document): expected a mapping of settings, got a list"),
        ("just text\n", "1: (document): expected a mapping of settings, got a string"),
    ],
    ids=["empty", "comment-only", "list", "scalar"],
)
def test_not_a_mapping(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}:{expected}"


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_bytes(b"station_id: CS-1\nlabel: \xff\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}:2: not UTF-8 text"


def test_alias_bomb_is_rejected_quickly() -> None:
    """A 'billion laughs' document is refused without expanding anything."""
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"^bomb\.yaml:2: a1\[0\]: YAML alias \*a0 is not supported"):
        load_yaml("\n".join(lines) + "\n", "bomb.yaml")
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a:\n  <<: {b: 1}\n", "x.yaml:2: a: merge keys (<<) are not supported; write the keys out"),
        ("a: !!set {b}\n", "x.yaml:1: a: unsupported YAML tag tag:yaml.org,2002:set"),
        ("a: !!python/name:os.system x\n", "x.yaml:1: a: could not determine a constructor…"),
        ("? [a]\n: 1\n", "x.yaml:1: (document): key … is not a string (quote it)"),
        ("a: " + "[" * 40 + "]" * 40 + "\n", "x.yaml:1: a" + "[0]" * 32 + ": nested deeper than 32 levels"),
    ],
    ids=["merge-key", "set-tag", "python-tag", "complex-key", "too-deep"],
)
def test_yaml_loader_rejects(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_yaml(text, "x.yaml")
    message = str(info.value)
    if "…" in expected:
        head, _, tail = expected.partition("…")
        assert message.startswith(head), message
        assert message.endswith(tail), message
    else:
        assert message == expected


def test_yaml_loader_keeps_lines() -> None:
    doc = load_yaml("a: 1\nb:\n  - x: 1\n\n  - x: 2\n    y: [1,\n      2]\n", "x.yaml")
    assert doc.data == {"a": 1, "b": [{"x": 1}, {"x": 2, "y": [1, 2]}]}
    assert doc.lines[("b", 1)] == 5
    assert doc.lines[("b", 1, "y")] == 6
    assert doc.lines[("b", 1, "y", 1)] == 7
    assert doc.line_of(("b", 1, "missing")) == 5


# ---------------------------------------------------------------------------------------------------
# the example file and the reference table
# ---------------------------------------------------------------------------------------------------


def example_with_secrets(tmp_path: Path) -> Path:
    """The example with /etc/evpay-agent/ files moved into tmp_path (they exist only on a charger)."""
    text = EXAMPLE.read_text(encoding="utf-8")
    for name in ("charger.password", "upstream.password", "backend-ca.pem", "client.pem", "client.key"):
        assert f"/etc/evpay-agent/{name}" in text
        secret = tmp_path / name
        secret.write_text(f"{SECRET_TEXT}-{name}\n", encoding="utf-8")
        secret.chmod(0o600)
    path = tmp_path / "agent.yaml"
    path.write_text(text.replace("/etc/evpay-agent/", f"{tmp_path}/"), encoding="utf-8")
    return path


def test_example_is_valid(tmp_path: Path) -> None:
    loaded = load_config(example_with_secrets(tmp_path))
    assert loaded.warnings == ()
    config = loaded.config
    assert config.station_id == "CS-0042"
    assert config.terminal.family is Family.APOLLO
    assert loaded.secrets.upstream_password is not None
    assert loaded.secrets.upstream_password.reveal() == f"{SECRET_TEXT}-upstream.password"
    assert loaded.tariff.currency == "EUR"


def _struct_fields(t: mi.Type, data: object, found: set[tuple[type, str]]) -> None:
    """Record (Struct class, field name) for every key of ``data`` decoded as ``t``."""
    while isinstance(t, mi.Metadata):
        t = t.type
    if isinstance(t, mi.StructType) and isinstance(data, dict):
        fields = {f.name: f for f in t.fields}
        for key, value in data.items():
            found.add((t.cls, key))
            _struct_fields(fields[key].type, value, found)
    elif isinstance(t, (mi.VarTupleType, mi.ListType)) and isinstance(data, list):
        for item in data:
            _struct_fields(t.item_type, item, found)
    elif isinstance(t, mi.UnionType):
        for member in t.types:
            _struct_fields(member, data, found)


def _all_struct_fields(t: mi.Type, out: set[tuple[type, str]]) -> None:
    while isinstance(t, mi.Metadata):
        t = t.type
    if isinstance(t, mi.StructType):
        for field in t.fields:
            if (t.cls, field.name) not in out:
                out.add((t.cls, field.name))
                _all_struct_fields(field.type, out)
    elif isinstance(t, (mi.VarTupleType, mi.ListType)):
        _all_struct_fields(t.item_type, out)
    elif isinstance(t, mi.UnionType):
        for member in t.types:
            _all_struct_fields(member, out)


def test_example_documents_every_field() -> None:
    """Every field of every Struct is set in the example, so it cannot go stale."""
    doc = load_yaml(EXAMPLE.read_text(encoding="utf-8"), "agent.example.yaml")
    info = mi.type_info(AgentConfig)
    found: set[tuple[type, str]] = set()
    _struct_fields(info, doc.data, found)
    every: set[tuple[type, str]] = set()
    _all_struct_fields(info, every)
    # tariff: is a mapping in one of its forms; the example shows the simple form in full
    tariff = mi.type_info(TariffConfig)
    assert isinstance(doc.data, dict)
    _struct_fields(tariff, doc.data["tariff"], found)
    _all_struct_fields(tariff, every)
    assert (TariffBand, "weekdays") in every
    assert (TariffConfig, "bands") in every
    missing = sorted(f"{cls.__name__}.{name}" for cls, name in every - found)
    assert not missing, f"not in {EXAMPLE.name}: {missing}"


def test_example_key_lines_are_commented() -> None:
    """Every key line of the example carries a comment, on it or right above it."""
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    bare = [
        f"{n}: {line}"
        for n, line in enumerate(lines, 1)
        if line.strip() and "#" not in line and not (n > 1 and lines[n - 2].lstrip().startswith("#"))
    ]
    assert not bare, "\n".join(bare)


def test_reference_table_is_current() -> None:
    """docs/configuration.md's table is generated from the Structs; regenerate when this fails:
    .venv/bin/python -m agent.config.reference --write docs/configuration.md"""
    text = REFERENCE.read_text(encoding="utf-8")
    assert configref.render(text) == text
    every: set[tuple[type, str]] = set()
    _all_struct_fields(mi.type_info(AgentConfig), every)
    for _, name in every:
        assert f".{name}`" in text or f"`{name}`" in text, name


# ---------------------------------------------------------------------------------------------------
# mapping onto runtime objects
# ---------------------------------------------------------------------------------------------------


def test_mapping_to_profile_and_station_config(tmp_path: Path, secret_file: Path) -> None:
    text = edit(
        BASE,
        *P6X_SERIAL,
        *NO_UI,
        (
            "    read_card_header: 0x41\n",
            "    read_card_header: 0x40\n    accepted_preambles: any\n    commit_order: amount_session\n",
        ),
        ("  keepalive_s: 10\n", "  keepalive_s: 7\n"),
        ("strategy: fixed", "strategy: maximum"),
        (
            "  stop_modes: [tap, unplug]\n",
            "  stop_modes: [tap, unplug]\n  free_vend_when_offline: free_vend\n",
        ),
    )
    loaded = load_config(write_config(tmp_path, text, secret_file))
    profile = loaded.to_profile()
    assert profile.family is Family.P6X
    assert profile.timeouts.keepalive_s == 7.0
    assert profile.quirks == Quirks(
        read_card_header=0x40, accepted_preambles=None, commit_order=CommitOrder.AMOUNT_SESSION
    )
    station = loaded.to_station_config()
    assert station.terminal == P6X
    assert station.connectors == (ConnectorConfig(1), ConnectorConfig(2))
    assert station.start_modes == frozenset({StartMode.TAP, StartMode.PLUG_IN})
    assert station.stop_modes == frozenset({StopMode.TAP, StopMode.UNPLUG})
    assert station.authorization.strategy is AuthorizationStrategy.MAXIMUM
    assert station.offline_policy is OfflinePolicy.FREE_VEND
    assert station.plug_in_timeout_s == 300


def test_p6x_over_tcp_is_a_warning(tmp_path: Path, secret_file: Path) -> None:
    text = edit(BASE, ("family: apollo", "family: p6x"), *NO_UI)
    path = write_config(tmp_path, text, secret_file)
    loaded = load_config(path)
    assert loaded.warnings == (
        f"{path}:3: terminal.url: warning: P6X is serial-only per Payter (psp-reference §1.1); tcp:// works "
        "only through a serial device server in front of its RS-232 port",
    )


def test_config_is_frozen(tmp_path: Path, secret_file: Path) -> None:
    config = load_config(write_config(tmp_path, BASE, secret_file)).config
    with pytest.raises(AttributeError):
        config.station_id = "other"  # type: ignore[misc]
    assert msgspec.convert(msgspec.to_builtins(config), AgentConfig) == config


# ---------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------


def test_check_config_functions(tmp_path: Path, secret_file: Path) -> None:
    from agent.cli import CliError

    path = write_config(tmp_path, BASE, secret_file)
    loaded: LoadedConfig = check_config(path)
    assert (
        summary(loaded) == f"{path}: OK (station CS-1, 2 connectors, terminal apollo at tcp://10.0.0.5:3201)"
    )
    with pytest.raises(CliError) as info:
        check_config(tmp_path / "missing.yaml")
    assert info.value.exit_code == 2


def _cli() -> list[str]:
    script = Path(sys.executable).parent / "evpay-agent"
    return [str(script)] if script.exists() else [sys.executable, "-m", "agent.cli"]


def test_check_config_subprocess(tmp_path: Path, secret_file: Path) -> None:
    good = example_with_secrets(tmp_path)
    result = subprocess.run([*_cli(), "check-config", str(good)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout
        == f"{good}: OK (station CS-0042, 2 connectors, terminal apollo at tcp://10.0.0.5:3201)\n"
    )
    assert result.stderr == ""

    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    bad = write_config(bad_dir, edit(BASE, ("read_card_header: 0x41", "read_card_hdr: 0x41")), secret_file)
    result = subprocess.run([*_cli(), "check-config", str(bad)], capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"{bad}:7: terminal.quirks.read_card_hdr: unknown key\nevpay-agent: error: {bad}: 1 error\n"
    )

    unreadable = tmp_path / "secret-dir"
    unreadable.mkdir()
    bad_secret = write_config(bad_dir, BASE, unreadable)
    result = subprocess.run(
        [*_cli(), "check-config", str(bad_secret)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    reason = f"upstream.password_file: cannot read {unreadable}: Is a directory"
    assert result.stderr == f"{bad_secret}:29: {reason}\nevpay-agent: error: {bad_secret}: 1 error\n"
    assert SECRET_TEXT not in result.stdout + result.stderr
    shutil.rmtree(bad_dir)
