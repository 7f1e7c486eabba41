"""Simulator configuration: timers and the switches for every [GAP] of psp-reference §12."""

from __future__ import annotations

from dataclasses import dataclass

from drivers.psp.messages import (
    APOLLO_ONLY_OPTIONS,
    KNOWN_OPTIONS,
    CommitOrder,
    Family,
    ProtocolOption,
    WireFormat,
)
from drivers.psp.profile import Profile, Quirks, profile_for

WAIT_CARD_IDLE_THRESHOLD_S = 300.0  # §1.3 / §9.2: card-detect timeout > 5 min → WAIT_CARD counts as idle


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Everything a test or the CLI can tune. Defaults are the real terminal's (psp-reference §9.2, §12)."""

    family: str = "apollo"  # "apollo" | "p6x" (§8)
    idle_close_s: float | None = 20.0  # §1.3 / §9.2: TCP idle close; 0 or None disables
    card_decision_s: float = 30.0  # §9.2: Card Read without a host decision → drop the card
    card_detect_timeout_s: float | None = 60.0  # §11: Apollo default 60 s; None = never
    # tests only: multiply the Setup session timeout (whole seconds on the wire, §5.4) by this
    session_timeout_scale: float = 1.0
    auth_delay_s: float = 0.05  # simulated acquirer round trip before the Auth answer
    status_header: int = 0x00  # §4.3 / §12.11: Get Status Response header 0x00 (docs) or 0x26 (T1)
    read_card_header: int = 0x41  # §4.3 / §12.12: Read Card 0x41 (its page) or 0x40 (S6)
    commit_order: CommitOrder = CommitOrder.SESSION_AMOUNT  # §5.17 [GAP]
    rfid_uid_tag: int = 0xDFF006  # §6.4 / §7.6: the RFID UID tag is a [GAP]
    over_capture: bool = False  # §5.17 [GAP]: allow Commit above the authorised amount
    boot_not_ready: int = 0  # §10.8: Synchronize answers Not OK/0x11 this many times after (re)boot
    card_timeout_message: str = "session_cancelled"  # §5.9 [GAP]: or "session_declined" (reason 0x02)
    # §9.2 [GAP]: what the host sees when the 30 s card hold expires: nothing, or Session Cancelled
    card_decision_message: str = "none"
    keep_sessions_on_reboot: bool = True  # §10.9 [GAP]: approved sessions survive a reboot
    accept_any_preamble: bool = False  # §12.2: accept any preamble byte, not only 0xCC
    # §5.3 [GAP] / §12.5: the Protocol options this terminal grants (the echo masks the rest);
    # e.g. 0x1B = everything but the extended block format 0x04, which keeps the link in the normal
    # format. A P6X masks the Apollo-only bits 0x04/0x08/0x10 in any case.
    grant_options: ProtocolOption = KNOWN_OPTIONS
    split_pause_s: float = 0.005  # pause between chunks of a split reply (separate TCP segments)
    serial_number: str = "SIM0000001"
    model: str | None = None  # default: "APOLLO" / "P6X"
    platform: str = "sim-platform/1.0.0"  # Apollo Request IDs: platform id/version/release
    applications: tuple[str, ...] = ("psp-sim/1.0.0",)  # Apollo Request IDs: application name/version
    firmware: str = "P6X-SIM-FW 1.0.0"  # P6X Request IDs: firmware name
    seed: int | None = None  # RNG seed for session ids and host references

    def __post_init__(self) -> None:
        Family(self.family)  # raises ValueError for an unknown family
        if self.card_decision_message not in ("none", "session_cancelled"):
            raise ValueError("card_decision_message must be none or session_cancelled")
        if not 0 <= int(self.grant_options) <= 0xFFFFFFFF:
            raise ValueError("grant_options is a 32-bit option bitfield (psp-reference §5.3)")
        self.quirks()  # validates the quirk switches (status header, read card header, …)

    @property
    def family_enum(self) -> Family:
        return Family(self.family)

    def quirks(self) -> Quirks:
        """The same quirk objects the driver uses (drivers.psp.profile)."""
        return Quirks(
            read_card_header=self.read_card_header,
            commit_order=self.commit_order,
            status_response_header=self.status_header,
            rfid_uid_tag=self.rfid_uid_tag,
            card_timeout_message=self.card_timeout_message,
        )

    def granted(self, requested: ProtocolOption) -> ProtocolOption:
        """The options the Protocol echo confirms for ``requested`` (§5.3, §12.5)."""
        options = requested & KNOWN_OPTIONS & self.grant_options
        if self.family_enum is Family.P6X:
            options &= ~APOLLO_ONLY_OPTIONS  # §5.3 / §8: Apollo-only bits are masked on a P6X
        return ProtocolOption(options)

    def profile(self) -> Profile:
        return profile_for(self.family_enum, self.quirks())

    def wire(self, *, extended: bool = False) -> WireFormat:
        return self.profile().wire(extended=extended)

    @property
    def idle_close_enabled(self) -> bool:
        return bool(self.idle_close_s)

    @property
    def wait_card_is_idle(self) -> bool:
        """§1.3: with a card-detect timeout above 5 minutes (or none), WAIT_CARD counts as idle."""
        timeout = self.card_detect_timeout_s
        return timeout is None or timeout > WAIT_CARD_IDLE_THRESHOLD_S
