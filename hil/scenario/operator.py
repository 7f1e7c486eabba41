"""Operator prompts: the steps of a rig run that a machine cannot do (docs/hil-rig.md).

A :class:`Prompt` says what to do ("Tap the VISA test card", "Unplug connector 2") and how long the
runner waits. An :class:`Operator` answers it: ``True`` when done (or, for a question, yes), ``False``
when the operator cannot (or no). :class:`ConsoleOperator` asks on the console; :class:`ScriptedOperator`
answers through a callback (tests, a tapping robot). A prompt that times out fails its step.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol, TextIO

__all__ = ["ConsoleOperator", "Operator", "Prompt", "PromptTimeout", "ScriptedOperator"]

PromptKind = Literal["do", "confirm"]


@dataclass(frozen=True, slots=True)
class Prompt:
    """``action``: what the step is (``tap``, ``plug``, ``unplug``, ``press``, ``ev_pause``,
    ``ev_resume``, ``terminal_reboot``, ``screen``); ``args`` its details (card name, connector …)."""

    action: str
    text: str
    timeout_s: float
    kind: PromptKind = "do"
    args: Mapping[str, object] = field(default_factory=dict)


class PromptTimeout(Exception):
    """Nobody answered the prompt in time."""


class Operator(Protocol):
    async def ask(self, prompt: Prompt) -> bool: ...


class ConsoleOperator:
    """Prompts on ``output``, answers read from ``input`` (Enter or ``y`` = done/yes, ``n`` = no)."""

    def __init__(self, input: TextIO | None = None, output: TextIO | None = None) -> None:
        self._input = input or sys.stdin
        self._output = output or sys.stdout
        self._reading: asyncio.Future[str] | None = None  # a read still waiting for its line

    async def ask(self, prompt: Prompt) -> bool:
        hint = "[y/n]" if prompt.kind == "confirm" else "Enter when done, n if you cannot"
        self._output.write(f"\n>>> OPERATOR: {prompt.text}  ({hint}; {prompt.timeout_s:g} s)\n")
        self._output.flush()
        reading = self._next_line()
        try:
            async with asyncio.timeout(prompt.timeout_s):
                line = await asyncio.shield(reading)
        except TimeoutError:
            raise PromptTimeout(f"no answer to {prompt.text!r} within {prompt.timeout_s:g} s") from None
        self._reading = None
        if line == "":
            raise PromptTimeout(f"no answer to {prompt.text!r}: the console input is closed")
        return line.strip().lower() in ("", "y", "yes", "done", "ok")

    def _next_line(self) -> asyncio.Future[str]:
        """The next input line, read by a daemon thread: a prompt that timed out leaves no reader
        behind that would take the next prompt's answer or hold up the runner's exit. A line that
        arrived after its prompt had timed out answers nothing and is dropped."""
        if self._reading is not None and not self._reading.done():
            return self._reading  # the reader of a prompt that timed out is still waiting: share it
        loop = asyncio.get_running_loop()
        reading: asyncio.Future[str] = loop.create_future()

        def deliver(line: str) -> None:
            if not reading.done():
                reading.set_result(line)

        def read() -> None:
            try:
                line = self._input.readline()
            except (OSError, ValueError):  # closed or unreadable input: no answer
                line = ""
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is asking any more
                loop.call_soon_threadsafe(deliver, line)

        threading.Thread(target=read, name="hil-console-input", daemon=True).start()
        self._reading = reading
        return reading


@dataclass
class ScriptedOperator:
    """Answers with ``handler`` (e.g. performing the action on simulators that stand in for the rig's
    hardware); records every prompt shown, in order."""

    handler: Callable[[Prompt], Awaitable[bool]]
    shown: list[Prompt] = field(default_factory=list)

    async def ask(self, prompt: Prompt) -> bool:
        self.shown.append(prompt)
        try:
            async with asyncio.timeout(prompt.timeout_s):
                return await self.handler(prompt)
        except TimeoutError:
            raise PromptTimeout(f"no answer to {prompt.text!r} within {prompt.timeout_s:g} s") from None
