"""The task-leak guard itself: a leaking test must fail (checked with pytester)."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]


def test_leak_guard_fails_a_leaking_test(pytester: pytest.Pytester) -> None:
    pytester.makeconftest((__import__("pathlib").Path(__file__).parent / "conftest.py").read_text())
    pytester.makepyfile(
        """
        import asyncio

        async def test_leaks():
            asyncio.get_running_loop().create_task(asyncio.sleep(3600), name="forgotten")

        async def test_clean():
            await asyncio.sleep(0)
        """
    )
    result = pytester.runpytest(
        "-p", "asyncio", "-o", "asyncio_mode=auto", "-o", "asyncio_default_fixture_loop_scope=function"
    )
    result.assert_outcomes(passed=2, errors=1)  # teardown error of test_leaks
    result.stdout.fnmatch_lines(["*leaked 1 task(s): forgotten*"])
