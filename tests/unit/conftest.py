"""tests/unit: every test runs inside a TrainingGuard (tier_guard.py); one that trains end to end fails
with a message saying so (a fixture that does, at its setup)."""
from __future__ import annotations

import pytest

from unit.tier_guard import TrainingGuard


def _guarded(phase: str):
    guard = TrainingGuard()
    with guard:
        result = yield
    message = guard.report()
    if message:
        pytest.fail(f"{phase}: {message}", pytrace=False)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    return (yield from _guarded("setup"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    return (yield from _guarded("call"))
