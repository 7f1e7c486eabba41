"""drivers.terminal: the small terminal contract, its registry and card-data privacy (DESIGN.md §3.2)."""

from __future__ import annotations

import logging

import pytest

from drivers.psp import messages as m
from drivers.psp.profile import APOLLO, P6X
from drivers.psp.session import LinkStatus, TerminalLinkState
from drivers.terminal import (
    TERMINAL_DRIVERS,
    CardKind,
    CardPresented,
    LinkStateChanged,
    PspTerminal,
    ReadCancelled,
    Terminal,
    TransactionProgress,
    UiSelection,
    UnknownTerminalDriver,
    load_terminal_driver,
    mask_token,
    safe_masked_pan,
)


def test_registry_imports_lazily_by_name() -> None:
    assert TERMINAL_DRIVERS["psp"] == "drivers.terminal:PspTerminal"
    cls = load_terminal_driver("psp")
    assert cls is PspTerminal
    assert issubclass(cls, Terminal)
    with pytest.raises(UnknownTerminalDriver, match="zvt"):
        load_terminal_driver("zvt")


def test_capabilities_come_from_the_profile() -> None:
    apollo = PspTerminal("tcp://127.0.0.1:1", APOLLO).capabilities
    p6x = PspTerminal("serial:///dev/null", "p6x").capabilities
    assert (apollo.partial_approval, apollo.ui, apollo.rfid, apollo.list_sessions) == (
        True,
        True,
        True,
        False,
    )
    assert (p6x.list_sessions, p6x.ui, p6x.update_authorization) == (True, False, False)
    assert PspTerminal("serial:///dev/null", P6X).state.link == "down"


def test_full_pan_never_passes() -> None:
    assert safe_masked_pan("476173******0010") == "476173******0010"
    assert safe_masked_pan("4761739001010010") == "************0010"
    assert safe_masked_pan(None) is None
    assert mask_token("04A2B3C4D5E6F7") == "…E6F7"


def test_translate_events_masks_card_data(caplog: pytest.LogCaptureFixture) -> None:
    terminal = PspTerminal("tcp://127.0.0.1:1", APOLLO)
    caplog.set_level(logging.DEBUG)
    full_pan = "4761739001010010"
    emv = m.CardRead(m.Dol(((m.Tag.CARD_HASH, b"A" * 40), (m.Tag.MASKED_PAN, full_pan.encode()))))
    event = terminal.translate(emv)
    assert event == CardPresented(CardKind.EMV, "A" * 40, "************0010", None)
    rfid = terminal.translate(m.PropCardRead(m.Dol(((m.Tag.CARD_HASH, b"04A2B3C4D5E6F7"),))))
    assert isinstance(rfid, CardPresented)
    assert rfid.kind is CardKind.RFID
    assert rfid.token == "04A2B3C4D5E6F7"
    assert "04A2B3C4D5E6F7" not in repr(rfid)
    assert full_pan not in caplog.text
    assert "04A2B3C4D5E6F7" not in caplog.text
    assert terminal.translate(m.UiEvent("stop")) == UiSelection("stop")
    assert terminal.translate(m.TransactionEvent(0x01)) == TransactionProgress(
        m.TransactionEventCode.READING_CARD
    )
    assert terminal.translate(m.TransactionEvent(0x77)) == TransactionProgress(m.TransactionEventCode.UNKNOWN)
    assert terminal.translate(m.SessionCancelled()) == ReadCancelled()
    assert terminal.translate(m.SessionDeclined(0x02)) == ReadCancelled(m.DeclineReason.CARD_READ_TIMEOUT)
    changed = terminal.translate(TerminalLinkState(link=LinkStatus.READY, psp_state=m.PspState.ENABLED))
    assert isinstance(changed, LinkStateChanged)
    assert changed.state.ready
    assert changed.state.psp_state == "ENABLED"
    assert terminal.translate(m.Result(True)) is None
