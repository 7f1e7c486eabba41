"""The e2e fixtures (one Mosquitto per module, the Station factory, log attachment on failure)."""

from __future__ import annotations

from tests.e2e.conftest import (
    e2e_broker,
    pytest_runtest_makereport,
    requires_agent,
    station_factory,
)

__all__ = ["e2e_broker", "pytest_runtest_makereport", "requires_agent", "station_factory"]
