"""Run one scenario on a :class:`~hil.scenario.station.Station` and say what happened.

:func:`run_scenario` never raises for what a scenario or the station does: every outcome is a
:class:`ScenarioResult` — ``passed``, ``failed`` (the step, its ``FILE:LINE``, why) or ``skipped``
(with the reason; on a rig: a step that needs fault injection the rig cannot do, never counted as
passed). Every wait is bounded by its step's ``within`` and the whole scenario by ``timeout_s``.

After the last step the end-of-run checks always run: everything settles (no open payment in the
journal, none approved on a simulated terminal), the simulated terminal's table agrees with the
journal, the upstream stream passes :mod:`hil.stream` (``complete``), and the agent's log has no
traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from agent.money.tariff import tariff_from_builtins
from hil.rig.invariants import journal_problems, settlement_problems
from hil.rig.procs import AgentExited, HarnessError, wait_until
from hil.scenario import schema as s
from hil.scenario.cards import BUILTIN_CARDS, tap_command
from hil.scenario.operator import Operator, Prompt, PromptTimeout
from hil.scenario.rig import RigConfig
from hil.scenario.schema import CardSpec, Scenario, step_name
from hil.scenario.station import Station
from statemachines.pricing import Usage, UsageKind

__all__ = [
    "ScenarioResult",
    "StepFailed",
    "StepRunner",
    "rig_skip_reason",
    "run_scenario",
    "sim_family",
    "sync_read",
]

_LOGGER = logging.getLogger(__name__)
Status = Literal["passed", "failed", "skipped"]
SCREEN_GRACE_S = 2.0  # expect_screen_shown: how long a screen may lag the step that caused it
FINAL_SETTLE_S = 30.0  # the end-of-run settlement wait (settlement retries are 1 s in a rig config)

# steps a rig cannot do: they need a fault-injection channel into the terminal or the charger
_SIM_ONLY_ACTIONS: Mapping[type[s._Step], str] = {
    s.TerminalFault: "terminal fault injection (frames dropped, corrupted, split, delayed)",
    s.ChargerFault: "a charger fault on demand",
    s.ChargerLink: "taking the charger's bridge link away",
}
# checks only the simulators can answer: on a rig they are reported as not checked
_SIM_ONLY_CHECKS = (s.ExpectTerminal, s.ExpectCharger, s.ExpectScreenShown)


class StepFailed(AssertionError):
    """A step's expectation or action failed; the message is for the report."""


@dataclass
class ScenarioResult:
    scenario: Scenario
    mode: str
    family: str
    status: Status = "passed"
    message: str = ""
    duration_s: float = 0.0
    log: list[str] = field(default_factory=list)  # one line per step (and note), for the report
    agent_log: str = ""
    capture_path: Path | None = None
    prompts: list[Prompt] = field(default_factory=list)

    def say(self, text: str) -> None:
        self.log.append(text)


def sim_family(scenario: Scenario, default: str = "apollo") -> str:
    return default if scenario.family == "any" else scenario.family


def rig_skip_reason(scenario: Scenario, rig: RigConfig) -> str | None:
    """Why ``scenario`` cannot run on ``rig`` (``None``: it can)."""
    if scenario.family not in ("any", rig.terminal.family):
        have = rig.terminal.family
        return f"not applicable on the rig: needs a {scenario.family} terminal, the rig has {have}"
    if scenario.connectors > rig.connectors:
        return (
            f"not applicable on the rig: needs {scenario.connectors} connectors, the rig has {rig.connectors}"
        )
    for step in scenario.parsed_steps:
        what = _SIM_ONLY_ACTIONS.get(type(step))
        if isinstance(step, s.TerminalReboot) and step.sessions == "lose":
            what = "a terminal reboot that loses its sessions"
        if isinstance(step, s.TerminalLink) and rig.terminal.tcp is None:
            what = "a terminal link drop (the rig's terminal is on a serial line)"
        if what is not None:
            return f"not applicable on the rig: {step_name(step)} (line {step.line}) needs {what}"
    return None


def expected_cost(tariff: Mapping[str, Any], energy_wh: int) -> int:
    """The tariff applied to ``energy_wh`` of charging (no time components)."""
    priced = tariff_from_builtins(dict(tariff))
    at = datetime(2026, 1, 1, tzinfo=UTC)
    return priced.cost_minor(priced.accumulate(Usage(), at, at, energy_wh, UsageKind.CHARGING))


def _fields_match(station: Station, payload: object, want: Mapping[str, Any]) -> bool:
    if not isinstance(payload, dict):
        return False
    for key, value in want.items():
        if value == "tariff" and key in ("amount_minor", "cost_minor", "total_minor"):
            energy = payload.get("energy_wh")
            if not isinstance(energy, int) or payload.get(key) != expected_cost(
                station.config["tariff"], energy
            ):
                return False
        elif isinstance(value, dict) and set(value) == {"re"}:  # a pattern: ``qr_url: {re: "^https://"}``
            got = _field(payload, key)
            if not isinstance(got, str) or re.search(str(value["re"]), got) is None:
                return False
        elif _field(payload, key) != value:
            return False
    return True


def _field(payload: Mapping[str, Any], key: str) -> Any:
    """``payload[key]``; a dotted key (``totals.payments``) looks into nested objects, a number
    in it picks a list item (``lines.0.kind``)."""
    if key in payload or "." not in key:
        return payload.get(key)
    value: Any = payload
    for part in key.split("."):
        if isinstance(value, list) and part.isdigit():  # a list item by index: ``lines.0.kind``
            value = value[int(part)] if int(part) < len(value) else None
            continue
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _shows(screen: Mapping[str, Any], text: str) -> bool:
    """The simulated terminal's display shows ``text``: its visible UI screen or, during a card
    read (psp-reference §3.3), the payment screen (amount, reference strings, QR code)."""
    if screen.get("visible"):
        return text in json.dumps(screen, ensure_ascii=False)
    return text in json.dumps(screen.get("payment") or {}, ensure_ascii=False)


def _button_for(screen: Mapping[str, Any], *, connector: int | None, label: str | None) -> str | None:
    """The id of a button/item of ``screen`` that selects ``connector`` or whose label has ``label``."""
    buttons = [str(b) for b in screen.get("buttons", [])]
    properties = screen.get("properties")
    texts: dict[str, str] = {}
    if isinstance(properties, list):  # [[key, value], …] as described by drivers.psp.messages.describe
        for pair in properties:
            if isinstance(pair, list) and len(pair) == 2:
                key, value = str(pair[0]), str(pair[1])
                for b in buttons:
                    if key.startswith((f"buttons.{b}.", f"items.{b}.")) or key in (
                        f"buttons.{b}",
                        f"items.{b}",
                    ):
                        texts[b] = texts.get(b, "") + " " + value
    for b in buttons:
        text = texts.get(b, "") + " " + b
        if label is not None and label.lower() in text.lower():
            return b
        if connector is not None:
            digits = "".join(ch for ch in b if ch.isdigit())
            if digits == str(connector) or f"Connector {connector}" in text:
                return b
    return None


class StepRunner:
    def __init__(self, station: Station, result: ScenarioResult, operator: Operator | None) -> None:
        self.st = station
        self.result = result
        self.operator = operator
        self.scenario = station.scenario
        self.rig = station.rig

    # -- helpers ---------------------------------------------------------------------------------------

    def _card(self, name: str) -> tuple[CardSpec | None, str]:
        """The simulated card (sim) or the rig's description of it; fails when it does not exist."""
        if self.rig is not None:
            if name not in self.rig.cards:
                have = ", ".join(sorted(self.rig.cards)) or "none"
                raise StepFailed(
                    f"card {name!r} is not in {self.rig.file or 'rig.yaml'} cards (it has: {have})"
                )
            return None, self.rig.cards[name]
        card = self.scenario.cards.get(name) or BUILTIN_CARDS.get(name)
        if card is None:
            known = ", ".join(sorted({*self.scenario.cards, *BUILTIN_CARDS}))
            raise StepFailed(f"unknown card {name!r} (cards: {known})")
        return card, card.description or name

    async def _prompt(self, action: str, text: str, *, confirm: bool = False, **args: object) -> bool:
        if self.operator is None:
            raise StepFailed(f"this step needs an operator on the rig: {text}")
        assert self.rig is not None
        prompt = Prompt(action, text, self.rig.prompt_timeout_s, "confirm" if confirm else "do", args)
        self.result.prompts.append(prompt)
        self.result.say(f"  operator: {text}")
        if self.rig.terminal.family == "apollo" and not confirm:
            with contextlib.suppress(HarnessError):  # the screen is a courtesy; the console is the prompt
                await self.st.command(
                    "display_message",
                    {"connector_id": None, "title": "HIL rig", "message": text[:256], "duration_s": 30},
                    within=5.0,
                )
        try:
            answer = await self.operator.ask(prompt)
        except PromptTimeout as exc:
            raise StepFailed(str(exc)) from None
        if not answer and not confirm:
            raise StepFailed(f"the operator could not: {text}")
        return answer

    async def _wait(
        self, fetch: Callable[[], Any], pred: Callable[[Any], object], what: str, within: float
    ) -> Any:
        return await wait_until(fetch, pred, what=what, within=within, check=self._check_alive)

    def _check_alive(self) -> None:
        if self.st.agent.crash_at is None:  # an agent started at a crash point is expected to die
            self.st.agent.check_alive()

    # -- steps -----------------------------------------------------------------------------------------

    async def step(self, step: s._Step) -> None:  # one dispatch, one case per step kind
        st = self.st
        match step:
            case s.Plug(connector=c) | s.Unplug(connector=c):
                plug = isinstance(step, s.Plug)
                if st.charger is not None:
                    await (st.charger.plug(c) if plug else st.charger.unplug(c))
                else:
                    verb = "Plug a vehicle into" if plug else "Unplug the vehicle from"
                    await self._prompt("plug" if plug else "unplug", f"{verb} connector {c}", connector=c)
            case s.Ev(connector=c, power_w=power, pause=pause):
                if st.charger is not None:
                    if power is not None:
                        await st.charger.power(c, power)
                    if pause is not None:
                        await (st.charger.pause(c) if pause else st.charger.resume(c))
                elif pause is not None:
                    verb = "Pause charging from the vehicle on" if pause else "Resume charging on"
                    await self._prompt(
                        "ev_pause" if pause else "ev_resume", f"{verb} connector {c}", connector=c
                    )
                else:
                    self.result.say(f"  (rig) the vehicle on connector {c} decides its power")
            case s.ChargerFault(connector=c, code=code, clear=clear):
                _psp, charger = st.require_sim("charger_fault")
                await (charger.clear(c) if clear else charger.fault(c, code))
            case s.ChargerLink(state=state):
                _psp, charger = st.require_sim("charger_link")
                await (charger.lose() if state == "lost" else charger.restore())
            case s.Tap(card=name):
                card, description = self._card(name)
                if st.psp is not None:
                    assert card is not None
                    await st.psp.command(tap_command(card))
                else:
                    await self._prompt("tap", f"Tap the {description} ({name}) on the terminal", card=name)
            case s.RemoveCard():
                if st.psp is not None:
                    await st.psp.command("remove")
                else:
                    await self._prompt("remove_card", "Take the card away from the reader")
            case s.Press(button=button, connector=c, label=label, within=within):
                await self._press(button, c, label, within)
            case s.TerminalFault():
                psp, _charger = st.require_sim("terminal_fault")
                await psp.command(_fault_command(step))
            case s.TerminalLink(state=state):
                if st.terminal_gate is None:
                    raise StepFailed("terminal_link needs a TCP terminal (this one is on a serial line)")
                if state == "down":
                    st.terminal_gate.shut()
                else:
                    st.terminal_gate.open()
            case s.TerminalReboot(sessions=sessions):
                if st.psp is not None:
                    await st.psp.command(f"reboot {sessions}")
                else:
                    await self._prompt("terminal_reboot", "Power-cycle the payment terminal (off, then on)")
            case s.Broker(state=state):
                assert st.upstream_gate is not None
                if state == "down":
                    st.mark("broker_down")
                    st.upstream_gate.shut()
                else:
                    st.upstream_gate.open()
                    st.mark("broker_up")
            case s.Agent(action=action, crash_at=crash_at):
                if action in ("kill", "restart") and st.agent.running:
                    await st.agent.kill()
                if action == "stop":
                    await st.agent.stop()
                if action in ("start", "restart"):
                    if st.agent.running:
                        raise StepFailed("agent start: the agent is running (kill or stop it first)")
                    await st.start_agent(crash_at=crash_at)
            case s.Command(name=name, args=args, expect=expect, code=code, within=within):
                reply = await st.command(name, args, within=within)
                if reply.get("status") != expect or (code is not None and reply.get("code") != code):
                    want = expect if code is None else f"{expect}/{code}"
                    raise StepFailed(f"command {name}: expected {want}, got {json.dumps(reply)}")
            case s.AuthResponse(status=status, limit_minor=limit, within=within):
                await st.answer_auth(status, limit, within=within)
            case s.Sleep(seconds=seconds):
                await asyncio.sleep(seconds)
            case s.WaitConnector():
                await self._wait_connector(step)
            case s.WaitEnergy():
                await self._wait_energy(step)
            case s.WaitTerminal(state=states, within=within):
                await self._wait_terminal(states, within)
            case s.WaitScreen(contains=text, within=within):
                await self._wait_screen(text, within)
            case s.WaitMessage():
                await self._wait_message(step)
            case s.ExpectMessages(topic=topic, fields=want, count=count):
                found = self._matching(topic, want)
                if found != count:
                    raise StepFailed(
                        f"expected {count} message(s) on {topic} with {json.dumps(want)}, found {found}"
                    )
            case s.WaitSettled(within=within):
                await self._settled(within)
            case s.ExpectTerminal(sessions=want) if st.psp is not None:
                got = Counter(str(x["status"]) for x in await st.psp.sessions())
                if dict(got) != {k: v for k, v in want.items() if v}:
                    raise StepFailed(f"terminal sessions: expected {want}, got {dict(got)}")
            case s.WaitReceived(sequence=sequence, new=new, within=within) if st.psp is not None:
                await self._wait_received(sequence, new, within, step.without)
            case s.ExpectTerminalStatus(fields=want) if st.psp is not None:
                got_status = await st.psp.state()
                if not _fields_match(st, got_status, want):
                    raise StepFailed(
                        f"terminal status: expected {json.dumps(want)}, got {json.dumps(got_status)}"
                    )
            case s.WaitReceived() | s.ExpectTerminalStatus():
                self.result.say(f"  (rig) {step_name(step)} not checked: only the simulator can answer it")
            case s.ExpectJournal(disposals=disposals, methods=methods):
                await self._expect_journal(disposals, methods)
            case s.ExpectCharger(connector=c, enabled=enabled) if st.charger is not None:
                got = (await st.charger.state(c))["enabled"]
                if got is not enabled:
                    raise StepFailed(f"charger connector {c}: expected enabled={enabled}, got {got}")
            case s.ExpectScreenShown(contains=text) if st.psp is not None:
                psp = st.psp

                async def screens() -> list[Any]:
                    return list(await psp.control.json("screens"))

                def has_text(shown: list[Any]) -> bool:
                    return any(text in json.dumps(x, ensure_ascii=False) for x in shown)

                try:  # a screen the step before caused may follow it by a few ms (a loaded machine)
                    await self._wait(screens, has_text, f"a screen containing {text!r}", SCREEN_GRACE_S)
                except AgentExited:
                    raise
                except HarnessError:
                    shown = await screens()
                    raise StepFailed(
                        f"no screen containing {text!r} was sent to the terminal ({len(shown)} screens)"
                    ) from None
            case s.ExpectTerminal() | s.ExpectCharger() | s.ExpectScreenShown():
                self.result.say(f"  (rig) {step_name(step)} not checked: only the simulators can answer it")
            case s.ExpectLog(contains=text, absent=absent):
                present = text in st.agent.proc.log_text()
                if present is absent:
                    raise StepFailed(f"agent log {'contains' if present else 'lacks'} {text!r}")
            case s.Note(text=text):
                self.result.say(f"  note: {text}")
            case _:  # pragma: no cover - the schema admits only the steps above
                raise StepFailed(f"step {type(step).__name__} is not implemented")

    async def _wait_connector(self, step: s.WaitConnector) -> None:
        st, c = self.st, step.connector
        await self._wait(
            sync_read(lambda: st.connector_state(c)),
            lambda v: v in step.state,
            f"connector {c} in {step.state}",
            step.within,
        )

    async def _wait_energy(self, step: s.WaitEnergy) -> None:
        st, c = self.st, step.connector
        await self._wait(
            sync_read(lambda: st.session_energy_wh(c)),
            lambda v: v >= step.wh,
            f"≥ {step.wh} Wh in the session on connector {c} (retained connector state)",
            step.within,
        )

    async def _wait_received(
        self, sequence: list[str], new: bool, within: float, without: list[str] | None = None
    ) -> None:
        psp = self.st.psp
        assert psp is not None
        skip = len(await psp.received()) if new else 0

        def received_in_order(names: list[str]) -> bool:
            got, end = 0, len(names)  # greedy, in order; ``end``: just after the sequence completed
            for i in range(skip, len(names)):
                if names[i] == sequence[got]:
                    got += 1
                    if got == len(sequence):
                        end = i + 1
                        break
            unwanted = [name for name in names[skip:end] if name in (without or ())]
            if unwanted:
                raise StepFailed(f"the terminal received {unwanted[0]} before {' → '.join(sequence)}")
            return got == len(sequence)

        what = f"the terminal to receive {' → '.join(sequence)}{' (new)' if new else ''}"
        await self._wait(psp.received, received_in_order, what, within)

    async def _wait_message(self, step: s.WaitMessage) -> None:
        await self._wait(
            sync_read(lambda: self._matching(step.topic, step.fields)),
            lambda n: n >= step.count,
            f"{step.count} message(s) on {step.topic} with {json.dumps(step.fields)}",
            step.within,
        )

    def _matching(self, topic: str, want: Mapping[str, Any]) -> int:
        return sum(1 for m in self.st.messages(topic) if _fields_match(self.st, m.payload, want))

    async def _press(
        self, button: str | None, connector: int | None, label: str | None, within: float
    ) -> None:
        st = self.st
        if st.psp is None:
            what = f"'{button or label}'" if connector is None else f"connector {connector}"
            await self._prompt(
                "press", f"Select {what} on the terminal screen", button=button, connector=connector
            )
            return
        psp = st.psp
        if button is not None:
            await self._wait(psp.screen, lambda x: x.get("visible") and button in x.get("buttons", []),
                             f"a screen with button {button!r}", within)  # fmt: skip
            await psp.press(button)
            return
        screen = await self._wait(
            psp.screen,
            lambda x: x.get("visible") and _button_for(x, connector=connector, label=label) is not None,
            f"a screen selecting {'connector ' + str(connector) if connector else repr(label)}",
            within,
        )
        found = _button_for(screen, connector=connector, label=label)
        assert found is not None
        await psp.press(found)

    async def _wait_terminal(self, states: list[str], within: float) -> None:
        st = self.st
        if st.psp is not None:
            psp = st.psp
            await self._wait(
                psp.state, lambda x: x["connected"] and x["state"] in states, f"terminal in {states}", within
            )
            return
        # a rig's terminal answers only the agent: the agent's retained ``terminal`` state says it is
        # set up (``link: ready``), and its log says when it started a card read (the terminal then
        # waits for a card); other PSP states are not observable without the simulator
        await self._wait(
            sync_read(lambda: (st.retained("terminal") or {}).get("link")),
            lambda v: v == "ready",
            "the terminal set up (retained terminal state link=ready)",
            within,
        )
        if "WAIT_CARD" in states:
            await self._wait(
                sync_read(lambda: "card read started" in st.agent.proc.log_since_start()),
                bool,
                "the agent to start a card read (the terminal waiting for a card)",
                within,
            )
        elif not {"ENABLED", "IDLE"} & set(states):
            self.result.say(f"  (rig) terminal state {states} not checked: only the simulator reports it")

    async def _wait_screen(self, text: str, within: float) -> None:
        st = self.st
        if st.psp is not None:
            psp = st.psp
            await self._wait(psp.screen, lambda x: _shows(x, text), f"a screen showing {text!r}", within)
            return
        assert self.rig is not None
        if self.rig.terminal.family != "apollo":
            self.result.say(f"  (rig) screen {text!r} not checked: a P6X has no screens of ours")
            return
        if not await self._prompt(
            "screen", f"Does the terminal screen show '{text}'?", confirm=True, screen_text=text
        ):
            raise StepFailed(f"the operator did not see {text!r} on the terminal screen")

    async def _settled(self, within: float) -> None:
        st = self.st
        if st.psp is not None:
            psp = st.psp
            await wait_until(
                psp.sessions,
                lambda ss: all(x["status"] != "approved" for x in ss),
                what="no approved session left on the terminal",
                within=within,
            )
        await st.wait_journal_settled(within)

    async def _expect_journal(self, disposals: Mapping[str, int], methods: Mapping[str, int]) -> None:
        journal = await self.st.journal()
        got_d = Counter(str(p.get("disposal") or "none") for p in journal)
        got_m = Counter(str(p.get("method") or "none") for p in journal)
        for want, got, what in ((disposals, got_d, "disposals"), (methods, got_m, "methods")):
            if want and {k: v for k, v in want.items() if v} != dict(got):
                raise StepFailed(f"journal {what}: expected {dict(want)}, got {dict(got)}")

    # -- the end of the run ----------------------------------------------------------------------------

    async def final_checks(self) -> None:
        st = self.st
        if not st.agent.running:
            raise StepFailed(
                "the agent is not running at the end of the scenario (start it again as a last step)"
            )
        await self._settled(FINAL_SETTLE_S)
        journal = await st.journal()
        if st.psp is not None:
            sim = await st.psp.sessions()
            # a P6X restart voids approvals the journal never saw (List Sessions, docs/runtime.md)
            orphans = st.family == "p6x"
            problems = settlement_problems(sim) + journal_problems(journal, sim, orphans_voided=orphans)
            if problems:
                raise StepFailed("terminal vs journal: " + "; ".join(problems[:10]))
        await asyncio.sleep(0.5)  # the last outbox messages reach the capture
        findings = st.findings(complete=True)
        if findings:
            raise StepFailed(
                "upstream stream (hil.check_stream): " + "; ".join(str(f) for f in findings[:10])
            )
        if "Traceback" in st.agent.proc.log_text():
            raise StepFailed("the agent's log has a traceback")


def sync_read(read: Callable[[], Any]) -> Callable[[], Awaitable[Any]]:
    """``wait_until`` polls an async fetch; this one calls ``read`` at each poll."""

    async def fetch() -> Any:
        return read()

    return fetch


def _fault_command(step: s.TerminalFault) -> str:
    kind = step.kind
    if kind == "clear":
        return "fault clear"
    if kind == "silent":
        return f"fault silent {'on' if step.on else 'off'}"
    if kind == "not_ready":
        return f"fault not_ready {step.count}"
    only = f" only={step.only}" if step.only else ""
    if kind == "split":
        return f"fault split {step.chunk or 1} {step.count}"
    if kind == "delay":
        return f"fault delay {step.seconds or 1.0} {step.count}{only}"
    return f"fault {kind} {step.count}{only}"


async def run_scenario(
    scenario: Scenario,
    workdir: Path,
    *,
    rig: RigConfig | None = None,
    operator: Operator | None = None,
    family: str | None = None,
) -> ScenarioResult:
    """Run ``scenario`` in ``workdir`` (fresh), in sim mode or on ``rig``; never raises for the
    scenario's own failures."""
    fam = rig.terminal.family if rig is not None else (family or sim_family(scenario))
    result = ScenarioResult(scenario, "sim" if rig is None else "rig", fam)
    started = time.monotonic()
    if rig is not None:
        reason = rig_skip_reason(scenario, rig)
        if reason is not None:
            result.status, result.message = "skipped", reason
            return result
    elif scenario.family not in ("any", fam):
        result.status, result.message = "skipped", f"needs a {scenario.family} terminal"
        return result
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    station = Station(scenario, workdir, family=fam, rig=rig)
    result.capture_path = station.capture_path
    current = "start"
    try:
        async with asyncio.timeout(scenario.timeout_s):
            async with station:
                runner = StepRunner(station, result, operator)
                for index, step in enumerate(scenario.parsed_steps, 1):
                    current = f"step {index} ({step_name(step)}, {scenario.file}:{step.line})"
                    result.say(f"{current}")
                    await runner.step(step)
                current = "end-of-run checks"
                result.say(current)
                await runner.final_checks()
    except TimeoutError:
        result.status = "failed"
        result.message = f"{current}: the scenario took longer than its timeout_s ({scenario.timeout_s:g} s)"
    except (StepFailed, HarnessError, AgentExited, PromptTimeout) as exc:
        result.status, result.message = "failed", f"{current}: {exc}"
    except Exception as exc:  # any failure of the run is the scenario's result
        _LOGGER.exception("scenario %s: %s", scenario.id, current)
        result.status, result.message = "failed", f"{current}: {type(exc).__name__}: {exc}"
    finally:
        result.duration_s = time.monotonic() - started
        result.agent_log = (
            station.agent.proc.log_text()[-50_000:] if station.agent.proc.log_path.exists() else ""
        )
    if station.left_open:
        held = "; ".join(station.left_open)
        result.say(f"  WARNING: payments left open on the terminal (void at its session timeout): {held}")
        if result.status == "passed":
            result.status, result.message = "failed", f"teardown: payments left open: {held}"
    if result.status == "failed":
        result.say(f"FAILED {result.message}")
    return result
