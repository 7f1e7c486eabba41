"""Apollo screens (UI Request, psp-reference §5.21): pure builders used by the runtime's terminal actor.

Two presentations:

* **Home screen** (``ui`` among the start or stop modes, START-3 / STOP-4 / START-8): an idle
  ``selection`` screen listing every connector, the tariff in the title. A free connector is an
  item ``start.<id>`` (with the ``driver_cap`` strategy one item ``start.<id>.<cap_minor>`` per cap
  choice), a connector whose session can be stopped from the UI is ``stop.<id>``; any other
  connector (unavailable, faulted, busy) is a ``disabled`` item saying why. The button ids are the
  ones :func:`agent.runtime.shell.parse_ui_button` maps to ``UiSelection`` (docs/state-machines.md),
  written with ``_`` on the wire (``items.start_2``, see :func:`button_id`).
  Engine messages are short notifications / dialogs shown for :data:`MESSAGE_HOLD_S`, then the home
  screen comes back; messages the home screen already says (tariff, charging) just refresh it.
* **Notifications only** (plug-in / tap deployments on Apollo): every ``ShowMessage`` becomes a
  ``notification`` (title + "Connector N"), as before.

No card data is ever put on a screen (``ShowMessage`` data carries none; only amounts and
connector ids are rendered).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from statemachines.authorization import AuthorizationStrategy
from statemachines.config import StartMode, StationConfig, StopMode
from statemachines.connector import ConnectorMachineState
from statemachines.effects import MessageKey, ShowMessage
from statemachines.terminal import ConnectorView

Screen = tuple[str, dict[str, str]]  # (UI type, properties in order)

MESSAGE_HOLD_S: Final = 3.0  # a message stays this long before the home screen returns


@dataclass(frozen=True, slots=True)
class HomeScreen:
    """Runtime-internal: render the home screen now (coalesced)."""


@dataclass(frozen=True, slots=True)
class PrebuiltScreen:
    """Runtime-internal: a screen built elsewhere, e.g. the Apollo final receipt screen (RCPT-2,
    :func:`agent.money.receipts.apollo_final_screen`)."""

    connector_id: int | None
    screen_type: str
    properties: Mapping[str, str]
    kind: str = "final"  # for the one-WARNING-per-kind rule when a screen cannot be shown


@dataclass(frozen=True, slots=True)
class OperatorMessage:
    """Runtime-internal: a ``display_message`` command's text (docs/commands.md)."""

    connector_id: int | None
    title: str
    message: str = ""
    duration_s: int = 30


ScreenRequest = ShowMessage | HomeScreen | PrebuiltScreen | OperatorMessage

# ShowMessage keys → text (a seam: texts/localisation come with receipts)
MESSAGE_TEXT: Final[Mapping[MessageKey, str]] = {
    MessageKey.TARIFF: "Tap your card to start",
    MessageKey.PLUG_IN: "Please plug in your vehicle",
    MessageKey.CHARGING: "Charging",
    MessageKey.DECLINED: "Card declined",
    MessageKey.SESSION_ENDED: "Session ended. Thank you",
    MessageKey.TERMINAL_OFFLINE: "Payment unavailable",
    MessageKey.IDLE_FEE: "Charging finished: please unplug",
    MessageKey.SELECT_CONNECTOR: "Select a connector",
    MessageKey.SELECTION_TIMEOUT: "No connector selected",
    MessageKey.CONNECTOR_UNAVAILABLE: "Connector unavailable",
    MessageKey.NO_SESSION: "No session on this connector",
    MessageKey.TERMINAL_BUSY: "Terminal busy, try again",
    MessageKey.RFID_ACCEPTED: "Card accepted",
    MessageKey.RFID_REJECTED: "Card not accepted",
    MessageKey.CARD_MISMATCH: "Use the card that started this session",
    MessageKey.CARD_IN_USE: "This card is already charging",
    MessageKey.PLUG_IN_FIRST: "Please plug in your vehicle first",
    MessageKey.CARD_NOT_ACCEPTED: "Card not accepted",
}
_ERROR_KEYS: Final = frozenset(
    {
        MessageKey.DECLINED,
        MessageKey.TERMINAL_OFFLINE,
        MessageKey.SELECTION_TIMEOUT,
        MessageKey.CONNECTOR_UNAVAILABLE,
        MessageKey.NO_SESSION,
        MessageKey.TERMINAL_BUSY,
        MessageKey.RFID_REJECTED,
        MessageKey.CARD_MISMATCH,
        MessageKey.CARD_IN_USE,
        MessageKey.PLUG_IN_FIRST,
        MessageKey.CARD_NOT_ACCEPTED,
    }
)
_OK_KEYS: Final = frozenset({MessageKey.RFID_ACCEPTED, MessageKey.SESSION_ENDED})
# the home screen says these itself
_HOME_STATUS_KEYS: Final = frozenset({MessageKey.TARIFF, MessageKey.CHARGING})

S = ConnectorMachineState
FREE_STATES: Final = frozenset({S.AVAILABLE, S.AWAITING_CARD})
STOPPABLE_STATES: Final = frozenset(
    {S.AWAITING_PLUG, S.CHARGING, S.SUSPENDED_EV, S.SUSPENDED_EVSE, S.IDLE_FEE}
)
_BUSY_TEXT: Final[Mapping[ConnectorMachineState, str]] = {
    S.AUTHORIZING: "Payment in progress",
    S.AWAITING_PLUG: "Waiting for the vehicle",
    S.CHARGING: "Charging",
    S.SUSPENDED_EV: "Charging (paused)",
    S.SUSPENDED_EVSE: "Charging (paused)",
    S.STOPPING: "Stopping",
    S.IDLE_FEE: "Finished, please unplug",
    S.SETTLING: "Stopping",
    S.FINISHING: "Finished, please unplug",
}


class _PricerText(Protocol):
    def describe(self) -> str: ...


def format_minor(amount_minor: int, digits: int) -> str:
    """``1234, 2`` → ``"12.34"`` (minor units as a decimal string)."""
    sign, value = ("-", -amount_minor) if amount_minor < 0 else ("", amount_minor)
    if digits <= 0:
        return f"{sign}{value}"
    whole, frac = divmod(value, 10**digits)
    return f"{sign}{whole}.{frac:0{digits}d}"


@dataclass(frozen=True, slots=True)
class ScreenSettings:
    """What the screens show besides the connector states (from the config and the tariff)."""

    connector_ids: tuple[int, ...] = (1,)
    labels: Mapping[int, str] = field(default_factory=dict)
    tariff_text: str = ""
    currency: str = ""
    minor_unit_digits: int = 2
    ui_start: bool = False
    ui_stop: bool = False
    cap_choices_minor: tuple[int, ...] = ()  # the driver_cap strategy's choices, else empty

    @classmethod
    def from_station(
        cls, config: StationConfig, pricer: object, labels: Mapping[int, str] | None = None
    ) -> ScreenSettings:
        describe = getattr(pricer, "describe", None)
        policy = config.authorization
        ui = config.terminal.supports_ui
        return cls(
            connector_ids=config.connector_ids,
            labels=dict(labels or {}),
            tariff_text=str(describe()) if callable(describe) else "",
            currency=str(getattr(pricer, "currency", "") or ""),
            minor_unit_digits=int(getattr(pricer, "minor_unit_digits", 2)),
            ui_start=ui and StartMode.UI in config.start_modes,
            ui_stop=ui and StopMode.UI in config.stop_modes,
            cap_choices_minor=policy.driver_cap_choices_minor
            if policy.strategy is AuthorizationStrategy.DRIVER_CAP
            else (),
        )

    @property
    def home_enabled(self) -> bool:
        """A home screen is kept up: UI start or UI stop is configured (Apollo)."""
        return self.ui_start or self.ui_stop

    def label(self, connector_id: int | None) -> str:
        if connector_id is None:
            return ""
        return self.labels.get(connector_id) or f"Connector {connector_id}"

    def money(self, amount_minor: int) -> str:
        return f"{format_minor(amount_minor, self.minor_unit_digits)} {self.currency}".strip()


def button_id(action: str, connector_id: int, cap_minor: int | None = None) -> str:
    """The wire id of a UI button / selection item: ``start_2``, ``start_2_5000``, ``stop_1``.

    The engine's ids are ``start.<connector>[.<cap_minor>]`` / ``stop.<connector>``
    (docs/state-machines.md); on the terminal the parts are joined with ``_`` because the UI Request
    keys are flattened JSON paths (``items.<id>.label``, psp-reference §5.21) where a ``.`` inside
    the id would read as nesting. :func:`agent.runtime.shell.parse_ui_button` accepts both forms.
    """
    parts = [action, str(connector_id)] + ([str(cap_minor)] if cap_minor is not None else [])
    return "_".join(parts)


def home_signature(views: Sequence[ConnectorView], read_in_progress: bool) -> tuple[object, ...]:
    """What the home screen depends on; a change (or the end of a payment flow) re-renders it."""
    return (
        read_in_progress,
        *((v.connector_id, v.state, v.operative, v.card_token is not None) for v in views),
    )


def home_screen(settings: ScreenSettings, views: Sequence[ConnectorView]) -> Screen:
    """The idle ``selection`` screen: one item per connector (per cap choice), tariff in the title."""
    title = "Select a connector"
    if settings.tariff_text:
        title = f"{title} - {settings.tariff_text}"
    props: dict[str, str] = {"title": title}
    by_id = {v.connector_id: v for v in views}
    for cid in settings.connector_ids:
        view = by_id.get(cid)
        label = settings.label(cid)
        if view is None or not view.operative or view.state is ConnectorMachineState.UNAVAILABLE:
            _item(props, button_id("start", cid), f"{label} - Unavailable", disabled=True)
        elif view.state in FREE_STATES:
            if not settings.ui_start:
                _item(props, button_id("start", cid), f"{label} - Plug in and tap your card", disabled=True)
            elif settings.cap_choices_minor:
                for cap in settings.cap_choices_minor:
                    item = _item(
                        props, button_id("start", cid, cap), f"{label} - Start, max {settings.money(cap)}"
                    )
                    props[f"{item}.amount"] = format_minor(cap, settings.minor_unit_digits)
                    if settings.currency:
                        props[f"{item}.currency"] = settings.currency
            else:
                _item(props, button_id("start", cid), f"{label} - Start")
        elif view.card_token is not None and view.state in STOPPABLE_STATES and settings.ui_stop:
            _item(props, button_id("stop", cid), f"{label} - {_BUSY_TEXT[view.state]}: Stop")
        else:
            _item(
                props,
                button_id("start", cid),
                f"{label} - {_BUSY_TEXT.get(view.state, 'Busy')}",
                disabled=True,
            )
    return "selection", props


def _item(props: dict[str, str], item_id: str, label: str, *, disabled: bool = False) -> str:
    key = f"items.{item_id}"
    props[key] = ""
    props[f"{key}.label"] = label
    if disabled:
        props[f"{key}.disabled"] = "true"
    return key


def message_screen(settings: ScreenSettings, message: ShowMessage) -> Screen | None:
    """The screen for an engine message with the home screen in use; ``None``: the home screen
    itself says it (refresh it instead)."""
    key, cid = message.key, message.connector_id
    if key in _HOME_STATUS_KEYS:
        return None
    if key is MessageKey.SELECT_CONNECTOR:  # a held card (routing ui_selection): which connector?
        props = {"title": MESSAGE_TEXT[key]}
        for choice in message.connectors:
            props[f"buttons.{button_id('start', choice)}"] = ""
            props[f"buttons.{button_id('start', choice)}.label"] = settings.label(choice)
        return "dialog", props
    props = {"title": MESSAGE_TEXT[key]}
    if cid is not None:
        props["subtitle"] = settings.label(cid)
    if key is MessageKey.SESSION_ENDED and message.amount_minor is not None:
        props["message"] = f"Charged {settings.money(message.amount_minor)}"
    if key is MessageKey.PLUG_IN:
        props["advice"] = "Then charging starts"
    if key in _ERROR_KEYS:
        props.update(icon="declined", color="2")
    elif key in _OK_KEYS:
        props.update(icon="approved", color="1")
    return "notification", props


def operator_screen(settings: ScreenSettings, message: OperatorMessage) -> Screen:
    """A ``display_message`` command's text as a notification."""
    props = {"title": message.title}
    if message.connector_id is not None:
        props["subtitle"] = settings.label(message.connector_id)
    if message.message:
        props["message"] = message.message
    return "notification", props


def notification(settings: ScreenSettings, message: ShowMessage) -> Screen:
    """Notifications-only deployments: the message as a ``notification`` (title + connector); the
    tariff message also carries the prices (START-8)."""
    props = {"title": MESSAGE_TEXT[message.key]}
    if message.connector_id is not None:
        props["subtitle"] = f"Connector {message.connector_id}"
    if message.key is MessageKey.TARIFF and settings.tariff_text:
        props["message"] = settings.tariff_text
    if message.key is MessageKey.SESSION_ENDED and message.amount_minor is not None:
        props["message"] = f"Charged {settings.money(message.amount_minor)}"
    return "notification", props


# --- the payment screen (Start Session, psp-reference §5.9) ---------------------------------------

REFERENCE_STRING_BYTES: Final = 0x40 - 1  # §5.9: a reference string is ≤ 0x40 bytes with its NUL
_PART_SEPARATOR: Final = " · "  # between the parts of the tariff text (Tariff.describe)


def payment_screen_texts(settings: ScreenSettings) -> tuple[str, str] | None:
    """START-8 while the terminal waits for a card: the price on the payment screen itself.

    During a card read the payment flow owns the Apollo display and every UI screen stays hidden
    (psp-reference §3.3), so a tariff notification sent before the read is never seen. The Start
    Session's *session reference string* and *second reference string* (§5.9, 63 bytes of text
    each) are shown on that payment screen: the tariff text goes there, its parts (``0.39 EUR/kWh``,
    ``idle 0.20 EUR/min after 15 min`` …) packed into the two lines in order, a part that does not
    fit shortened with ``…``. ``None`` when there is no tariff text."""
    if not settings.tariff_text:
        return None
    parts = settings.tariff_text.split(_PART_SEPARATOR)
    lines = ["", ""]
    taken = 0
    for n in range(2):
        while taken < len(parts):
            joined = f"{lines[n]}{_PART_SEPARATOR}{parts[taken]}" if lines[n] else parts[taken]
            if _utf8_len(joined) <= REFERENCE_STRING_BYTES:
                lines[n], taken = joined, taken + 1
            elif not lines[n]:  # one part longer than a line
                lines[n], taken = _shorten(parts[taken], REFERENCE_STRING_BYTES), taken + 1
            else:
                break
    if taken < len(parts):  # more prices than two lines hold: say so
        lines[1] = _with_ellipsis(lines[1], REFERENCE_STRING_BYTES)
    return lines[0], lines[1]


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


def _with_ellipsis(text: str, limit: int) -> str:
    """``text … `` within ``limit`` UTF-8 bytes (cut further when needed)."""
    while text and _utf8_len(text + " …") > limit:
        text = text[:-1]
    return text.rstrip() + " …"


def _shorten(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` UTF-8 bytes, ending in ``…`` when cut."""
    if _utf8_len(text) <= limit:
        return text
    while text and _utf8_len(text + "…") > limit:
        text = text[:-1]
    return text.rstrip() + "…"


# --- fitting a screen into what the terminal can take (psp-reference §2.2, §2.3) -----------------

# optional properties, dropped first, in this order: the QR code of the final screen, hints, the
# subtitle, icons and colours, the message text
_DROP_ORDER: Final = ("qr", "advice", "subtitle", "icon", "color", "message")
_MIN_TEXT = 12  # never shorten a text below this many characters
ELLIPSIS: Final = "…"


def fit(screen: Screen, fits: Callable[[str, Mapping[str, str]], bool]) -> Screen | None:
    """``screen`` as shown when ``fits(type, properties)``; otherwise a copy made to fit: optional
    properties dropped (``_DROP_ORDER``, also ``*.qr`` keys), then the longest texts (titles,
    messages, labels) shortened with an ellipsis, step by step; ``None`` when even that does not
    fit (the caller skips the screen and warns once per screen kind). Item and button keys, which
    the driver presses, are never dropped."""
    screen_type, props = screen
    if fits(screen_type, props):
        return screen
    current = dict(props)
    for key in _DROP_ORDER:
        for name in [k for k in current if k == key or k.endswith(f".{key}")]:
            del current[name]
            if fits(screen_type, current):
                return screen_type, current
    texts = [k for k in current if k in ("title", "message") or k.endswith(".label")]
    while texts:
        longest = max(texts, key=lambda k: len(current[k]))
        value = current[longest]
        if len(value) <= _MIN_TEXT:
            break
        current[longest] = value[: max(_MIN_TEXT, len(value) * 2 // 3) - 1].rstrip() + ELLIPSIS
        if fits(screen_type, current):
            return screen_type, current
    return None


def screen_kind(request: ScreenRequest) -> str:
    """The kind of a screen request, for logs and the one-WARNING-per-kind rule."""
    match request:
        case ShowMessage(key=key):
            return key.value
        case HomeScreen():
            return "home"
        case PrebuiltScreen(kind=kind):
            return kind
        case OperatorMessage():
            return "display_message"
