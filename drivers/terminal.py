"""The payment-terminal interface the agent uses (DESIGN.md §3.2, last paragraph).

:class:`Terminal` is the contract, in domain words, so further terminal families (Payter cloud
API, ZVT) can be added as drivers: ``start_card_read``, ``authorize``, ``cancel_read``,
``commit``, ``void``, ``update_authorization``, ``show_screen`` (with ``screen_fits`` and
``screen_limit_bytes`` to fit a screen before sending it), ``list_sessions`` (where supported),
``capabilities``, ``state`` and an async stream of typed :data:`TerminalEvent` s.
:class:`PspTerminal` implements it for Payter P6X / Apollo on :class:`TerminalSession`.

Drivers are found by name in :data:`TERMINAL_DRIVERS` and imported lazily (python-can style).

Card data privacy: these objects only ever carry the terminal's **masked** PAN and the card hash;
a value that looks like a full PAN is masked before it gets here, and RFID UIDs appear in
``repr``/logs only as their last four characters.
"""

from __future__ import annotations

import abc
import importlib
import logging
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from drivers.errors import DriverError
from drivers.psp import messages as m
from drivers.psp.profile import Profile, profile_for
from drivers.psp.session import DEFAULT_SESSION_TIMEOUT_S, TerminalLinkState, TerminalSession

_LOGGER = logging.getLogger(__name__)

# -- domain objects ------------------------------------------------------------------------------


class CardKind(StrEnum):
    EMV = "emv"
    RFID = "rfid"


_LONG_DIGITS = re.compile(r"\d{13,19}")  # an unmasked PAN is 13 to 19 digits


def safe_masked_pan(value: str | None) -> str | None:
    """The terminal's masked PAN; anything that still looks like a full PAN is masked here."""
    if value is None:
        return None
    return _LONG_DIGITS.sub(lambda mo: "*" * (len(mo.group()) - 4) + mo.group()[-4:], value)


def mask_token(token: str | None) -> str:
    """RFID UID / token for logs: only the last four characters."""
    if not token:
        return "-"
    return "…" + token[-4:]


@dataclass(frozen=True, slots=True)
class CardData:
    """What the terminal tells about a card: never a full PAN (masked PAN and card hash only)."""

    masked_pan: str | None = None
    card_hash: str | None = None
    brand: str | None = None


@dataclass(frozen=True, slots=True)
class CardPresented:
    """A card was read; the host must authorize or cancel within 30 s (TERM-3, psp-reference §9.2).

    ``token``: the card hash (EMV) or UID (RFID); matched against active sessions for tap-to-stop.
    """

    kind: CardKind
    token: str | None = field(repr=False)
    masked_pan: str | None = None
    brand: str | None = None

    @property
    def token_hint(self) -> str:
        return mask_token(self.token)

    def __repr__(self) -> str:
        return (
            f"CardPresented(kind={self.kind.value}, token={self.token_hint}, "
            f"masked_pan={self.masked_pan!r}, brand={self.brand!r})"
        )


@dataclass(frozen=True, slots=True)
class Approved:
    session_id: int
    amount_minor: int
    card: CardData
    host_reference: str | None = None


@dataclass(frozen=True, slots=True)
class PartiallyApproved:
    """Apollo: less than requested was authorised; commit at most ``amount_minor`` or void."""

    session_id: int
    amount_minor: int
    requested_minor: int
    card: CardData
    host_reference: str | None = None


@dataclass(frozen=True, slots=True)
class Declined:
    reason: m.DeclineReason | None = None  # Apollo with detailed codes; never shown raw to the cardholder


@dataclass(frozen=True, slots=True)
class Cancelled:
    """The authorization was cancelled (by the cardholder or the terminal)."""


AuthorizationOutcome = Approved | PartiallyApproved | Declined | Cancelled


@dataclass(frozen=True, slots=True)
class AuthorizationUpdate:
    """Result of an incremental / decremental authorization (Apollo, psp-reference §5.20)."""

    result: m.UpdateResult
    session_id: int
    authorized_minor: int
    change_minor: int
    decline_reason: m.DeclineReason | None = None

    @property
    def approved(self) -> bool:
        return self.result is not m.UpdateResult.DECLINED


@dataclass(frozen=True, slots=True)
class ReadCancelled:
    """A card read ended without a card (card-detect timeout, terminal-side cancel)."""

    reason: m.DeclineReason | None = None


@dataclass(frozen=True, slots=True)
class UiSelection:
    button_id: str


@dataclass(frozen=True, slots=True)
class TransactionProgress:
    stage: m.TransactionEventCode


@dataclass(frozen=True, slots=True)
class TerminalState:
    """Link state in domain words (TERM-6)."""

    link: str  # down / connecting / setting_up / ready
    ready: bool
    since: float  # monotonic
    psp_state: str | None = None
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class LinkStateChanged:
    state: TerminalState


TerminalEvent = CardPresented | ReadCancelled | UiSelection | TransactionProgress | LinkStateChanged


@dataclass(frozen=True, slots=True)
class TerminalCapabilities:
    partial_approval: bool = False
    update_authorization: bool = False
    ui: bool = False
    read_card: bool = False
    rfid: bool = False
    list_sessions: bool = False
    transaction_context: bool = False


# -- the contract --------------------------------------------------------------------------------


class Terminal(abc.ABC):
    """A payment terminal shared by all connectors of a charger.

    Errors are :class:`drivers.errors.DriverError` s; an operation the family cannot do raises
    :class:`drivers.errors.NotSupported`. ``commit``/``void`` of an unknown session raise
    :class:`drivers.psp.errors.SessionNotFound` (the caller decides that it counts as disposed).
    """

    @property
    @abc.abstractmethod
    def capabilities(self) -> TerminalCapabilities: ...

    @property
    @abc.abstractmethod
    def state(self) -> TerminalState: ...

    @abc.abstractmethod
    async def run(self) -> None:
        """Keep the terminal connected until cancelled (run it in the agent's TaskGroup)."""

    @abc.abstractmethod
    async def wait_ready(self, timeout_s: float | None = None) -> TerminalState: ...

    async def status(self) -> str | None:
        """Ask the terminal for its state now (PSP Get Status: ``ENABLED``, ``WAIT_CARD`` …);
        ``None`` when the terminal cannot say."""
        return None

    @abc.abstractmethod
    async def start_card_read(self, amount_minor: int, reference: int, **options: Any) -> None:
        """Start reading a card for a pre-authorization of ``amount_minor``; a card → CardPresented."""

    @abc.abstractmethod
    async def read_card(self, reference: int, **options: Any) -> None:
        """Read a card without an amount (identification, tap-to-stop)."""

    @abc.abstractmethod
    async def authorize(self) -> AuthorizationOutcome: ...

    @abc.abstractmethod
    async def cancel_read(self) -> bool:
        """Drop the card read / held card; ``False`` when nothing was running."""

    @abc.abstractmethod
    async def commit(self, session_id: int, amount_minor: int) -> None: ...

    @abc.abstractmethod
    async def void(self, session_id: int) -> None: ...

    @abc.abstractmethod
    async def update_authorization(self, session_id: int, new_total_minor: int) -> AuthorizationUpdate: ...

    @abc.abstractmethod
    async def show_screen(self, screen_type: str, properties: Mapping[str, str] | None = None) -> None:
        """Show a screen; one that does not fit the terminal's current message size limit raises
        :class:`drivers.psp.errors.MessageTooLong` (a ``DriverError``) and nothing is sent."""

    def screen_fits(self, screen_type: str, properties: Mapping[str, str]) -> bool:
        """Whether :meth:`show_screen` of this screen fits what the terminal accepts right now.

        The caller can drop optional lines or the QR code, shorten texts, or skip the screen. A
        terminal without a size limit says ``True`` (the default)."""
        return True

    @property
    def screen_limit_bytes(self) -> int | None:
        """The largest encoded screen, in bytes, the terminal accepts right now; ``None`` = no limit."""
        return None

    @abc.abstractmethod
    async def add_transaction_context(self, session_id: int, data: str) -> None: ...

    @abc.abstractmethod
    async def list_sessions(self) -> tuple[int, ...]: ...

    @abc.abstractmethod
    def events(self) -> AsyncIterator[TerminalEvent]: ...


# -- PSP implementation --------------------------------------------------------------------------


def _card_data(dol: m.Dol) -> CardData:
    return CardData(masked_pan=safe_masked_pan(dol.masked_pan), card_hash=dol.card_hash, brand=dol.brand)


def _decline_reason(raw: int | None) -> m.DeclineReason | None:
    if raw is None:
        return None
    return m.DeclineReason(raw) if raw in m.DeclineReason._value2member_map_ else m.DeclineReason.OTHER


def _terminal_state(state: TerminalLinkState) -> TerminalState:
    return TerminalState(
        link=state.link.value,
        ready=state.ready,
        since=state.since,
        psp_state=None if state.psp_state is None else state.psp_state.name,
        last_error=state.last_error,
    )


class PspTerminal(Terminal):
    """A Payter P6X / Apollo terminal over PSP (serial or TCP)."""

    def __init__(
        self,
        url: str,
        profile: Profile | str = "apollo",
        *,
        session_timeout_s: int = DEFAULT_SESSION_TIMEOUT_S,
        **session_options: Any,
    ) -> None:
        self.profile = profile if isinstance(profile, Profile) else profile_for(profile)
        self.session = TerminalSession(
            url, self.profile, session_timeout_s=session_timeout_s, **session_options
        )
        self._requested_minor = 0

    @property
    def capabilities(self) -> TerminalCapabilities:
        p = self.profile
        return TerminalCapabilities(
            partial_approval=p.partial_approval,
            update_authorization=p.update_session,
            ui=p.ui,
            read_card=p.read_card,
            rfid=p.prop_card_read,
            list_sessions=p.list_sessions,
            transaction_context=p.add_transaction_context,
        )

    @property
    def state(self) -> TerminalState:
        return _terminal_state(self.session.state.value)

    async def run(self) -> None:
        await self.session.run()

    async def __aenter__(self) -> PspTerminal:
        await self.session.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.aclose()

    async def wait_ready(self, timeout_s: float | None = None) -> TerminalState:
        return _terminal_state(await self.session.wait_ready(timeout_s))

    async def status(self) -> str | None:
        return (await self.session.get_status()).state.name

    async def start_card_read(self, amount_minor: int, reference: int, **options: Any) -> None:
        self._requested_minor = amount_minor
        await self.session.start_card_read(amount_minor, reference, **options)

    async def read_card(self, reference: int, **options: Any) -> None:
        self._requested_minor = 0
        await self.session.read_card(reference, **options)

    async def authorize(self) -> AuthorizationOutcome:
        reply = await self.session.authorize()
        if isinstance(reply, m.SessionPartiallyApproved):
            return PartiallyApproved(
                reply.session_id,
                reply.amount_minor,
                self._requested_minor,
                _card_data(reply.dol),
                reply.dol.host_reference,
            )
        if isinstance(reply, m.SessionApproved):
            return Approved(
                reply.session_id, self._requested_minor, _card_data(reply.dol), reply.dol.host_reference
            )
        if isinstance(reply, m.SessionDeclined):
            return Declined(reply.reason_code)
        return Cancelled()

    async def cancel_read(self) -> bool:
        return await self.session.cancel_read()

    async def commit(self, session_id: int, amount_minor: int) -> None:
        await self.session.commit(session_id, amount_minor)

    async def void(self, session_id: int) -> None:
        await self.session.void(session_id)

    async def update_authorization(self, session_id: int, new_total_minor: int) -> AuthorizationUpdate:
        r = await self.session.update_authorization(session_id, new_total_minor)
        reason = _decline_reason(r.decline_reason) if r.result is m.UpdateResult.DECLINED else None
        return AuthorizationUpdate(r.result, r.session_id, r.authorized_minor, r.updated_minor, reason)

    async def show_screen(self, screen_type: str, properties: Mapping[str, str] | None = None) -> None:
        await self.session.show_screen(screen_type, properties)

    def screen_fits(self, screen_type: str, properties: Mapping[str, str]) -> bool:
        """Measured against the PSP block format in force (psp-reference §2.2, §2.3): extended when the
        terminal's Protocol echo granted option 0x04, else — also while no link is up — normal
        (a UI Request payload of at most 252 bytes)."""
        return self.session.screen_fits(screen_type, properties)

    @property
    def screen_limit_bytes(self) -> int:
        """The UI Request payload limit of the block format in force; compare :meth:`screen_bytes`."""
        return self.session.payload_limit

    def screen_bytes(self, screen_type: str, properties: Mapping[str, str]) -> int:
        """The encoded UI Request payload (§5.21: ``type\\0<type>\\0`` then the key/value strings)."""
        return self.session.screen_bytes(screen_type, properties)

    async def add_transaction_context(self, session_id: int, data: str) -> None:
        await self.session.add_transaction_context(session_id, data)

    async def list_sessions(self) -> tuple[int, ...]:
        return await self.session.list_sessions()

    def events(self) -> AsyncIterator[TerminalEvent]:
        return _PspEventIterator(self)

    def translate(self, event: object) -> TerminalEvent | None:
        """Session event → domain event (``None`` for frames the agent need not see)."""
        if isinstance(event, TerminalLinkState):
            return LinkStateChanged(_terminal_state(event))
        if isinstance(event, m.PropCardRead):  # before CardRead: it is a subclass
            uid = event.uid(self.profile.wire())
            _LOGGER.info("RFID card presented: %s", mask_token(uid))
            return CardPresented(CardKind.RFID, uid, safe_masked_pan(event.dol.masked_pan), event.dol.brand)
        if isinstance(event, m.CardRead):
            card = _card_data(event.dol)
            _LOGGER.info("card presented: %s", card.masked_pan)
            return CardPresented(CardKind.EMV, card.card_hash, card.masked_pan, card.brand)
        if isinstance(event, m.UiEvent):
            return UiSelection(event.button_id)
        if isinstance(event, m.TransactionEvent):
            known = event.event in m.TransactionEventCode._value2member_map_
            return TransactionProgress(
                m.TransactionEventCode(event.event) if known else m.TransactionEventCode.UNKNOWN
            )
        if isinstance(event, m.SessionCancelled):
            return ReadCancelled()
        if isinstance(event, m.SessionDeclined):  # §5.9 [GAP]: a card-detect timeout may decline
            return ReadCancelled(event.reason_code)
        _LOGGER.debug("ignored terminal message %s", type(event).__name__)
        return None


class _PspEventIterator:
    def __init__(self, terminal: PspTerminal) -> None:
        self._terminal = terminal

    def __aiter__(self) -> _PspEventIterator:
        return self

    async def __anext__(self) -> TerminalEvent:
        while True:
            item = await self._terminal.session.next_event()
            if item is None:
                raise StopAsyncIteration
            event = self._terminal.translate(item)
            if event is not None:
                return event


# -- registry ------------------------------------------------------------------------------------

TERMINAL_DRIVERS: dict[str, str] = {"psp": "drivers.terminal:PspTerminal"}


class UnknownTerminalDriver(DriverError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"unknown terminal driver {self.name!r} (known: {', '.join(sorted(TERMINAL_DRIVERS))})"


def load_terminal_driver(name: str) -> type[Terminal]:
    """The :class:`Terminal` class registered as ``name``, imported on first use."""
    try:
        target = TERMINAL_DRIVERS[name]
    except KeyError:
        raise UnknownTerminalDriver(name) from None
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, Terminal)):
        raise TypeError(f"{target} is not a Terminal")
    return cls
