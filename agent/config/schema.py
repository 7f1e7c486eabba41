"""The agent's configuration: one YAML file, typed and validated (DESIGN.md §5.1, requirement CFG-1).

:func:`load_config` reads the file with :mod:`agent.config.yamlload` (safe, duplicate keys rejected, line
of every key kept), converts it into the frozen msgspec Structs below, runs the range and
cross-field rules, builds the tariff, checks every referenced secret / TLS file is readable and
returns a :class:`LoadedConfig`. Problems raise one :class:`ConfigErrors` (a
:class:`~agent.errors.ConfigError`) holding **every** error found (issue 11), each
``FILE:LINE: PATH: REASON``, sorted by line: :class:`_Check` checks each section and key on its
own, then the rules and references on whatever validated. Nothing is half-loaded.

Decisions (documented in ``docs/configuration.md`` too):

- Money is integer minor units (``*_minor``) or, in ``tariff:``, quoted decimal strings; a float
  anywhere money goes is a type error (the OCPI form's numbers are OCPI's own, read exactly).
- ``tariff:`` takes every form :func:`agent.money.tariff.tariff_from_builtins` does: the simple
  form (:class:`agent.money.tariff.TariffConfig`) or the OCPI wrapper (:class:`OcpiTariffForm`),
  whose ``ocpi_file`` (relative to the config file's directory) this loader reads and puts in
  ``ocpi``: the tariff module does no I/O. An error inside that file names the file (and, for
  YAML, its line) and the path in it.
- Durations are whole seconds (``*_s``).
- File paths (state directory, secrets, TLS files, serial device) must be absolute: the service
  runs from ``/`` and a relative path would silently depend on the working directory.
- Secrets are read from files (UP-4); their content is held in :class:`Secret` (masked ``repr``)
  and never appears in a message.
- A P6X on ``tcp://`` is a **warning**, not an error: Payter says P6X is serial-only
  (psp-reference §1.1) but a serial device server in front of its RS-232 port is a legitimate
  set-up. ``tls://`` on a P6X is an error (no TLS mode on P6X).
- UI start/stop, ``routing: ui_selection`` and the ``incremental`` / ``driver_cap`` strategies
  need Apollo (psp-reference §8, §5.20, §5.21) and are rejected on a P6X.
- ``unplug`` must be among the stop modes: STOP-3 is always honoured (no vehicle, no energy).
"""

from __future__ import annotations

import os
import stat
import types
from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from string import Formatter
from typing import Annotated, Any, Final, Literal, Union, final, get_args, get_origin
from urllib.parse import parse_qs, urlsplit

import msgspec
from msgspec import Meta

from agent.config.yamlload import KeyPath, PathItem, YamlDocument, read_json_file, read_yaml_file
from agent.errors import ConfigError, format_path
from agent.money.tariff import (
    Tariff,
    TariffConfig,
    TariffConfigError,
    tariff_from_builtins,
    tariff_to_builtins,
)
from agent.store.journal import JournalError, check_no_pan
from agent.upstream.rfid import OfflinePolicy as RfidOfflinePolicy
from drivers.psp.messages import CommitOrder, Family
from drivers.psp.profile import Profile, Quirks, profile_for
from drivers.transport import DEFAULT_TCP_PORT, SUPPORTED_BAUDRATES
from statemachines.authorization import AuthorizationPolicy, AuthorizationStrategy
from statemachines.config import (
    APOLLO as APOLLO_CAPABILITIES,
)
from statemachines.config import (
    P6X as P6X_CAPABILITIES,
)
from statemachines.config import (
    ConnectorConfig,
    OfflinePolicy,
    Routing,
    StartMode,
    StationConfig,
    StopMode,
)

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "AgentConfig",
    "AuthorizationConfig",
    "ChargerConfig",
    "ChargerTopics",
    "ConfigErrors",
    "ConnectorEntry",
    "LoadedConfig",
    "OcpiTariffForm",
    "QuirksConfig",
    "ReceiptsConfig",
    "Secret",
    "SessionConfig",
    "TerminalConfig",
    "TlsConfig",
    "UpstreamConfig",
    "load_config",
    "parse_config",
]

DEFAULT_CONFIG_PATH: Final = Path("/etc/evpay-agent/agent.yaml")  # DESIGN.md §5.1

MAX_AMOUNT_MINOR: Final = 0xFFFF_FFFF  # psp-reference §5.9 / §5.17: amounts are 4-byte unsigned
MAX_SECRET_BYTES: Final = 64 * 1024

# ---------------------------------------------------------------------------------------------------
# Small annotated types (constraints are checked by msgspec, which reports the exact path)
# ---------------------------------------------------------------------------------------------------

AbsPath = Annotated[str, Meta(description="absolute path")]  # checked by _check_absolute (clear message)
AmountMinor = Annotated[int, Meta(gt=0, le=MAX_AMOUNT_MINOR)]
Byte = Annotated[int, Meta(ge=0, le=0xFF)]
Baudrate = Literal[9600, 19200, 38400, 57600, 115200]  # psp-reference §1.2 / §11


class _Rule(ValueError):
    """A rule broken inside ``__post_init__``; ``rel`` is the offending field relative to the
    Struct (``"start_modes[2]"``). Encoded into the message so it survives msgspec's wrapping."""

    def __init__(self, rel: str, reason: str) -> None:
        super().__init__(f"`{rel}`: {reason}")
        self.rel = rel
        self.reason = reason


# While the collector of :func:`load_config` runs, ``__post_init__`` leaves the rules to it: it
# asks ``rules()`` for every broken one (each its own error) instead of msgspec's first.
_COLLECTING: ContextVar[bool] = ContextVar("evpay_agent_config_collecting", default=False)


def _enforce(rules: Iterable[_Rule]) -> None:
    """``__post_init__``: raise the first broken rule (msgspec reports it at the Struct's path)."""
    if not _COLLECTING.get():
        for rule in rules:
            raise rule


def _duplicates(values: tuple[object, ...]) -> int | None:
    """Index of the first value seen before, or None."""
    seen: set[object] = set()
    for index, value in enumerate(values):
        if value in seen:
            return index
        seen.add(value)
    return None


def _check_absolute(struct: object, *names: str) -> Iterator[_Rule]:
    for name in names:
        value: str | None = getattr(struct, name)
        if value is not None and not value.startswith("/"):
            yield _Rule(name, f"must be an absolute path, got {value!r}")


def _topic_problem(topic: str) -> str | None:
    """MQTT topic text: no wildcards, no empty levels at the ends (MQTT 5.0 §4.7)."""
    if not topic or any(c in topic for c in "#+\x00") or topic.startswith("/") or topic.endswith("/"):
        return "no MQTT wildcards (# +), not empty and no leading or trailing /"
    return None


def _placeholders(template: str) -> set[str]:
    try:
        return {name for _, name, _, _ in Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ValueError(f"bad {{}} placeholder: {exc}") from None


# ---------------------------------------------------------------------------------------------------
# terminal:
# ---------------------------------------------------------------------------------------------------


class QuirksConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Switches for documented PSP inconsistencies (psp-reference §4.3, §5.17, §12); map onto
    :class:`drivers.psp.profile.Quirks`. The defaults are the reference's recommendations."""

    read_card_header: Annotated[
        Literal[0x40, 0x41], Meta(description="Read Card request header, 0x41 (its page) or 0x40 (S6); §4.3")
    ] = 0x41
    commit_order: Annotated[CommitOrder, Meta(description="Commit Session field order (a [GAP]); §5.17")] = (
        CommitOrder.SESSION_AMOUNT
    )
    status_response_header: Annotated[
        Literal[0x00, 0x26], Meta(description="Get Status Response header, 0x00 (docs) or 0x26 (T1); §4.3")
    ] = 0x00
    accepted_preambles: Annotated[
        tuple[Byte, ...] | Literal["any"],
        Meta(description='terminal→host preamble bytes accepted, or "any" (P6X address byte); §2.1, §8'),
    ] = (0xAA,)
    strict_magic: Annotated[
        bool | None,
        Meta(description="reject frames whose magic is not 0x3C; null = family default; §2.1, §8"),
    ] = None
    baud_rates: Annotated[
        tuple[Baudrate, ...],
        Meta(min_length=1, description="serial baud rates the driver tries, in order; §1.2"),
    ] = (57600, 115200)
    rfid_uid_tag: Annotated[
        int, Meta(ge=0, le=0xFFFFFF, description="DOL tag that carries an RFID UID (a [GAP]); §6.4, §7.6")
    ] = 0xDFF006
    card_timeout_message: Annotated[
        Literal["session_cancelled", "session_declined"],
        Meta(description="what ends WAIT_CARD on card-detect timeout (a [GAP]); §5.9"),
    ] = "session_cancelled"

    def __post_init__(self) -> None:
        _enforce(self.rules())

    def rules(self) -> Iterator[_Rule]:
        if isinstance(self.accepted_preambles, tuple) and not self.accepted_preambles:
            yield _Rule("accepted_preambles", 'needs at least one byte (or "any")')
        if (index := _duplicates(tuple(self.baud_rates))) is not None:
            yield _Rule(f"baud_rates[{index}]", "listed twice")

    def to_quirks(self) -> Quirks:
        preambles = self.accepted_preambles
        return Quirks(
            read_card_header=self.read_card_header,
            commit_order=self.commit_order,
            status_response_header=self.status_response_header,
            accepted_preambles=None if preambles == "any" else frozenset(preambles),
            strict_magic=self.strict_magic,
            baud_rates=tuple(self.baud_rates),
            rfid_uid_tag=self.rfid_uid_tag,
            card_timeout_message=self.card_timeout_message,
        )


class TerminalConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The payment terminal (DESIGN.md §3.1, §3.2)."""

    driver: Annotated[Literal["psp"], Meta(description="terminal driver (only psp so far)")] = "psp"
    url: Annotated[
        str,
        Meta(
            description="serial:///dev/ttyUSB0?baudrate=57600, tcp://host:3201 or tls://host:3201 "
            "(Apollo); DESIGN.md §3.1"
        ),
    ]
    family: Annotated[Family, Meta(description="terminal family: apollo or p6x; psp-reference §8")]
    session_timeout_s: Annotated[
        int,
        Meta(
            ge=3600,
            le=0xFFFF_FFFF,
            description="Setup session timeout (action void), longer than the longest charge plus "
            "settlement; TERM-2, psp-reference §5.4",
        ),
    ] = 172_800  # TERM-2: 48 h
    keepalive_s: Annotated[
        int,
        Meta(
            ge=1,
            le=15,
            description="Get Status keep-alive interval; ≤ 15 s (idle close at 20 s); TERM-4, §1.3",
        ),
    ] = 10
    offline_alarm_after_s: Annotated[
        int, Meta(ge=1, description="raise the terminal-offline alarm after this long offline; TERM-6")
    ] = 60
    price_on_payment_screen: Annotated[
        bool,
        Meta(
            description="Apollo: the tariff text in the Start Session's reference strings, the text "
            "the payment screen shows while it waits for a card and hides every other screen; "
            "START-8, psp-reference §3.3, §5.9",
        ),
    ] = True
    quirks: Annotated[QuirksConfig, Meta(description="protocol quirk switches; psp-reference §4.3, §12")] = (
        msgspec.field(default_factory=QuirksConfig)
    )

    def __post_init__(self) -> None:
        problem = _terminal_url_problem(self.url, self.family)
        if problem:
            raise _Rule("url", problem)

    def to_profile(self) -> Profile:
        """The driver profile: family defaults, these quirks and this keep-alive interval."""
        profile = profile_for(self.family, self.quirks.to_quirks())
        return profile.with_timeouts(keepalive_s=float(self.keepalive_s))


def _terminal_url_problem(url: str, family: Family) -> str | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"invalid URL: {exc}"
    scheme = parts.scheme.lower()
    if scheme == "serial":
        if parts.netloc:
            return "serial URL takes a device path: serial:///dev/ttyUSB0 (three slashes)"
        if not parts.path.startswith("/"):
            return "serial URL needs an absolute device path, e.g. serial:///dev/ttyUSB0"
        query = parse_qs(parts.query, keep_blank_values=True)
        if unknown := sorted(set(query) - {"baudrate"}):
            return f"unknown serial URL option {unknown[0]!r} (only baudrate)"
        for value in query.get("baudrate", []):
            if not value.isdigit() or int(value) not in SUPPORTED_BAUDRATES:
                return f"baudrate {value!r} is not one of {', '.join(map(str, SUPPORTED_BAUDRATES))} (§1.2)"
        return None
    if scheme in ("tcp", "tls"):
        if not parts.hostname:
            return f"{scheme} URL needs a host, e.g. {scheme}://10.0.0.5:{DEFAULT_TCP_PORT}"
        if parts.path not in ("", "/"):
            return f"{scheme} URL takes no path"
        if port == 0:
            return "port 0 is not a valid port"
        if scheme == "tls" and family is Family.P6X:
            return "P6X has no TLS mode; use serial:// (psp-reference §1.1)"
        allowed = {"cafile", "certfile", "keyfile", "verify"} if scheme == "tls" else set()
        if unknown := sorted(set(parse_qs(parts.query, keep_blank_values=True)) - allowed):
            return f"unknown {scheme} URL option {unknown[0]!r}"
        return None
    return f"unsupported scheme {parts.scheme!r}: use serial://, tcp:// or tls://"


# ---------------------------------------------------------------------------------------------------
# MQTT (charger bridge and upstream)
# ---------------------------------------------------------------------------------------------------


class TlsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """TLS for an MQTT connection (UP-4). The server is always verified."""

    ca_file: Annotated[
        AbsPath | None, Meta(description="CA bundle that verifies the broker; null = system CAs")
    ] = None
    cert_file: Annotated[AbsPath | None, Meta(description="client certificate (PEM); with key_file")] = None
    key_file: Annotated[AbsPath | None, Meta(description="client private key (PEM); a secret")] = None

    def __post_init__(self) -> None:
        _enforce(self.rules())

    def rules(self) -> Iterator[_Rule]:
        yield from _check_absolute(self, "ca_file", "cert_file", "key_file")
        if (self.cert_file is None) != (self.key_file is None):
            yield _Rule(
                "cert_file" if self.cert_file is None else "key_file", "cert_file and key_file go together"
            )


def _broker_url_problem(url: str, tls: TlsConfig | None) -> str | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"invalid URL: {exc}"
    if parts.scheme not in ("mqtt", "mqtts"):
        return f"unsupported scheme {parts.scheme!r}: use mqtt://host:1883 or mqtts://host:8883"
    if not parts.hostname:
        return "broker URL needs a host"
    if port == 0:
        return "port 0 is not a valid port"
    if parts.username or parts.password:
        return "put no credentials in the URL: use username and password_file"
    if parts.path not in ("", "/") or parts.query:
        return "broker URL takes no path or query"
    if tls is not None and parts.scheme != "mqtts":
        return "tls settings need an mqtts:// broker URL"
    return None


class ChargerTopics(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """MQTT bridge topics (DESIGN.md §3.3). ``{prefix}`` and ``{connector}`` are replaced."""

    plug: Annotated[str, Meta(description="charger→agent plug state, per connector")] = (
        "{prefix}/{connector}/plug"
    )
    status: Annotated[str, Meta(description="charger→agent charging state, per connector")] = (
        "{prefix}/{connector}/status"
    )
    meter: Annotated[str, Meta(description="charger→agent meter values, per connector")] = (
        "{prefix}/{connector}/meter"
    )
    alive: Annotated[str, Meta(description="charger→agent retained liveness and LWT")] = "{prefix}/alive"
    cmd: Annotated[str, Meta(description="agent→charger energy commands, per connector")] = (
        "{prefix}/{connector}/cmd"
    )
    payment: Annotated[
        str,
        Meta(description="agent→charger retained payment facts for the charger's OCPP stack, per connector"),
    ] = "{prefix}/{connector}/payment"

    def __post_init__(self) -> None:
        for name in ("plug", "status", "meter", "alive", "cmd", "payment"):
            template: str = getattr(self, name)
            try:
                names = _placeholders(template)
            except ValueError as exc:
                raise _Rule(name, str(exc)) from None
            if unknown := sorted(names - {"prefix", "connector"}):
                raise _Rule(name, f"unknown placeholder {{{unknown[0]}}} (use {{prefix}}, {{connector}})")
            per_connector = name != "alive"
            if per_connector and "connector" not in names:
                raise _Rule(name, "needs {connector}: the topic is per connector")
            if not per_connector and "connector" in names:
                raise _Rule(name, "is per charger: {connector} is not available")
            if problem := _topic_problem(template):
                raise _Rule(name, problem)

    def topic(
        self, kind: Literal["plug", "status", "meter", "alive", "cmd", "payment"], prefix: str, connector: int
    ) -> str:
        template: str = getattr(self, kind)
        return template.format(prefix=prefix, connector=connector)


class ChargerConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The charger driver (DESIGN.md §3.3)."""

    driver: Annotated[
        Literal["mqtt_bridge"], Meta(description="charger driver (only mqtt_bridge so far)")
    ] = "mqtt_bridge"
    broker_url: Annotated[str, Meta(description="local broker shared with the charger firmware")] = (
        "mqtt://127.0.0.1:1883"
    )
    prefix: Annotated[str, Meta(description="topic prefix, the {prefix} of the topics")] = "charger"
    topics: Annotated[ChargerTopics, Meta(description="per-topic overrides")] = msgspec.field(
        default_factory=ChargerTopics
    )
    username: Annotated[str | None, Meta(description="broker user name; null = anonymous")] = None
    password_file: Annotated[
        AbsPath | None, Meta(description="file holding the broker password; a secret")
    ] = None
    tls: Annotated[TlsConfig | None, Meta(description="TLS settings; need an mqtts:// broker_url")] = None

    def __post_init__(self) -> None:
        _enforce(self.rules())

    def rules(self) -> Iterator[_Rule]:
        if problem := _broker_url_problem(self.broker_url, self.tls):
            yield _Rule("broker_url", problem)
        yield from _check_absolute(self, "password_file")
        if self.password_file is not None and self.username is None:
            yield _Rule("password_file", "a password needs a username")
        if problem := _topic_problem(self.prefix):
            yield _Rule("prefix", problem)


class UpstreamConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The backend broker (DESIGN.md §5.3, UP-1…UP-4)."""

    broker_url: Annotated[str, Meta(description="backend broker, mqtts://host:8883 or mqtt://host:1883")]
    prefix: Annotated[str, Meta(description="topic prefix; {station_id} is replaced; UP-1")] = (
        "evpay/v1/{station_id}"
    )
    protocol: Annotated[Literal[5, "3.1.1"], Meta(description='MQTT version: 5 or "3.1.1"')] = 5
    client_id: Annotated[
        Annotated[str, Meta(min_length=1, max_length=64)] | None,
        Meta(description="MQTT client id; null = evpay-agent-{station_id}"),
    ] = None
    username: Annotated[str | None, Meta(description="broker user name; null = none")] = None
    password_file: Annotated[
        AbsPath | None, Meta(description="file holding the broker password; a secret")
    ] = None
    tls: Annotated[TlsConfig | None, Meta(description="TLS settings; need an mqtts:// broker_url; UP-4")] = (
        None
    )
    outbox_max_messages: Annotated[
        int,
        Meta(ge=100, description="outbox bound; when full the oldest meter values go first; DESIGN.md §5.3"),
    ] = 10_000  # DESIGN.md §7: sized for a 10 000-message backlog

    def __post_init__(self) -> None:
        _enforce(self.rules())

    def rules(self) -> Iterator[_Rule]:
        if problem := _broker_url_problem(self.broker_url, self.tls):
            yield _Rule("broker_url", problem)
        yield from _check_absolute(self, "password_file")
        if self.password_file is not None and self.username is None:
            yield _Rule("password_file", "a password needs a username")
        try:
            names = _placeholders(self.prefix)
        except ValueError as exc:
            yield _Rule("prefix", str(exc))
            return
        if unknown := sorted(names - {"station_id"}):
            yield _Rule("prefix", f"unknown placeholder {{{unknown[0]}}} (only {{station_id}})")
        elif problem := _topic_problem(self.prefix):
            yield _Rule("prefix", problem)

    def topic_prefix(self, station_id: str) -> str:
        return self.prefix.format(station_id=station_id)


# ---------------------------------------------------------------------------------------------------
# connectors, session, authorization, receipts
# ---------------------------------------------------------------------------------------------------


class ConnectorEntry(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One connector of the charger."""

    id: Annotated[int, Meta(ge=1, le=255, description="connector number as the charger reports it")]
    max_current_a: Annotated[
        int, Meta(ge=6, le=1000, description="current limit sent with enable; IEC 61851-1 minimum 6 A")
    ]
    label: Annotated[str, Meta(max_length=32, description="name shown to the driver (Apollo UI)")] = ""
    max_energy_wh: Annotated[
        Annotated[int, Meta(ge=1)] | None, Meta(description="stop at this energy; null = none; STOP-6")
    ] = None
    max_duration_s: Annotated[
        Annotated[int, Meta(ge=60)] | None,
        Meta(description="stop after this charging time; null = none; STOP-6"),
    ] = None


# issue 12: a charger runs for years. 400 days outlasts the card schemes' longest chargeback window
# (120 days from the transaction, plus the dispute's own time limits) and a year of monthly
# reconciliation; 31 days is the least that still covers one month's reconciliation report.
DEFAULT_RETENTION_DAYS: Final = 400
MIN_RETENTION_DAYS: Final = 31


class JournalConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The journal's retention rule (docs/runtime.md, "Journal retention")."""

    retention_days: Annotated[
        int,
        Meta(
            ge=MIN_RETENTION_DAYS,
            le=3660,
            description="settled sessions are deleted this many days after they ended; open ones, "
            "possible orphan approvals and undelivered messages never",
        ),
    ] = DEFAULT_RETENTION_DAYS


_DEFAULT_START: Final = (StartMode.TAP, StartMode.PLUG_IN, StartMode.REMOTE)
_DEFAULT_STOP: Final = (StopMode.TAP, StopMode.UNPLUG, StopMode.REMOTE)


class SessionConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Start/stop modes and session timers (DESIGN.md §4.1, §4.2)."""

    start_modes: Annotated[
        tuple[StartMode, ...],
        Meta(min_length=1, description="tap, plug_in, ui (Apollo), remote; START-1…START-4"),
    ] = _DEFAULT_START
    stop_modes: Annotated[
        tuple[StopMode, ...],
        Meta(min_length=1, description="tap, unplug (required), ui (Apollo), remote; STOP-1…STOP-5"),
    ] = _DEFAULT_STOP
    routing: Annotated[
        Routing,
        Meta(description="card for several waiting connectors: earliest_plug_in or ui_selection; §4.2"),
    ] = Routing.EARLIEST_PLUG_IN
    free_vend_when_offline: Annotated[
        OfflinePolicy, Meta(description="terminal offline: refuse or free_vend; ERR-3")
    ] = OfflinePolicy.REFUSE
    plug_in_timeout_s: Annotated[
        int, Meta(ge=30, le=3600, description="authorized but no vehicle plugged in → void; START-6")
    ] = 300  # START-6: default 300 s
    card_decision_s: Annotated[
        int,
        Meta(ge=1, le=30, description="authorize or cancel a read card within; TERM-3, psp-reference §9.2"),
    ] = 25  # §9.2: the terminal drops the card after 30 s; 5 s margin
    final_meter_wait_s: Annotated[
        int, Meta(ge=1, le=300, description="wait for the final meter value after energy off")
    ] = 10
    meter_interval_s: Annotated[
        int, Meta(ge=1, le=3600, description="expected meter period; stop margin at the cap; AMT-2")
    ] = 60
    settlement_retry_s: Annotated[
        tuple[Annotated[int, Meta(ge=1)], ...],
        Meta(min_length=1, description="Commit/Void retry delays; the last repeats; STOP-7"),
    ] = (60, 60, 60, 60, 60, 3600)  # payter-ev-guide §6.4: every minute for 5 attempts, then hourly
    undisposed_alarm_after_s: Annotated[
        int, Meta(ge=60, description="alarm for a payment still not committed or voided; STOP-7")
    ] = 900
    idle_fee_enabled: Annotated[
        bool, Meta(description="commit deferred until unplug, idle fee priced; STOP-9")
    ] = False

    def __post_init__(self) -> None:
        _enforce(self.rules())

    def rules(self) -> Iterator[_Rule]:
        for name in ("start_modes", "stop_modes"):
            modes: tuple[object, ...] = getattr(self, name)
            if (index := _duplicates(modes)) is not None:
                yield _Rule(f"{name}[{index}]", "listed twice")
        if StopMode.UNPLUG not in self.stop_modes:
            yield _Rule("stop_modes", "must include unplug: unplugging always stops a session (STOP-3)")


class AuthorizationConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The pre-authorization amount (AMT-1…AMT-4, DESIGN.md §5.4). Amounts in minor units."""

    strategy: Annotated[
        AuthorizationStrategy,
        Meta(description="fixed, incremental (Apollo), driver_cap (Apollo) or maximum; AMT-1"),
    ] = AuthorizationStrategy.FIXED
    amount_minor: Annotated[
        AmountMinor, Meta(description="fixed amount, or the first amount (incremental)")
    ] = 5000
    increment_minor: Annotated[
        int, Meta(ge=0, le=MAX_AMOUNT_MINOR, description="step per Update Session (incremental); AMT-2")
    ] = 2500
    maximum_minor: Annotated[
        AmountMinor, Meta(description="amount for maximum; ceiling of increments and choices")
    ] = 15000
    driver_cap_choices_minor: Annotated[
        tuple[AmountMinor, ...], Meta(description="caps offered on the Apollo screen (driver_cap)")
    ] = (2000, 5000, 10000)
    headroom_s: Annotated[
        int, Meta(ge=1, description="ask for an increment when the cap is projected within this time")
    ] = 300
    allow_over_capture: Annotated[
        bool, Meta(description="allow Commit above the authorized amount; AMT-4, psp-reference §5.17")
    ] = False

    def __post_init__(self) -> None:
        _enforce(self.rules())

    def rules(self) -> Iterator[_Rule]:
        if self.amount_minor > self.maximum_minor:
            yield _Rule("amount_minor", f"{self.amount_minor} is above maximum_minor {self.maximum_minor}")
        if self.strategy is AuthorizationStrategy.INCREMENTAL and self.increment_minor == 0:
            yield _Rule("increment_minor", "incremental authorization needs a step above 0")
        if self.strategy is AuthorizationStrategy.DRIVER_CAP:
            choices = self.driver_cap_choices_minor
            if not choices:
                yield _Rule("driver_cap_choices_minor", "driver_cap needs at least one choice")
            if (index := _duplicates(tuple(choices))) is not None:
                yield _Rule(f"driver_cap_choices_minor[{index}]", "listed twice")
            for index, choice in enumerate(choices):
                if choice > self.maximum_minor:
                    yield _Rule(
                        f"driver_cap_choices_minor[{index}]",
                        f"{choice} is above maximum_minor {self.maximum_minor}",
                    )

    def to_policy(self) -> AuthorizationPolicy:
        return AuthorizationPolicy(
            strategy=self.strategy,
            amount_minor=self.amount_minor,
            increment_minor=self.increment_minor,
            maximum_minor=self.maximum_minor,
            driver_cap_choices_minor=tuple(self.driver_cap_choices_minor),
            increment_headroom_s=self.headroom_s,
            allow_over_capture=self.allow_over_capture,
        )


class ReceiptsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Receipts (DESIGN.md §5.5, RCPT-2)."""

    qr_url_template: Annotated[
        str | None,
        Meta(
            description="https URL of a receipt, {receipt_id} and {station_id} replaced; null = no QR; RCPT-2"
        ),
    ] = None

    def __post_init__(self) -> None:
        template = self.qr_url_template
        if template is None:
            return
        if not template.startswith(("https://", "http://")):
            raise _Rule("qr_url_template", "must be an http:// or https:// URL")
        try:
            names = _placeholders(template)
        except ValueError as exc:
            raise _Rule("qr_url_template", str(exc)) from None
        if unknown := sorted(names - {"receipt_id", "station_id"}):
            raise _Rule(
                "qr_url_template",
                f"unknown placeholder {{{unknown[0]}}} (use {{receipt_id}}, {{station_id}})",
            )
        if "receipt_id" not in names:
            raise _Rule("qr_url_template", "needs {receipt_id}")


RFID_AUTH_MARGIN_S: Final = 2  # rfid.auth_timeout_s stays this far below session.card_decision_s


class RfidConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """RFID / closed-user-group authorization by the back office (START-5, docs/commands.md)."""

    offline_policy: Annotated[
        RfidOfflinePolicy,
        Meta(
            description="no back-office answer: reject, local_list, local_list_and_cache or accept; START-5"
        ),
    ] = RfidOfflinePolicy.LOCAL_LIST_AND_CACHE
    auth_timeout_s: Annotated[
        float,
        Meta(
            ge=1,
            le=25,
            description="wait this long for auth/response, then the offline policy; below card_decision_s",
        ),
    ] = 5.0
    offline_accept_limit_minor: Annotated[
        Annotated[int, Meta(ge=1, le=MAX_AMOUNT_MINOR)] | None,
        Meta(description="session cap of a card accepted by the accept policy; null = none"),
    ] = None
    cache_ttl_s: Annotated[
        int, Meta(ge=1, description="keep a back-office accept for offline use this long (at most)")
    ] = 604_800
    cache_max_entries: Annotated[
        int, Meta(ge=1, le=100_000, description="cached accepts kept (LRU); memory only")
    ] = 1000


# ---------------------------------------------------------------------------------------------------
# tariff:
# ---------------------------------------------------------------------------------------------------

TARIFF_DESCRIPTION: Final = (
    "the tariff: the simple form (currency, prices, bands…) or an OCPI 2.2.1 Tariff (ocpi or "
    "ocpi_file, with timezone and minor_unit_digits); docs/tariff.md"
)


class OcpiTariffForm(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``tariff:`` as an OCPI 2.2.1 Tariff (docs/tariff.md). Exactly one of ``ocpi`` and
    ``ocpi_file``; :func:`load_config` reads ``ocpi_file`` and puts its content in ``ocpi``, so the
    tariff module sees the OCPI wrapper of :func:`agent.money.tariff.tariff_from_builtins` and
    never a file. The other form, the simple one, is :class:`agent.money.tariff.TariffConfig`."""

    ocpi: Annotated[
        dict[str, Any] | None,
        Meta(description="OCPI form: an OCPI 2.2.1 Tariff object (§Tariffs 4.3.1), inline"),
    ] = None
    ocpi_file: Annotated[
        str | None,
        Meta(
            description="OCPI form: a JSON (.json) or YAML file holding the OCPI Tariff object instead "
            "of ocpi; a relative path is relative to the config file's directory"
        ),
    ] = None
    timezone: Annotated[
        str | None,
        Meta(description="IANA zone the OCPI local-time restrictions are read in; null = UTC"),
    ] = None
    minor_unit_digits: Annotated[
        int, Meta(description="ISO 4217 minor unit of the currency (what is captured is rounded to it)")
    ] = 2


TARIFF_FORMS: Final[tuple[type[msgspec.Struct], ...]] = (TariffConfig, OcpiTariffForm)


# ---------------------------------------------------------------------------------------------------
# the whole file
# ---------------------------------------------------------------------------------------------------


class _Unavailable(Exception):
    """A value a cross-section rule needs did not validate (its own error is reported already)."""


_Get = Callable[..., Any]  # get("session", "start_modes") -> the validated value, or _Unavailable


def _attribute_getter(root: object) -> _Get:
    def get(*path: PathItem) -> Any:
        value: Any = root
        for n, item in enumerate(path):
            if value is None:  # ``tls: null`` has no ``ca_file``: nothing there to check
                raise _Unavailable(format_path(path[:n]))
            value = value[item] if isinstance(item, int) else getattr(value, item)
        return value

    return get


def _station_rules(get: _Get) -> Iterator[_Rule]:
    """The rules across sections of :class:`AgentConfig`, on whatever validated: each rule reads
    its values with ``get`` and is skipped when one of them is :class:`_Unavailable`."""
    with suppress(_Unavailable):
        state_dir: str = get("state_dir")
        if not state_dir.startswith("/"):
            yield _Rule("state_dir", f"must be an absolute path, got {state_dir!r}")
    with suppress(_Unavailable):
        ids = tuple(c.id for c in get("connectors"))
        if (index := _duplicates(ids)) is not None:
            yield _Rule(
                f"connectors[{index}].id",
                f"duplicate connector id {ids[index]} (first at connectors[{ids.index(ids[index])}])",
            )
    apollo = True
    with suppress(_Unavailable):
        apollo = get("terminal", "family") is Family.APOLLO
    if not apollo:  # psp-reference §8: UI Request/Event and Update Session are Apollo-only
        for name in ("start_modes", "stop_modes"):
            with suppress(_Unavailable):
                for index, mode in enumerate(get("session", name)):
                    if mode == "ui":
                        yield _Rule(
                            f"session.{name}[{index}]", "ui needs an Apollo terminal (psp-reference §5.21)"
                        )
        with suppress(_Unavailable):
            if get("session", "routing") is Routing.UI_SELECTION:
                yield _Rule("session.routing", "ui_selection needs an Apollo terminal (psp-reference §5.21)")
        with suppress(_Unavailable):
            strategy = get("authorization", "strategy")
            if strategy is AuthorizationStrategy.INCREMENTAL:
                yield _Rule(
                    "authorization.strategy",
                    "incremental needs Update Session, Apollo only (psp-reference §5.20)",
                )
            if strategy is AuthorizationStrategy.DRIVER_CAP:
                yield _Rule(
                    "authorization.strategy",
                    "driver_cap needs the Apollo selection screen (psp-reference §5.21)",
                )
    with suppress(_Unavailable):
        if get("session", "routing") is Routing.UI_SELECTION and StartMode.UI not in get(
            "session", "start_modes"
        ):
            yield _Rule("session.routing", "ui_selection needs ui among session.start_modes")
    with suppress(_Unavailable):
        limit_s = get("session", "card_decision_s") - RFID_AUTH_MARGIN_S
        if get("rfid", "auth_timeout_s") > limit_s:
            yield _Rule(
                "rfid.auth_timeout_s",
                f"must be at most session.card_decision_s - {RFID_AUTH_MARGIN_S} ({limit_s}): the terminal "
                "drops a card not decided in time (psp-reference §9.2)",
            )
    with suppress(_Unavailable):
        timeout_s = get("terminal", "session_timeout_s")
        for index, connector in enumerate(get("connectors")):
            if connector.max_duration_s is not None and connector.max_duration_s >= timeout_s:
                yield _Rule(
                    f"connectors[{index}].max_duration_s",
                    f"must be below terminal.session_timeout_s ({timeout_s}) (TERM-2)",
                )


class AgentConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The agent's YAML file (DESIGN.md §5.1)."""

    station_id: Annotated[
        str,
        Meta(
            pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
            description="station name in topics and receipts: letters, digits, _ . - (≤ 64)",
        ),
    ]
    state_dir: Annotated[
        AbsPath, Meta(description="journal and outbox directory (systemd StateDirectory)")
    ] = "/var/lib/evpay-agent"
    log_level: Annotated[
        Literal["debug", "info", "warning", "error"], Meta(description="debug, info, warning or error")
    ] = "info"
    terminal: Annotated[TerminalConfig, Meta(description="payment terminal")]
    charger: Annotated[ChargerConfig, Meta(description="charger driver")] = msgspec.field(
        default_factory=ChargerConfig
    )
    connectors: Annotated[tuple[ConnectorEntry, ...], Meta(min_length=1, description="the connectors")]
    session: Annotated[SessionConfig, Meta(description="start/stop modes and timers")] = msgspec.field(
        default_factory=SessionConfig
    )
    authorization: Annotated[AuthorizationConfig, Meta(description="pre-authorization amount")] = (
        msgspec.field(default_factory=AuthorizationConfig)
    )
    # a mapping in one of TARIFF_FORMS (msgspec has no untagged union of Structs): checked by
    # agent.money.tariff.tariff_from_builtins, which names the offending path (parse_config)
    tariff: Annotated[dict[str, Any], Meta(description=TARIFF_DESCRIPTION)]
    upstream: Annotated[UpstreamConfig, Meta(description="backend MQTT broker")]
    receipts: Annotated[ReceiptsConfig, Meta(description="receipts")] = msgspec.field(
        default_factory=ReceiptsConfig
    )
    rfid: Annotated[RfidConfig, Meta(description="RFID / CUG authorization by the back office")] = (
        msgspec.field(default_factory=RfidConfig)
    )
    journal: Annotated[JournalConfig, Meta(description="journal retention")] = msgspec.field(
        default_factory=JournalConfig
    )

    def __post_init__(self) -> None:
        _enforce(self.rules())

    def rules(self) -> Iterator[_Rule]:
        return _station_rules(_attribute_getter(self))

    # -- mappings onto the runtime objects ---------------------------------------------------------

    def to_profile(self) -> Profile:
        """:class:`drivers.psp.profile.Profile` for the terminal (family, quirks, keep-alive)."""
        return self.terminal.to_profile()

    def to_station_config(self) -> StationConfig:
        """:class:`statemachines.config.StationConfig` for the connector machines."""
        session = self.session
        return StationConfig(
            connectors=tuple(
                ConnectorConfig(
                    connector_id=c.id,
                    idle_fee_enabled=session.idle_fee_enabled,
                    max_energy_wh=c.max_energy_wh,
                    max_duration_s=c.max_duration_s,
                )
                for c in self.connectors
            ),
            start_modes=frozenset(session.start_modes),
            stop_modes=frozenset(session.stop_modes),
            terminal=APOLLO_CAPABILITIES if self.terminal.family is Family.APOLLO else P6X_CAPABILITIES,
            authorization=self.authorization.to_policy(),
            offline_policy=session.free_vend_when_offline,
            routing=session.routing,
            plug_in_timeout_s=session.plug_in_timeout_s,
            card_decision_s=session.card_decision_s,
            final_meter_timeout_s=session.final_meter_wait_s,
            meter_interval_s=session.meter_interval_s,
            settlement_retry_s=tuple(session.settlement_retry_s),
            undisposed_alarm_s=session.undisposed_alarm_after_s,
        )

    def to_tariff(self) -> Tariff:
        """:class:`agent.money.tariff.Tariff` (raises ``TariffConfigError``; :func:`load_config` already
        checked it and put the content of an ``ocpi_file`` in ``ocpi``)."""
        return tariff_from_builtins(self.tariff)


# ---------------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------------


@final
class Secret:
    """A secret read from a file. ``repr``/``str`` never show it; :meth:`reveal` does."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class Secrets:
    """Passwords read from the files the config names (UP-4)."""

    charger_password: Secret | None = None
    upstream_password: Secret | None = None


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """A validated config with everything it references checked.

    ``warnings`` are ``FILE:LINE: PATH: warning: …`` texts for questionable but working settings.
    """

    file: str
    config: AgentConfig
    tariff: Tariff
    secrets: Secrets
    warnings: tuple[str, ...] = ()
    placeholders: tuple[str, ...] = ()  # files assumed present (check-config --example)

    def to_profile(self) -> Profile:
        return self.config.to_profile()

    def to_station_config(self) -> StationConfig:
        return self.config.to_station_config()


def parse_config(doc: YamlDocument, *, base_dir: Path | None = None) -> AgentConfig:
    """Validate loaded YAML into an :class:`AgentConfig` and check its tariff. Raises
    :class:`ConfigErrors` with every error found, each located at the offending key.

    No file access beyond what produced ``doc``, except ``tariff.ocpi_file`` when ``base_dir`` (the
    config file's directory) is given: that file is read and its content put in ``tariff.ocpi``.
    Without ``base_dir`` a tariff with an ``ocpi_file`` is checked only as far as its keys go."""
    check = _Check(doc, base_dir=base_dir)
    config = check.schema()
    resolved = check.tariff()
    check.raise_errors()
    assert config is not None  # no errors: every section validated
    if resolved is None:
        return config
    return msgspec.structs.replace(config, tariff=resolved[0])


_OCPI_FILE_KEY: Final = "ocpi_file"
_OCPI_KEY: Final = "ocpi"


@dataclass(frozen=True, slots=True)
class _OcpiSource:
    """The file the content of ``tariff.ocpi`` was read from (``tariff.ocpi_file``)."""

    file: str
    doc: YamlDocument | None  # its keys' lines; None for a JSON file (decoded by ``json``)


def _resolve_ocpi_file(
    doc: YamlDocument, tariff: dict[str, Any], base_dir: Path | None
) -> tuple[dict[str, Any], _OcpiSource | None] | None:
    """``tariff`` with the content of its ``ocpi_file`` as ``ocpi`` (read relative to ``base_dir``)
    and where that came from; ``tariff`` itself when it names no file; ``None`` when it names one
    and ``base_dir`` is ``None``. Raises :class:`ConfigError`."""
    if _OCPI_FILE_KEY not in tariff:
        return tariff, None
    try:
        form = msgspec.convert(tariff, OcpiTariffForm)
    except msgspec.ValidationError as exc:
        raise _from_validation_error(doc, str(exc), prefix=("tariff",)) from None
    key: KeyPath = ("tariff", _OCPI_FILE_KEY)
    if form.ocpi is not None:
        raise doc.error(key, "give either ocpi or ocpi_file, not both")
    if not form.ocpi_file:
        raise doc.error(key, "expected the path of a JSON or YAML file holding an OCPI 2.2.1 Tariff object")
    if base_dir is None:
        return None
    path = Path(form.ocpi_file)
    if not path.is_absolute():
        path = base_dir / path
    source, ocpi = _read_ocpi_file(doc, key, path)
    resolved = {k: v for k, v in tariff.items() if k != _OCPI_FILE_KEY}
    resolved[_OCPI_KEY] = ocpi
    return resolved, source


def _read_ocpi_file(doc: YamlDocument, key: KeyPath, path: Path) -> tuple[_OcpiSource, object]:
    """The decoded content of the OCPI tariff file ``path`` (JSON when it ends in ``.json``, else
    YAML with the config loader's rules). An unreadable or undecodable file is a
    :class:`ConfigError` at ``key`` naming the file; a syntax error names the file's own line."""
    shown = str(path)
    json_file = path.suffix.lower() == ".json"
    try:
        ocpi_doc = None if json_file else read_yaml_file(path, display=shown)
        data = read_json_file(path, display=shown) if ocpi_doc is None else ocpi_doc.data
    except ConfigError as exc:
        if exc.line is None and not (json_file and exc.reason.startswith("duplicate key")):
            reason = exc.reason.removeprefix("cannot read: ")  # cannot read it, too large, not UTF-8 …
            text = f"cannot read {shown}: {reason}" if reason != exc.reason else f"{shown}: {reason}"
            raise doc.error(key, text) from None
        raise
    source = _OcpiSource(shown, ocpi_doc)
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {_yaml_kind(data)}"
        raise doc.error(key, f"{shown}: expected an OCPI 2.2.1 Tariff object (a mapping), got {got}")
    return source, data


def _tariff_error(doc: YamlDocument, source: _OcpiSource | None, exc: TariffConfigError) -> ConfigError:
    """A tariff error at its key: in the config file or, for a path inside an ``ocpi`` read from
    ``ocpi_file``, in that file (at its line when it is YAML)."""
    if source is not None and exc.path[:1] == (_OCPI_KEY,):
        inner = exc.path[1:]
        if source.doc is not None:
            return source.doc.error(inner, exc.message)
        return ConfigError(source.file, exc.message, path=format_path(inner) or None)
    return doc.error(("tariff", *exc.path), exc.message)


def _yaml_kind(value: object) -> str:
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    return type(value).__name__


def _parse_path(text: str) -> list[PathItem]:
    """``connectors[1].max_current_a`` (with or without a leading ``$.``) → path items."""
    items: list[PathItem] = []
    for part in text.removeprefix("$").split("."):
        if not part:
            continue
        name, _, rest = part.partition("[")
        if name:
            items.append(name)
        if rest:
            items.extend(int(index) for index in rest.rstrip("]").split("]["))
    return items


def _from_validation_error(doc: YamlDocument, text: str, *, prefix: KeyPath = ()) -> ConfigError:
    """A msgspec error at its key; ``prefix``: the path of the mapping that was converted."""
    message, sep, where = text.rpartition(" - at `")
    if not sep:
        message, where = text, "$`"
    path = [*prefix, *_parse_path(where.removesuffix("`"))]
    if message.startswith("`") and "`: " in message:  # a _Rule from __post_init__
        rel, _, reason = message[1:].partition("`: ")
        return doc.error((*path, *_parse_path(rel)), reason)
    if message.startswith("Object contains unknown field `"):
        return doc.error((*path, message.split("`")[1]), "unknown key")
    if message.startswith("Object missing required field `"):
        return doc.error((*path, message.split("`")[1]), "missing required key")
    return doc.error(path, message)


def _check_readable(doc: YamlDocument, key: KeyPath, file: str, *, read: bool) -> str | None:
    """Open ``file`` (read it when ``read``); raise ConfigError naming the key, never the content."""
    try:
        with open(file, "rb") as stream:
            data = stream.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise doc.error(key, f"cannot read {file}: {exc.strerror or type(exc).__name__}") from None
    if not data.strip():
        raise doc.error(key, f"{file} is empty")
    if len(data) > MAX_SECRET_BYTES:
        raise doc.error(key, f"{file} is larger than {MAX_SECRET_BYTES} bytes")
    if not read:
        return None
    try:
        return data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise doc.error(key, f"{file} is not UTF-8 text") from None


def _world_readable(file: str) -> bool:
    try:
        return bool(os.stat(file).st_mode & stat.S_IROTH)
    except OSError:
        return False


def _missing(file: str) -> bool:
    try:
        os.stat(file)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return False


def _error_order(main: str) -> Callable[[ConfigError], tuple[bool, str, int]]:
    """Errors of the config file first, by line; then those of a referenced file (an OCPI tariff)."""
    return lambda e: (e.file != main, e.file, e.line or 0)


@final
class ConfigErrors(ConfigError):
    """Every error found in one config file and the files it references, sorted by line, with the
    warnings and hints found on the way. ``str()`` is one ``FILE:LINE: PATH: REASON`` line per
    error; as a :class:`ConfigError` it is located at its first error."""

    def __init__(
        self,
        file: str,
        errors: Iterable[ConfigError],
        *,
        warnings: Iterable[str] = (),
        hints: Iterable[str] = (),
    ) -> None:
        self.errors: tuple[ConfigError, ...] = tuple(sorted(errors, key=_error_order(file)))
        if not self.errors:
            raise ValueError("ConfigErrors needs at least one error")
        first = self.errors[0]
        super().__init__(first.file, first.reason, line=first.line, path=first.path)
        self.warnings: tuple[str, ...] = tuple(warnings)
        self.hints: tuple[str, ...] = tuple(hints)

    def __str__(self) -> str:
        return "\n".join(str(error) for error in self.errors)


_INVALID: Final = object()  # a value that did not validate (its error is recorded)

_SECRET_HINT: Final = (
    "{count} referenced secret or TLS file{s} not exist. Create {them} (readable by the service "
    "user only), or, for a copy of the shipped example whose paths are placeholders, run "
    "`evpay-agent check-config --example FILE`: it checks everything else and lists the lines "
    "marked `# EDIT:` that must be edited before starting"
)


def _unannotated(tp: Any) -> Any:
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return tp


def _is_struct(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


def _struct_type(tp: Any, value: object) -> type[msgspec.Struct] | None:
    """The Struct ``value`` is to be checked as, field by field: ``tp`` itself or, for a mapping,
    the one Struct of a union (``TlsConfig | None``)."""
    tp = _unannotated(tp)
    if _is_struct(tp):
        return tp  # type: ignore[no-any-return]
    if isinstance(value, dict) and get_origin(tp) in (Union, types.UnionType):
        structs = [m for m in map(_unannotated, get_args(tp)) if _is_struct(m)]
        if len(structs) == 1:
            return structs[0]  # type: ignore[no-any-return]
    return None


def _item_struct_type(tp: Any) -> type[msgspec.Struct] | None:
    """``X`` of ``tuple[X, ...]`` when ``X`` is a Struct (``connectors``)."""
    tp = _unannotated(tp)
    args = get_args(tp)
    if get_origin(tp) is tuple and len(args) == 2 and args[1] is Ellipsis:
        item = _unannotated(args[0])
        if _is_struct(item):
            return item  # type: ignore[no-any-return]
    return None


def _field_default(field: msgspec.structs.FieldInfo) -> object:
    if field.default is not msgspec.NODEFAULT:
        return field.default
    return field.default_factory()


class _Check:
    """One run of the checks over a loaded file, collecting every error instead of raising the first.

    1. :meth:`schema`: each Struct is checked key by key (unknown keys, missing keys), each field
       converted on its own against its annotated type (msgspec: types, ranges, patterns), nested
       Structs and lists of Structs recursively; a Struct whose fields all validated is built and
       its own rules (``rules()``) each add their error; the rules across sections
       (:func:`_station_rules`) run on whatever validated.
    2. :meth:`tariff`, :meth:`files`, :meth:`advise`: the tariff (incl. an ``ocpi_file``), the
       secret and TLS files and the warnings, each on the values that validated.

    ``valid`` maps a key path to its validated value (defaults for keys left out); at most one
    error is kept per key path (the first found).
    """

    def __init__(self, doc: YamlDocument, *, base_dir: Path | None, placeholders: bool = False) -> None:
        self.doc = doc
        self.base_dir = base_dir
        self.placeholders = placeholders
        self.errors: list[ConfigError] = []
        self.warnings: list[ConfigError] = []
        self.missing: list[str] = []  # secret / TLS files that do not exist
        self.assumed: list[str] = []  # ... and were assumed present (placeholders)
        self.valid: dict[KeyPath, object] = {}
        self._seen: set[tuple[str, str | None]] = set()
        for error in doc.errors:  # duplicate keys found by the YAML loader
            self.add(error)

    # -- recording ---------------------------------------------------------------------------------

    def add(self, error: ConfigError) -> None:
        where = (error.file, error.path)
        if where not in self._seen:
            self._seen.add(where)
            self.errors.append(error)

    def error_at(self, path: KeyPath, reason: str) -> None:
        self.add(self.doc.error(path, reason))
        for n in range(len(path), -1, -1):  # neither the key nor what holds it is valid
            self.valid.pop(path[:n], None)

    def warn(self, path: KeyPath, reason: str) -> None:
        self.warnings.append(self.doc.error(path, f"warning: {reason}"))

    def raise_errors(self) -> None:
        if self.errors:
            hints = []
            if self.missing and not self.placeholders:
                count = len(self.missing)
                hints.append(
                    _SECRET_HINT.format(
                        count=count, s=" does" if count == 1 else "s do", them="it" if count == 1 else "them"
                    )
                )
            raise ConfigErrors(self.doc.file, self.errors, warnings=self.warning_texts(), hints=hints)

    def warning_texts(self) -> tuple[str, ...]:
        return tuple(str(w) for w in sorted(self.warnings, key=_error_order(self.doc.file)))

    def get(self, *path: PathItem) -> Any:
        """The validated value at ``path``; raises :class:`_Unavailable` when it did not validate."""
        for n in range(len(path), 0, -1):
            if path[:n] in self.valid:
                held = self.valid[path[:n]]
                if held is None and n < len(path):  # tls: null has no ca_file
                    break
                return _attribute_getter(held)(*path[n:])
        raise _Unavailable(format_path(path))

    # -- 1. the schema -----------------------------------------------------------------------------

    def schema(self) -> AgentConfig | None:
        """The config when every section validated (else ``None``, errors recorded)."""
        doc = self.doc
        if not isinstance(doc.data, dict):
            got = "an empty file" if doc.data is None else f"a {_yaml_kind(doc.data)}"
            raise doc.error((), f"expected a mapping of settings, got {got}")
        token = _COLLECTING.set(True)
        try:
            config = self._struct(doc.data, AgentConfig, ())
        finally:
            _COLLECTING.reset(token)
        return config if isinstance(config, AgentConfig) else None

    def _struct(self, value: object, cls: type[msgspec.Struct], path: KeyPath) -> object:
        if not isinstance(value, dict):
            return self._leaf(value, cls, path)
        fields = msgspec.structs.fields(cls)
        known = {field.encode_name for field in fields}
        ok = True
        for key in value:
            if key not in known:
                self.error_at((*path, key), "unknown key")
                ok = False
        kwargs: dict[str, object] = {}
        for field in fields:
            child = (*path, field.encode_name)
            if field.encode_name not in value:
                if field.required:
                    self.error_at(child, "missing required key")
                    ok = False
                else:
                    self.valid[child] = _field_default(field)
                continue
            result = self._value(value[field.encode_name], field.type, child)
            if result is _INVALID:
                ok = False
            else:
                kwargs[field.name] = self.valid[child] = result
        if not ok:
            if cls is AgentConfig:  # the rules across sections, on the sections that validated
                self._rules(_station_rules(self.get), path)
            return _INVALID
        try:
            instance = cls(**kwargs)  # _COLLECTING: rules() is asked below, not in __post_init__
        except _Rule as rule:  # a Struct whose __post_init__ raises its rule itself
            self._rules((rule,), path)
            return _INVALID
        except (ValueError, TypeError) as exc:  # what msgspec would report at the Struct's path
            self.error_at(path, str(exc))
            return _INVALID
        rules: Callable[[], Iterable[_Rule]] | None = getattr(instance, "rules", None)
        if rules is not None and self._rules(rules(), path):
            return _INVALID
        self.valid[path] = instance
        return instance

    def _value(self, value: object, tp: Any, path: KeyPath) -> object:
        if (struct := _struct_type(tp, value)) is not None:
            return self._struct(value, struct, path)
        if (item := _item_struct_type(tp)) is not None and isinstance(value, list):
            items = [self._struct(v, item, (*path, index)) for index, v in enumerate(value)]
            if any(i is _INVALID for i in items):
                return _INVALID
        return self._leaf(value, tp, path)  # for a list of Structs: its own constraints (min_length)

    def _leaf(self, value: object, tp: Any, path: KeyPath) -> object:
        try:
            return msgspec.convert(value, tp)
        except msgspec.ValidationError as exc:
            if path == ("tariff",):  # not a mapping: the tariff module words it better
                try:
                    tariff_from_builtins(value)
                except TariffConfigError as tariff_exc:
                    self.error_at(("tariff", *tariff_exc.path), tariff_exc.message)
                    return _INVALID
            error = _from_validation_error(self.doc, str(exc), prefix=path)
            self.add(error)
            self.valid.pop(path, None)
            return _INVALID

    def _rules(self, rules: Iterable[_Rule], path: KeyPath) -> bool:
        """Record each broken rule at its key; whether there was one."""
        broken = False
        for rule in rules:
            broken = True
            self.error_at((*path, *_parse_path(rule.rel)), rule.reason)
        return broken

    # -- 2. what the values reference ----------------------------------------------------------------

    def tariff(self) -> tuple[dict[str, Any], Tariff] | None:
        """The tariff mapping (an ``ocpi_file`` read into ``ocpi``) and the tariff, when valid;
        ``None`` when not or when an ``ocpi_file`` cannot be read (no ``base_dir``)."""
        doc = self.doc
        try:
            raw: dict[str, Any] = self.get("tariff")
        except _Unavailable:
            return None
        try:
            resolved = _resolve_ocpi_file(doc, raw, self.base_dir)
        except ConfigError as exc:
            self.add(exc)
            return None
        if resolved is None:
            return None
        mapping, source = resolved
        try:
            tariff = tariff_from_builtins(mapping)  # every form's checks (decimals, bands, OCPI fields…)
        except TariffConfigError as exc:
            self.add(_tariff_error(doc, source, exc))
            return None
        try:  # the journal keeps the tariff (issue 10) and refuses anything that looks like a card number
            check_no_pan("tariff", {"tariff": tariff_to_builtins(tariff)})
        except JournalError as exc:
            self.add(doc.error(("tariff",), f"{exc} (the journal refuses to keep it)"))
            return None
        return mapping, tariff

    def _readable(self, key: KeyPath, file: str, *, read: bool) -> str | None:
        """The content (``read``) or ``""`` of a readable ``file``; ``None`` after recording why not."""
        if _missing(file):
            self.missing.append(file)
            if self.placeholders:  # check-config --example: a placeholder path counts as present
                self.assumed.append(file)
                return ""
        try:
            return _check_readable(self.doc, key, file, read=read) or ""
        except ConfigError as exc:
            self.add(exc)
            return None

    def files(self) -> Secrets:
        """Check every referenced secret and TLS file is readable; read the passwords (UP-4)."""

        def secret(key: KeyPath) -> Secret | None:
            try:
                file: str | None = self.get(*key)
            except _Unavailable:
                return None
            if file is None:
                return None
            value = self._readable(key, file, read=True)
            if value is not None and _world_readable(file):
                self.warn(key, f"{file} is readable by everyone; chmod o-r")
            return None if value is None else Secret(value)

        secrets = Secrets(
            charger_password=secret(("charger", "password_file")),
            upstream_password=secret(("upstream", "password_file")),
        )
        for section in ("charger", "upstream"):
            for name in ("ca_file", "cert_file", "key_file"):
                key: KeyPath = (section, "tls", name)
                with suppress(_Unavailable):
                    file: str | None = self.get(*key)
                    readable = file is not None and self._readable(key, file, read=False) is not None
                    if readable and name == "key_file" and file is not None and _world_readable(file):
                        self.warn(key, f"{file} is readable by everyone; chmod o-r")
        with suppress(_Unavailable):
            terminal: TerminalConfig = self.get("terminal")
            url_key: KeyPath = ("terminal", "url")
            terminal_url = urlsplit(terminal.url)
            if terminal_url.scheme == "tls":
                query = {k: v[-1] for k, v in parse_qs(terminal_url.query).items()}
                for option in ("cafile", "certfile", "keyfile"):
                    if option in query:
                        if not query[option].startswith("/"):
                            self.add(self.doc.error(url_key, f"{option} must be an absolute path"))
                        else:
                            self._readable(url_key, query[option], read=False)
        return secrets

    def advise(self) -> None:
        """Warnings: questionable settings that work."""
        with suppress(_Unavailable):
            terminal: TerminalConfig = self.get("terminal")
            if terminal.family is Family.P6X and urlsplit(terminal.url).scheme == "tcp":
                self.warn(
                    ("terminal", "url"),
                    "P6X is serial-only per Payter (psp-reference §1.1); tcp:// works only through a "
                    "serial device server in front of its RS-232 port",
                )
        with suppress(_Unavailable):
            idle_fee = self.get("tariff").get("idle_fee_per_minute", "0")  # the simple form's (STOP-9)
            enabled = self.get("session", "idle_fee_enabled")
            if not enabled and isinstance(idle_fee, str) and idle_fee.strip("0.") != "":
                self.warn(
                    ("tariff", "idle_fee_per_minute"),
                    "the idle fee is never charged while session.idle_fee_enabled is false (STOP-9)",
                )
        with suppress(_Unavailable):
            upstream: UpstreamConfig = self.get("upstream")
            if upstream.tls is None and urlsplit(upstream.broker_url).scheme == "mqtt":
                self.warn(("upstream", "broker_url"), "plain mqtt:// to the backend; use mqtts:// (UP-4)")


def load_config(path: Path | str, *, display: str | None = None, placeholders: bool = False) -> LoadedConfig:
    """Load, validate and check the config file at ``path`` (CFG-1).

    Checks that every referenced secret and TLS file is readable and reads the passwords.
    ``display`` names the file in messages (default: ``path`` as given). Raises
    :class:`ConfigErrors` with every error (``FILE:LINE: PATH: REASON`` each, sorted by line) and
    the warnings, or a single :class:`ConfigError` when the file cannot be read or parsed as YAML;
    never returns a partial config.

    ``placeholders`` (``check-config --example`` only, never ``run``): a secret or TLS file that
    does not exist counts as present (an empty secret); everything else is checked. The files
    assumed are in :attr:`LoadedConfig.placeholders`.
    """
    doc = read_yaml_file(Path(path), display=display, collect=True)  # duplicate keys: doc.errors
    check = _Check(doc, base_dir=Path(path).parent, placeholders=placeholders)
    config = check.schema()
    resolved = check.tariff()
    secrets = check.files()
    check.advise()
    check.raise_errors()
    assert config is not None  # no errors: all of it validated
    assert resolved is not None
    return LoadedConfig(
        file=doc.file,
        config=msgspec.structs.replace(config, tariff=resolved[0]),
        tariff=resolved[1],
        secrets=secrets,
        warnings=check.warning_texts(),
        placeholders=tuple(check.assumed),
    )
