"""Terminal family profiles and quirk switches (DESIGN.md §3.2 items 4 and 5, psp-reference §4.3, §8, §9).

Everything that differs between P6X and Apollo lives in one :class:`Profile`; every documented
inconsistency of the protocol is a field of :class:`Quirks` with the reference's recommended
default, so a deployment can switch it in the YAML config without code changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from drivers.psp.codec import PREAMBLE_TERMINAL
from drivers.psp.messages import CommitOrder, Family, ProtocolOption, WireFormat


@dataclass(frozen=True, slots=True)
class Quirks:
    """Switches for the documented gaps and conflicts of psp-reference §4.3, §5.17, §14, §15."""

    read_card_header: int = 0x41  # §4.3: Read Card 0x41 (its page) or 0x40 (S6)
    commit_order: CommitOrder = CommitOrder.SESSION_AMOUNT  # §5.17 [GAP]
    status_response_header: int = 0x00  # §4.3: 0x00 (docs) or 0x26 (T1); the driver accepts both
    # §2.1: a P6X may put a configurable address byte in the preamble; None accepts any byte
    accepted_preambles: frozenset[int] | None = frozenset({PREAMBLE_TERMINAL})
    strict_magic: bool | None = None  # §2.1: None = the family default (Apollo strict, P6X lenient)
    baud_rates: tuple[int, ...] = (57600, 115200)  # §1.2: try 57600 first, then 115200
    rfid_uid_tag: int = 0xDFF006  # §6.4 / §7.6: the RFID UID tag is a [GAP]
    # §5.9: what ends WAIT_CARD on card-detect timeout is a [GAP]; the driver accepts both
    card_timeout_message: str = "session_cancelled"  # or "session_declined" (simulator switch)

    def __post_init__(self) -> None:
        if self.read_card_header not in (0x40, 0x41):
            raise ValueError("read_card_header must be 0x40 or 0x41 (psp-reference §4.3)")
        if self.status_response_header not in (0x00, 0x26):
            raise ValueError("status_response_header must be 0x00 or 0x26 (psp-reference §4.3)")
        if self.card_timeout_message not in ("session_cancelled", "session_declined"):
            raise ValueError("card_timeout_message must be session_cancelled or session_declined")


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Host-side command timeouts in seconds (psp-reference §9.1) and link timers."""

    auth_s: float
    commit_void_s: float = 60.0  # §9.1: Commit/Void 60 s, both families
    other_s: float = 5.0
    get_receipt_s: float = 15.0  # §9.1: Apollo only
    # Unused since the link confirms a Start Session with a Get Status written right behind it (no
    # fixed window, DESIGN.md §3.2); kept so that existing configurations and callers still load.
    start_session_window_s: float = 0.5
    # §1.3 / TERM-4: keep-alive Get Status at ≤ 15 s (terminal closes idle TCP after 20 s)
    keepalive_s: float = 10.0
    inter_byte_s: float = 0.5  # §2.5 step 4: abandon a partial frame after 500 ms
    sync_retry_s: float = 1.0  # §5.2: poll Synchronize until echoed
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    card_decision_s: float = 30.0  # §9.2: terminal drops a read card after 30 s without a decision


@dataclass(frozen=True, slots=True)
class Profile:
    """What one terminal family can do and how long it may take (psp-reference §8, §9)."""

    family: Family
    timeouts: Timeouts
    protocol_version: int = 3  # §5.3: 0x03 default, recommended
    protocol_options: ProtocolOption = ProtocolOption.TRANSACTION_EVENTS | ProtocolOption.AUTH_DOL
    # §2.2 / §5.3: ask for the extended block format (option 0x04, Apollo only); the link uses it
    # only when the terminal's Protocol echo grants it
    extended_block: bool = False
    detailed_results: bool = False
    partial_approval: bool = False
    update_session: bool = False
    ui: bool = False
    read_card: bool = False
    prop_card_read: bool = False
    list_sessions: bool = False
    add_transaction_context: bool = False
    control: bool = False
    tcp: bool = False
    strict_magic: bool = True
    quirks: Quirks = field(default_factory=Quirks)

    def requested_options(self) -> ProtocolOption:
        """Protocol options the driver asks for in setup (§5.3, §7.1); the echo says what is granted."""
        options = self.protocol_options
        if self.detailed_results:
            options |= ProtocolOption.DETAILED_RESULTS
        if self.extended_block:
            options |= ProtocolOption.EXTENDED_BLOCK  # §2.2 (Apollo)
        return options

    def wire(self, *, extended: bool = False) -> WireFormat:
        q = self.quirks
        return WireFormat(
            family=self.family,
            extended=extended,
            commit_order=q.commit_order,
            read_card_header=q.read_card_header,
            status_response_header=q.status_response_header,
            rfid_uid_tag=q.rfid_uid_tag,
        )

    @property
    def magic_is_strict(self) -> bool:
        return self.strict_magic if self.quirks.strict_magic is None else self.quirks.strict_magic

    def with_quirks(self, quirks: Quirks) -> Profile:
        return replace(self, quirks=quirks)

    def with_timeouts(self, **changes: float) -> Profile:
        """A copy with some timers changed (tests shorten them; never below the spec in production)."""
        return replace(self, timeouts=replace(self.timeouts, **changes))


P6X = Profile(
    family=Family.P6X,
    timeouts=Timeouts(auth_s=30.0, other_s=10.0),  # §9.1: Auth 30 s, others 10 s on P6X
    list_sessions=True,
    strict_magic=False,  # §2.1: P6X writes a configurable magic value
)

APOLLO = Profile(
    family=Family.APOLLO,
    timeouts=Timeouts(auth_s=210.0, other_s=5.0),  # §9.1: Auth 3 min 30 s, others 5 s on Apollo
    extended_block=True,  # §2.2: long UI texts, QR URLs and transaction context need it
    detailed_results=True,
    partial_approval=True,
    update_session=True,
    ui=True,
    read_card=True,
    prop_card_read=True,
    add_transaction_context=True,
    control=True,
    tcp=True,
)

PROFILES: dict[Family, Profile] = {Family.P6X: P6X, Family.APOLLO: APOLLO}


def profile_for(family: Family | str, quirks: Quirks | None = None) -> Profile:
    profile = PROFILES[Family(family)]
    return profile if quirks is None else profile.with_quirks(quirks)
