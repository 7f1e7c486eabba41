"""The scenario file format (``hil/scenarios/*.yaml``, docs/hil-rig.md "Scenario files").

A scenario is a YAML mapping: an ``id`` (default: the file name), a ``title``, the requirement ids it
shows, the terminal family it needs, the connectors, agent configuration overrides, cards, and a list
of ``steps``. Each step is a mapping with exactly one key, the step's name, whose value holds its
arguments (a bare value stands for the step's first argument: ``plug: 1``). The files are read with
the agent's strict YAML loader (:mod:`agent.config.yamlload`) and validated with msgspec; an error is
a :class:`ScenarioError` ``FILE:LINE: PATH: REASON`` at the offending key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import Meta

from agent.config.yamlload import KeyPath, YamlDocument, read_yaml_file
from agent.errors import ConfigError

__all__ = [
    "STEP_TYPES",
    "CardSpec",
    "Scenario",
    "ScenarioError",
    "Step",
    "load_scenario",
    "parse_scenario",
]

REQ_ID: Final = r"^(TERM|START|AMT|STOP|ERR|RCPT|REC|UP|CFG|OPS|HIL)-[0-9]{1,2}$"  # requirements.md ids
MAX_WAIT_S: Final = 600.0  # no single wait is longer than ten minutes (an operator prompt included)

Seconds = Annotated[float, Meta(gt=0, le=MAX_WAIT_S)]
ConnectorNo = Annotated[int, Meta(ge=1, le=255)]  # the agent's connector ids (schema.py)
Text = Annotated[str, Meta(min_length=1, max_length=256)]


class ScenarioError(ConfigError):
    """A scenario file that cannot be run: ``FILE:LINE: PATH: REASON``."""


class _Step(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A step; ``line`` is set by the loader (the step's line in its file)."""

    line: int = 0


# --- the charger and the vehicle ----------------------------------------------------------------------


class Plug(_Step, frozen=True, kw_only=True):
    """A vehicle is plugged into ``connector``."""

    connector: ConnectorNo


class Unplug(_Step, frozen=True, kw_only=True):
    connector: ConnectorNo


class Ev(_Step, frozen=True, kw_only=True):
    """The vehicle on ``connector`` draws ``power_w`` (a meter ramp; 0: draws nothing) or pauses /
    resumes (``suspended_ev``). On a rig the vehicle decides its power; a pause is an operator prompt."""

    connector: ConnectorNo
    power_w: Annotated[int, Meta(ge=0, le=1_000_000)] | None = None
    pause: bool | None = None


class ChargerFault(_Step, frozen=True, kw_only=True):
    """The charger reports fault ``code`` on ``connector`` (``clear: true``: the fault clears)."""

    connector: ConnectorNo
    code: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.-]{1,32}$")] = "ground_fault"
    clear: bool = False


class ChargerLink(_Step, frozen=True, kw_only=True):
    """The charger's bridge link: ``lost`` (unclean, its last will) or ``restored``."""

    state: Literal["lost", "restored"]


# --- the driver at the terminal ---------------------------------------------------------------------


class Tap(_Step, frozen=True, kw_only=True):
    """Present card ``card`` (a name from the scenario's or the built-in cards; on a rig, from
    ``rig.yaml``)."""

    card: Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")]


class RemoveCard(_Step, frozen=True, kw_only=True):
    pass


class Press(_Step, frozen=True, kw_only=True):
    """Press a button on the Apollo screen: by ``button`` id, by the ``connector`` it selects, or the
    first whose label contains ``label``."""

    button: Annotated[str, Meta(min_length=1, max_length=64)] | None = None
    connector: ConnectorNo | None = None
    label: Annotated[str, Meta(min_length=1, max_length=64)] | None = None
    within: Seconds = 10.0

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.button, self.connector, self.label)) != 1:
            raise ValueError("give exactly one of button, connector, label")


# --- faults -----------------------------------------------------------------------------------------


class TerminalFault(_Step, frozen=True, kw_only=True):
    """Fault injection in the terminal (simulator only): ``drop``/``corrupt`` the next ``count``
    frames (``only`` a request name), ``split`` them in ``chunk``-byte pieces, ``delay`` them by
    ``seconds``, answer ``not_ready`` ``count`` Synchronizes, go ``silent`` (``on: false`` ends it)."""

    kind: Literal["drop", "corrupt", "split", "delay", "not_ready", "silent", "clear"]
    count: Annotated[int, Meta(ge=1, le=1000)] = 1
    only: Annotated[str, Meta(pattern=r"^[A-Za-z_]{1,40}$")] | None = None  # e.g. GetStatus (the class)
    seconds: Annotated[float, Meta(gt=0, le=120)] | None = None
    chunk: Annotated[int, Meta(ge=1, le=64)] | None = None
    on: bool = True


class TerminalLink(_Step, frozen=True, kw_only=True):
    """The terminal's link (TCP through the runner's relay): ``down`` drops it and refuses
    reconnection, ``up`` lets the agent reconnect."""

    state: Literal["down", "up"]


class TerminalReboot(_Step, frozen=True, kw_only=True):
    """The terminal reboots; ``sessions: keep`` (its approvals survive) or ``lose``."""

    sessions: Literal["keep", "lose"] = "keep"


class Broker(_Step, frozen=True, kw_only=True):
    """The upstream broker becomes unreachable (``down``) or reachable again (``up``)."""

    state: Literal["down", "up"]


class Agent(_Step, frozen=True, kw_only=True):
    """``kill`` (SIGKILL: a crash or power loss), ``start`` it again, ``restart`` (kill and start),
    or ``stop`` (SIGTERM, a graceful stop that must exit 0). ``crash_at``: a crash point for the
    next start (``agent/crashpoints.py``), the agent then dies there by itself."""

    action: Literal["kill", "start", "restart", "stop"]
    # a crash point: ``journal:payment_approved``, ``psp_sent:CommitSession``, ``journal:meter#8``
    crash_at: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.:#-]{1,64}$")] | None = None


# --- the back office --------------------------------------------------------------------------------


class Command(_Step, frozen=True, kw_only=True):
    """Publish back-office command ``name`` (docs/commands.md) with ``args`` and wait for its result;
    ``expect`` its status (and ``code``)."""

    name: Annotated[str, Meta(pattern=r"^[a-z_]{1,32}$")]
    args: dict[str, Any] = msgspec.field(default_factory=dict)
    expect: Literal["accepted", "rejected", "error"] = "accepted"
    code: Annotated[str, Meta(pattern=r"^[a-z_]{1,40}$")] | None = None
    within: Seconds = 10.0


class AuthResponse(_Step, frozen=True, kw_only=True):
    """Wait for the agent's next RFID authorization request and answer it (docs/commands.md)."""

    status: Literal["accepted", "rejected", "blocked", "expired", "no_credit", "none"]
    limit_minor: Annotated[int, Meta(ge=0)] | None = None
    within: Seconds = 10.0


# --- waits and expectations -------------------------------------------------------------------------


class Sleep(_Step, frozen=True, kw_only=True):
    seconds: Annotated[float, Meta(ge=0, le=MAX_WAIT_S)]


class WaitConnector(_Step, frozen=True, kw_only=True):
    """The agent's connector is in one of ``state`` (from its log: what it has processed)."""

    connector: ConnectorNo
    state: list[Annotated[str, Meta(pattern=r"^[a-z_]{1,32}$")]]
    within: Seconds = 10.0


class WaitEnergy(_Step, frozen=True, kw_only=True):
    """At least ``wh`` more energy has been delivered on ``connector`` (the charger's register)."""

    connector: ConnectorNo
    wh: Annotated[int, Meta(ge=1)]
    within: Seconds = 20.0


class WaitTerminal(_Step, frozen=True, kw_only=True):
    """The terminal's PSP state is one of ``state`` (the simulator's; on a rig: the agent's
    retained ``terminal`` state)."""

    state: list[Annotated[str, Meta(pattern=r"^[A-Z_]{1,32}$")]]
    within: Seconds = 10.0


class WaitScreen(_Step, frozen=True, kw_only=True):
    """A visible Apollo screen whose text contains ``contains`` — a UI screen or, during a card read,
    the payment screen (amount, reference strings, QR code; psp-reference §3.3) — (on a rig the
    operator confirms)."""

    contains: Annotated[str, Meta(min_length=1, max_length=128)]
    within: Seconds = 10.0


class Match(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Upstream messages on ``topic`` (relative to the station prefix, ``+`` matches one level) whose
    payload contains ``fields``; the value ``tariff`` of ``amount_minor``/``cost_minor`` stands for the
    tariff applied to the message's ``energy_wh``; a dotted key (``totals.payments``) looks into
    nested objects, a number in it picks a list item (``lines.0.kind``); a value ``{re: PATTERN}``
    matches a string field that contains the regular expression."""

    topic: Annotated[str, Meta(pattern=r"^[a-z0-9_+/{}.]{1,64}$")]
    fields: dict[str, Any] = msgspec.field(default_factory=dict)


class WaitMessage(_Step, frozen=True, kw_only=True):
    """At least ``count`` upstream messages matching ``topic``/``fields`` (already or to come)."""

    topic: Annotated[str, Meta(pattern=r"^[a-z0-9_+/{}.]{1,64}$")]
    fields: dict[str, Any] = msgspec.field(default_factory=dict)
    count: Annotated[int, Meta(ge=1, le=1000)] = 1
    within: Seconds = 10.0


class ExpectMessages(_Step, frozen=True, kw_only=True):
    """Exactly ``count`` upstream messages match ``topic``/``fields`` now (0: none)."""

    topic: Annotated[str, Meta(pattern=r"^[a-z0-9_+/{}.]{1,64}$")]
    fields: dict[str, Any] = msgspec.field(default_factory=dict)
    count: Annotated[int, Meta(ge=0, le=1000)]


class WaitSettled(_Step, frozen=True, kw_only=True):
    """No open payment in the journal (and none approved on the simulated terminal)."""

    within: Seconds = 20.0


class ExpectTerminal(_Step, frozen=True, kw_only=True):
    """The terminal's sessions table (simulator only): how many sessions end in each status
    (``committed``, ``voided``, ``approved``, ``declined`` …); exactly these, nothing else."""

    sessions: dict[Annotated[str, Meta(pattern=r"^[a-z_]{1,32}$")], Annotated[int, Meta(ge=0)]]


class WaitReceived(_Step, frozen=True, kw_only=True):
    """The simulated terminal has received the requests ``sequence`` in this order (others may come
    between; ``drivers.psp.messages`` class names: ``Synchronize``, ``Setup``, ``GetStatus`` …);
    ``new: true`` counts only requests received after the step began (simulator only); ``without``:
    none of these requests may come (after the step began, if ``new``) before the sequence is complete."""

    sequence: Annotated[list[Annotated[str, Meta(pattern=r"^[A-Za-z]{1,40}$")]], Meta(min_length=1)]
    new: bool = False
    without: list[Annotated[str, Meta(pattern=r"^[A-Za-z]{1,40}$")]] = msgspec.field(default_factory=list)
    within: Seconds = 10.0


class ExpectTerminalStatus(_Step, frozen=True, kw_only=True):
    """The simulated terminal's status (its ``state`` control command: ``state``,
    ``session_timeout_s``, ``timeout_action``, ``open_sessions`` …) has ``fields`` (simulator only)."""

    fields: Annotated[dict[str, Any], Meta(min_length=1)]


class ExpectJournal(_Step, frozen=True, kw_only=True):
    """The journal's payments (``evpay-agent sessions --json``): how many per disposal (``commit``,
    ``void``, ``none`` for a payment with none) and per method."""

    disposals: dict[Annotated[str, Meta(pattern=r"^[a-z_]{1,32}$")], Annotated[int, Meta(ge=0)]] = (
        msgspec.field(default_factory=dict)
    )
    methods: dict[Annotated[str, Meta(pattern=r"^[a-z_]{1,32}$")], Annotated[int, Meta(ge=0)]] = (
        msgspec.field(default_factory=dict)
    )


class ExpectCharger(_Step, frozen=True, kw_only=True):
    """The charger (simulator only): energy enabled on ``connector`` or not."""

    connector: ConnectorNo
    enabled: bool


class ExpectScreenShown(_Step, frozen=True, kw_only=True):
    """A screen containing ``contains`` was sent to the terminal during the run (simulator only)."""

    contains: Annotated[str, Meta(min_length=1, max_length=128)]


class ExpectLog(_Step, frozen=True, kw_only=True):
    """The agent's log contains ``contains`` (``absent: true``: does not)."""

    contains: Annotated[str, Meta(min_length=1, max_length=200)]
    absent: bool = False


class Note(_Step, frozen=True, kw_only=True):
    """A line in the report (and on the operator's console on a rig)."""

    text: Text


Step = (
    Plug
    | Unplug
    | Ev
    | ChargerFault
    | ChargerLink
    | Tap
    | RemoveCard
    | Press
    | TerminalFault
    | TerminalLink
    | TerminalReboot
    | Broker
    | Agent
    | Command
    | AuthResponse
    | Sleep
    | WaitConnector
    | WaitEnergy
    | WaitTerminal
    | WaitScreen
    | WaitMessage
    | ExpectMessages
    | WaitSettled
    | ExpectTerminal
    | WaitReceived
    | ExpectTerminalStatus
    | ExpectJournal
    | ExpectCharger
    | ExpectScreenShown
    | ExpectLog
    | Note
)

# step name → (type, the argument a bare value stands for)
STEP_TYPES: Final[Mapping[str, tuple[type[_Step], str | None]]] = {
    "plug": (Plug, "connector"),
    "unplug": (Unplug, "connector"),
    "ev": (Ev, None),
    "charger_fault": (ChargerFault, None),
    "charger_link": (ChargerLink, "state"),
    "tap": (Tap, "card"),
    "remove_card": (RemoveCard, None),
    "press": (Press, "button"),
    "terminal_fault": (TerminalFault, "kind"),
    "terminal_link": (TerminalLink, "state"),
    "terminal_reboot": (TerminalReboot, "sessions"),
    "broker": (Broker, "state"),
    "agent": (Agent, "action"),
    "command": (Command, "name"),
    "auth_response": (AuthResponse, "status"),
    "sleep": (Sleep, "seconds"),
    "wait_connector": (WaitConnector, None),
    "wait_energy": (WaitEnergy, None),
    "wait_terminal": (WaitTerminal, "state"),
    "wait_screen": (WaitScreen, "contains"),
    "wait_message": (WaitMessage, None),
    "expect_messages": (ExpectMessages, None),
    "wait_settled": (WaitSettled, None),
    "expect_terminal": (ExpectTerminal, "sessions"),
    "wait_received": (WaitReceived, "sequence"),
    "expect_terminal_status": (ExpectTerminalStatus, "fields"),
    "expect_journal": (ExpectJournal, None),
    "expect_charger": (ExpectCharger, None),
    "expect_screen_shown": (ExpectScreenShown, "contains"),
    "expect_log": (ExpectLog, "contains"),
    "note": (Note, "text"),
}
STEP_NAMES: Final = {t: name for name, (t, _) in STEP_TYPES.items()}


class CardSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A simulated card (``cards:`` of a scenario; the built-in ones are in :mod:`hil.scenario.cards`).

    On a rig the card comes from ``rig.yaml`` by name and these behaviours are the physical card's.
    """

    kind: Literal["emv", "rfid"] = "emv"
    brand: Annotated[str, Meta(pattern=r"^[A-Z]{2,16}$")] = "VISA"
    number: Annotated[int, Meta(ge=1, le=9999)] = 1  # the masked PAN's last digits and the card hash
    uid: Annotated[str, Meta(pattern=r"^(?:[0-9A-Fa-f]{2}){4,10}$")] | None = None
    decline: Annotated[str, Meta(pattern=r"^[A-Z_]{2,40}$")] | None = None
    partial_minor: Annotated[int, Meta(ge=1)] | None = None
    limit_minor: Annotated[int, Meta(ge=1)] | None = None
    pin_delay_s: Annotated[float, Meta(gt=0, le=60)] | None = None
    update: Annotated[str, Meta(pattern=r"^(approve|partial:[0-9]+|decline:[A-Z_]+)$")] | None = None
    description: Text | None = None


class Scenario(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    id: Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9-]{0,63}$")] = ""
    title: Text
    requirements: Annotated[list[Annotated[str, Meta(pattern=REQ_ID)]], Meta(min_length=1)]
    family: Literal["apollo", "p6x", "any"] = "any"
    transport: Literal["tcp", "pty"] = "tcp"  # simulation only; a rig has its own
    connectors: Annotated[int, Meta(ge=1, le=8)] = 1
    config: dict[str, Any] = msgspec.field(default_factory=dict)  # merged into the agent's config
    psp_args: list[Annotated[str, Meta(max_length=64)]] = msgspec.field(default_factory=list)  # simulator
    cards: dict[Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")], CardSpec] = msgspec.field(
        default_factory=dict
    )
    power_w: Annotated[int, Meta(ge=0, le=1_000_000)] = (
        360_000  # the vehicle's draw unless an ``ev`` step says
    )
    timeout_s: Annotated[float, Meta(gt=0, le=3600)] = 120.0
    steps: Annotated[list[Any], Meta(min_length=1)]
    file: str = ""

    @property
    def parsed_steps(self) -> list[_Step]:
        return [s for s in self.steps if isinstance(s, _Step)]


_VALIDATION = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<where>[^`]*)`)?$", re.S)


def _path_items(where: str) -> list[str | int]:
    items: list[str | int] = []
    for part in where.split("."):
        if not part:
            continue
        name, _, rest = part.partition("[")
        if name:
            items.append(name)
        if rest:
            items.extend(int(index) for index in rest.rstrip("]").split("]["))
    return items


def _error(doc: YamlDocument, base: KeyPath, exc: Exception) -> ScenarioError:
    """A msgspec error (``message - at `$.path` ``) or a ``__post_init__`` ValueError, at its key."""
    found = _VALIDATION.match(str(exc))
    assert found is not None
    message = found["message"]
    path = [*base, *_path_items(found["where"] or "")]
    if message.startswith("Object contains unknown field `"):
        path.append(message.split("`")[1])
        message = "unknown key"
    elif message.startswith("Object missing required field `"):
        path.append(message.split("`")[1])
        message = "missing required key"
    err = doc.error(path, message)
    return ScenarioError(err.file, err.reason, line=err.line, path=err.path)


def _step(doc: YamlDocument, index: int, raw: object) -> _Step:
    base: KeyPath = ("steps", index)
    if isinstance(raw, str):  # a step without arguments: ``- wait_settled``
        raw = {raw: None}
    if not isinstance(raw, dict) or len(raw) != 1:
        raise _located(doc, base, "a step is a mapping with exactly one key, the step's name")
    ((name, value),) = raw.items()
    if name not in STEP_TYPES:
        known = ", ".join(sorted(STEP_TYPES))
        raise _located(doc, (*base, name), f"unknown step {name!r} (known: {known})")
    step_type, bare = STEP_TYPES[name]
    if value is None:
        value = {}
    if not isinstance(value, dict):
        if bare is None:
            raise _located(doc, (*base, name), f"{name} takes a mapping of arguments")
        value = {bare: value}
    line = doc.line_of((*base, name))
    try:
        return msgspec.convert({**value, "line": line}, step_type)
    except (msgspec.ValidationError, ValueError) as exc:
        raise _error(doc, (*base, name), exc) from None


def _located(doc: YamlDocument, path: KeyPath, reason: str) -> ScenarioError:
    err = doc.error(path, reason)
    return ScenarioError(err.file, err.reason, line=err.line, path=err.path)


def parse_scenario(doc: YamlDocument, *, default_id: str) -> Scenario:
    if not isinstance(doc.data, dict):
        raise _located(doc, (), "a scenario is a mapping (title, requirements, steps …)")
    try:
        scenario = msgspec.convert(doc.data, Scenario)
    except (msgspec.ValidationError, ValueError) as exc:
        raise _error(doc, (), exc) from None
    steps = [_step(doc, i, raw) for i, raw in enumerate(scenario.steps)]
    for i, step in enumerate(steps):
        for connector in _connectors_of(step):
            if connector > scenario.connectors:
                raise _located(
                    doc, ("steps", i), f"connector {connector} but the scenario has {scenario.connectors}"
                )
    return msgspec.structs.replace(scenario, id=scenario.id or default_id, steps=list(steps), file=doc.file)


def _connectors_of(step: _Step) -> list[int]:
    value = getattr(step, "connector", None)
    return [value] if isinstance(value, int) else []


def load_scenario(path: Path) -> Scenario:
    """Read and validate one scenario file; raises :class:`ScenarioError`."""
    try:
        doc = read_yaml_file(path, display=str(path))
    except ConfigError as exc:
        raise ScenarioError(exc.file, exc.reason, line=exc.line, path=exc.path) from None
    return parse_scenario(doc, default_id=path.stem)


def step_name(step: _Step) -> str:
    return STEP_NAMES[type(step)]
