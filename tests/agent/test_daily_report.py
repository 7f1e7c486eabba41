"""The daily reconciliation report task (REC-1, agent/upstream/port.py ``DailyReconciliation``): an injected
wall clock and sleep, the real adapter path (journal read, outbox append), no real waiting."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import jsonschema
import msgspec
import pytest
import yaml
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from agent.money.tariff import Tariff, TariffConfig
from agent.store.journal import Journal
from agent.store.outbox import Outbox
from agent.upstream.contract import ReconciliationReport, Topics
from agent.upstream.port import DAILY_REPORT_DELAY, DailyReconciliation, RuntimeAdapter, next_daily_run

ASYNCAPI_TEXT = (Path(__file__).resolve().parents[2] / "docs" / "asyncapi.yaml").read_text()

AMS = ZoneInfo("Europe/Amsterdam")


class _Done(Exception):
    pass


class _WallClock:
    """A wall clock that only moves when the task sleeps."""

    def __init__(self, start: datetime, *, until: datetime) -> None:
        self.now = start
        self.until = until
        self.sleeps: list[float] = []

    def __call__(self) -> datetime:
        return self.now

    async def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.now += timedelta(seconds=seconds)
        if self.now > self.until:
            raise _Done


@pytest.fixture
def adapter(tmp_path: Path) -> Iterator[tuple[RuntimeAdapter, Outbox]]:
    journal = Journal.open(tmp_path)
    outbox = Outbox(journal.path)
    tariff = Tariff(
        TariffConfig(
            currency="EUR",
            prices_include_vat=True,
            vat_rate_percent="21",
            energy_per_kwh="0.40",
            timezone="Europe/Amsterdam",
        )
    )
    runtime: Any = SimpleNamespace(
        station=SimpleNamespace(connectors={1: SimpleNamespace(pricer=tariff, session=None)}),
        tariff=tariff,
        connector_ids=(1,),
        journal=journal,
    )
    port = RuntimeAdapter(
        runtime, station_id="ST-1", topics=Topics("ST-1"), state_dir=str(tmp_path), outbox=outbox
    )
    try:
        yield port, outbox
    finally:
        outbox.close()
        journal.close()


def test_next_daily_run_is_local_midnight_plus_the_delay() -> None:
    # 2026-03-28 22:30 local (CET, UTC+1) → 2026-03-29 00:05 local = 23:05Z
    assert next_daily_run(datetime(2026, 3, 28, 21, 30, tzinfo=UTC), AMS) == datetime(
        2026, 3, 28, 23, 5, tzinfo=UTC
    )
    # exactly at the run time: the next one (strictly after)
    at = datetime(2026, 3, 28, 23, 5, tzinfo=UTC)
    assert next_daily_run(at, AMS) == at + timedelta(days=1) - timedelta(hours=1)  # CEST from the 29th
    # just after local midnight, before the delay: today's run
    assert next_daily_run(datetime(2026, 3, 28, 23, 1, tzinfo=UTC), AMS) == at


@pytest.mark.req("REC-1")
async def test_req_rec_1_daily_report_fires_once_a_day_for_the_previous_local_day(
    adapter: tuple[RuntimeAdapter, Outbox],
) -> None:
    port, outbox = adapter
    # 2026-03-28 10:00 local; runs over the DST change of 2026-03-29 for three days and a bit
    clock = _WallClock(
        datetime(2026, 3, 28, 9, 0, tzinfo=UTC), until=datetime(2026, 3, 31, 12, 0, tzinfo=UTC)
    )
    fired: list[datetime] = []
    publish = port.publish_report

    async def recording(day: date, **kw: Any) -> ReconciliationReport:
        fired.append(clock())
        return await publish(day, **kw)

    port.publish_report = recording  # type: ignore[method-assign]
    task = DailyReconciliation(port, clock=clock, sleep=clock.sleep)
    with pytest.raises(_Done):
        await task.run()

    # once a day, DAILY_REPORT_DELAY after local midnight (CET, then CEST)
    assert [t.astimezone(AMS).strftime("%Y-%m-%d %H:%M") for t in fired] == [
        "2026-03-29 00:05",
        "2026-03-30 00:05",
        "2026-03-31 00:05",
    ]
    assert timedelta(minutes=5) == DAILY_REPORT_DELAY
    assert max(clock.sleeps) <= DailyReconciliation.MAX_SLEEP_S  # slept in chunks

    rows = outbox.pending()
    assert [r.topic for r in rows] == ["evpay/v1/ST-1/reports/reconciliation"] * 3
    assert {r.kind for r in rows} == {"report"}
    reports = [msgspec.json.decode(r.payload, type=ReconciliationReport) for r in rows]
    assert [r.trigger for r in reports] == ["daily"] * 3
    assert [r.date for r in reports] == ["2026-03-28", "2026-03-29", "2026-03-30"]
    assert [r.report_id for r in reports] == [f"REC-ST-1-2026-03-{d}" for d in (28, 29, 30)]
    # the station's (tariff's) local day: CET then the 23-hour DST day then CEST
    assert [(r.period_start, r.period_end) for r in reports] == [
        ("2026-03-27T23:00:00.000Z", "2026-03-28T23:00:00.000Z"),
        ("2026-03-28T23:00:00.000Z", "2026-03-29T22:00:00.000Z"),
        ("2026-03-29T22:00:00.000Z", "2026-03-30T22:00:00.000Z"),
    ]
    assert all(r.correlation_id is None for r in reports)
    # the published payloads validate against the AsyncAPI document's schema (UP-1)
    doc = yaml.safe_load(ASYNCAPI_TEXT)
    registry: Registry[Any] = Registry().with_resource("urn:asyncapi", DRAFT202012.create_resource(doc))
    validator = jsonschema.Draft202012Validator(
        {"$ref": "urn:asyncapi#/components/schemas/ReconciliationReport"}, registry=registry
    )
    for r in rows:
        assert not [e.message for e in validator.iter_errors(msgspec.json.decode(r.payload))]


async def test_daily_report_skips_a_run_when_the_clock_jumps_by_days(
    adapter: tuple[RuntimeAdapter, Outbox],
) -> None:
    """A controller booting with a stale clock (no RTC) then set by NTP: no report of a stale day."""
    port, outbox = adapter
    clock = _WallClock(datetime(2026, 3, 2, 12, 0, tzinfo=UTC), until=datetime(2026, 3, 20, 0, 0, tzinfo=UTC))
    jumped = False

    async def sleep(seconds: float) -> None:
        nonlocal jumped
        if not jumped:
            jumped = True
            clock.now = datetime(2026, 3, 18, 12, 0, tzinfo=UTC)  # NTP sync
            return
        await clock.sleep(seconds)

    with pytest.raises(_Done):
        await DailyReconciliation(port, clock=clock, sleep=sleep).run()
    reports = [msgspec.json.decode(r.payload, type=ReconciliationReport) for r in outbox.pending()]
    assert [r.date for r in reports] == ["2026-03-18", "2026-03-19"]
