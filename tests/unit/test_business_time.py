"""Business time (SPEC §4): working hours, holidays, time zones, DST, and the add/measure pair."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.business_time import Calendar, add, between, parse_spans

BERLIN = ZoneInfo("Europe/Berlin")
WEEK = {d: "09:00-18:00" for d in ("mon", "tue", "wed", "thu", "fri")}


def local(zone: ZoneInfo, *args: int) -> datetime:
    return datetime(*args, tzinfo=zone)  # type: ignore[misc]


def test_friday_afternoon_plus_four_hours_is_monday_noon() -> None:
    """Friday 17:00 + 4 business hours of Mon–Fri 09:00–18:00 is Monday 12:00 local."""
    cal = Calendar.build("Europe/Berlin", WEEK)
    due = add(cal, local(BERLIN, 2026, 3, 6, 17, 0), timedelta(hours=4))
    assert due.astimezone(BERLIN) == local(BERLIN, 2026, 3, 9, 12, 0)


def test_a_holiday_monday_moves_it_to_tuesday() -> None:
    """The same with Monday a holiday: Tuesday 12:00."""
    cal = Calendar.build("Europe/Berlin", WEEK, [date(2026, 3, 9)])
    due = add(cal, local(BERLIN, 2026, 3, 6, 17, 0), timedelta(hours=4))
    assert due.astimezone(BERLIN) == local(BERLIN, 2026, 3, 10, 12, 0)


def test_two_zones_keep_their_own_clocks() -> None:
    """The same UTC instant and target land on each branch's own local noon."""
    ny = ZoneInfo("America/New_York")
    berlin = Calendar.build("Europe/Berlin", WEEK)
    new_york = Calendar.build("America/New_York", WEEK)
    start = datetime(2026, 3, 6, 16, 0, tzinfo=UTC)  # Berlin 17:00, New York 11:00
    assert add(berlin, start, timedelta(hours=4)).astimezone(BERLIN) == local(
        BERLIN, 2026, 3, 9, 12, 0
    )
    assert add(new_york, start, timedelta(hours=4)).astimezone(ny) == local(ny, 2026, 3, 6, 15, 0)


def test_autumn_dst_change_lands_on_the_right_instant() -> None:
    """Round-the-clock work across the night of 25 Oct 2026 (03:00 CEST → 02:00 CET): 4 real
    hours from 00:00 local is 03:00 local (02:00 UTC), not the wall clock's 04:00; office
    hours after the change count in CET."""
    allday = Calendar.build("Europe/Berlin", {})
    due = add(allday, local(BERLIN, 2026, 10, 25, 0, 0), timedelta(hours=4))
    assert due == datetime(2026, 10, 25, 2, 0, tzinfo=UTC)
    assert due.astimezone(BERLIN).hour == 3
    cal = Calendar.build("Europe/Berlin", WEEK)
    # Friday 23 Oct 16:00 CEST + 4h → Mon 26 Oct 11:00 CET (= 10:00 UTC, not 09:00)
    due = add(cal, local(BERLIN, 2026, 10, 23, 16, 0), timedelta(hours=4))
    assert due == datetime(2026, 10, 26, 10, 0, tzinfo=UTC)


def test_excluded_intervals_do_not_count() -> None:
    """A pause inside working time pushes the deadline by exactly its working part."""
    cal = Calendar.build("Europe/Berlin", WEEK)
    start = local(BERLIN, 2026, 3, 9, 9, 0)
    pause = (local(BERLIN, 2026, 3, 9, 10, 0), local(BERLIN, 2026, 3, 9, 12, 30))
    assert add(cal, start, timedelta(hours=4), [pause]).astimezone(BERLIN) == local(
        BERLIN, 2026, 3, 9, 15, 30
    )


def test_spans_are_checked() -> None:
    """Split days parse; reversed or overlapping spans are refused."""
    assert parse_spans("09:00-12:00, 13:00-18:00") == ((540, 720), (780, 1080))
    assert parse_spans("00:00-24:00") == ((0, 1440),)
    for bad in ("18:00-09:00", "9-5", "09:00-12:00,11:00-13:00", "25:00-26:00"):
        with pytest.raises(ValueError):
            parse_spans(bad)


def test_no_working_time_is_refused() -> None:
    """A calendar without working days cannot place a deadline (it would never end)."""
    cal = Calendar.build("UTC", {"mon": "09:00-10:00"}, [])
    none = Calendar("UTC", tuple(() for _ in range(7)))
    with pytest.raises(ValueError):
        add(none, datetime(2026, 1, 1, tzinfo=UTC), timedelta(hours=1))
    assert between(none, datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 9, tzinfo=UTC)) == (
        timedelta(0)
    )
    assert between(cal, datetime(2026, 1, 5, tzinfo=UTC), datetime(2026, 1, 13, tzinfo=UTC)) == (
        timedelta(hours=2)
    )


_ZONES = st.sampled_from(
    ["Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe", "UTC"]
)


@st.composite
def calendars(draw: st.DrawFn) -> Calendar:
    week = []
    for _ in range(7):
        n = draw(st.integers(0, 2))
        points = sorted(draw(st.sets(st.integers(0, 96), min_size=2 * n, max_size=2 * n)))
        week.append(tuple((points[i] * 15, points[i + 1] * 15) for i in range(0, len(points), 2)))
    if not any(week):
        week[draw(st.integers(0, 6))] = ((540, 1020),)
    start = date(2026, 1, 1)
    holidays = draw(
        st.sets(st.integers(0, 400).map(lambda k: start + timedelta(days=k)), max_size=30)
    )
    return Calendar(draw(_ZONES), tuple(week), frozenset(holidays))


_INSTANTS = st.integers(0, 365 * 24 * 60).map(
    lambda m: datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=m)
)
_AMOUNTS = st.integers(0, 200 * 60).map(lambda m: timedelta(minutes=m, seconds=m % 7))


@st.composite
def pauses(draw: st.DrawFn) -> list[tuple[datetime, datetime]]:
    out = []
    for _ in range(draw(st.integers(0, 4))):
        a = draw(_INSTANTS)
        out.append((a, a + timedelta(minutes=draw(st.integers(1, 5 * 24 * 60)))))
    return out


@settings(max_examples=150, deadline=None)
@given(cal=calendars(), start=_INSTANTS, amount=_AMOUNTS, excluded=pauses())
def test_add_then_measure_round_trips(
    cal: Calendar, start: datetime, amount: timedelta, excluded: list[tuple[datetime, datetime]]
) -> None:
    """For any calendar and pauses, measuring from start to start + d gives back d."""
    due = add(cal, start, amount, excluded)
    assert due >= start
    assert between(cal, start, due, excluded) == amount


@settings(max_examples=150, deadline=None)
@given(
    cal=calendars(),
    start=_INSTANTS,
    a=_AMOUNTS,
    b=_AMOUNTS,
    excluded=pauses(),
    x=st.integers(0, 30 * 24 * 60),
    y=st.integers(0, 30 * 24 * 60),
)
def test_business_time_is_monotonic(
    cal: Calendar,
    start: datetime,
    a: timedelta,
    b: timedelta,
    excluded: list[tuple[datetime, datetime]],
    x: int,
    y: int,
) -> None:
    """More business time never lands earlier; a later end never measures less."""
    lo, hi = sorted((a, b))
    assert add(cal, start, lo, excluded) <= add(cal, start, hi, excluded)
    t1, t2 = sorted((start + timedelta(minutes=x), start + timedelta(minutes=y)))
    assert between(cal, start, t1, excluded) <= between(cal, start, t2, excluded)
    assert between(cal, start, t2, excluded) <= t2 - start
