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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from statemachines.authorization import AuthorizationStrategy
from statemachines.config import StartMode, StationConfig, StopMode
from statemachines.effects import ShowMessage
from statemachines.terminal import ConnectorView

Screen = tuple[str, dict[str, str]]  # (UI type, properties in order)

MESSAGE_HOLD_S: Final = 3.0  # a message stays this long before the home screen returns
HOME_KEY: Final = "_home"  # runtime-internal ShowMessage key: render the home screen now
FINAL_KEY: Final = "_final"  # runtime-internal ShowMessage key: a prebuilt screen (RCPT-2), see prebuilt()

# ShowMessage keys → text (a seam: texts/localisation come with receipts)
MESSAGE_TEXT: Final[Mapping[str, str]] = {
    "tariff": "Tap your card to start",
    "plug_in": "Please plug in your vehicle",
    "charging": "Charging",
    "declined": "Card declined",
    "session_ended": "Session ended. Thank you",
    "terminal_offline": "Payment unavailable",
    "idle_fee": "Charging finished: please unplug",
    "select_connector": "Select a connector",
    "selection_timeout": "No connector selected",
    "connector_unavailable": "Connector unavailable",
    "no_session": "No session on this connector",
    "terminal_busy": "Terminal busy, try again",
    "rfid_accepted": "Card accepted",
    "rfid_rejected": "Card not accepted",
    "card_mismatch": "Use the card that started this session",
    "card_in_use": "This card is already charging",
    "plug_in_first": "Please plug in your vehicle first",
    "card_not_accepted": "Card not accepted",
}
_ERROR_KEYS: Final = frozenset(
    {
        "declined",
        "terminal_offline",
        "selection_timeout",
        "connector_unavailable",
        "no_session",
        "terminal_busy",
        "rfid_rejected",
        "card_mismatch",
        "card_in_use",
        "plug_in_first",
        "card_not_accepted",
    }
)
_OK_KEYS: Final = frozenset({"rfid_accepted", "session_ended"})
_HOME_STATUS_KEYS: Final = frozenset({"tariff", "charging"})  # the home screen says these itself

FREE_STATES: Final = frozenset({"available", "awaiting_card"})
STOPPABLE_STATES: Final = frozenset(
    {"awaiting_plug", "charging", "suspended_ev", "suspended_evse", "idle_fee"}
)
_BUSY_TEXT: Final[Mapping[str, str]] = {
    "authorizing": "Payment in progress",
    "awaiting_plug": "Waiting for the vehicle",
    "charging": "Charging",
    "suspended_ev": "Charging (paused)",
    "suspended_evse": "Charging (paused)",
    "stopping": "Stopping",
    "idle_fee": "Finished, please unplug",
    "settling": "Stopping",
    "finishing": "Finished, please unplug",
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
        if view is None or not view.operative or view.state == "unavailable":
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
    if key == "select_connector":  # a held card (routing ui_selection): which connector?
        props = {"title": MESSAGE_TEXT[key]}
        choices = message.data.get("connectors", ())
        for choice in choices if isinstance(choices, tuple | list) else ():
            props[f"buttons.{button_id('start', int(choice))}"] = ""
            props[f"buttons.{button_id('start', int(choice))}.label"] = settings.label(int(choice))
        return "dialog", props
    props = {"title": MESSAGE_TEXT.get(key, key)}
    if cid is not None:
        props["subtitle"] = settings.label(cid)
    amount = message.data.get("amount_minor")
    if key == "session_ended" and isinstance(amount, int):
        props["message"] = f"Charged {settings.money(amount)}"
    if key == "plug_in":
        props["advice"] = "Then charging starts"
    if key in _ERROR_KEYS:
        props.update(icon="declined", color="2")
    elif key in _OK_KEYS:
        props.update(icon="approved", color="1")
    return "notification", props


def prebuilt(message: ShowMessage) -> Screen:
    """A :data:`FINAL_KEY` message's screen as built elsewhere (the Apollo final receipt screen,
    :func:`agent.money.receipts.apollo_final_screen`): ``data`` holds ``type`` and ``properties``."""
    props = message.data.get("properties")
    items = props.items() if isinstance(props, Mapping) else ()
    return str(message.data.get("type") or "notification"), {str(k): str(v) for k, v in items}


def notification(settings: ScreenSettings, message: ShowMessage) -> Screen:
    """Notifications-only deployments: the message as a ``notification`` (title + connector); the
    tariff message also carries the prices (START-8)."""
    props = {"title": MESSAGE_TEXT.get(message.key, message.key)}
    if message.connector_id is not None:
        props["subtitle"] = f"Connector {message.connector_id}"
    if message.key == "tariff" and settings.tariff_text:
        props["message"] = settings.tariff_text
    return "notification", props
