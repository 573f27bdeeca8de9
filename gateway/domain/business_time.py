"""Business time: a branch's weekly working hours, holidays and time zone, and durations in them.

SLA clocks (SPEC §4) count only the time a branch works. Everything here is computed on UTC
instants, one working interval at a time: a working day's local start and end are turned into
instants with the branch's zone (so a day across a DST change is as long as it really was), a
holiday has no interval, and ``excluded`` intervals (pauses) are cut out. ``add`` and
``between`` are inverse: ``between(s, add(s, d)) == d`` for every calendar with working time.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_SPAN = re.compile(r"^\s*(\d{2}):(\d{2})\s*-\s*(\d{2}):(\d{2})\s*$")
# A calendar that has no working time within this many days is refused (it would never end).
_HORIZON_DAYS = 3 * 366
_ZERO = timedelta(0)

Interval = tuple[datetime, datetime]


def parse_spans(text: str) -> tuple[tuple[int, int], ...]:
    """``"09:00-12:00, 13:00-18:00"`` → ((540, 720), (780, 1080)), minutes of the day;
    ``24:00`` ends a day. Raises ValueError on anything else (or an empty or reversed span)."""
    out: list[tuple[int, int]] = []
    for part in text.split(","):
        found = _SPAN.match(part)
        if not found:
            raise ValueError(f"{part.strip()!r} is not HH:MM-HH:MM")
        h1, m1, h2, m2 = (int(x) for x in found.groups())
        start, end = h1 * 60 + m1, h2 * 60 + m2
        if m1 > 59 or m2 > 59 or start >= 24 * 60 or end > 24 * 60 or end <= start:
            raise ValueError(f"{part.strip()!r} is not a span within one day")
        out.append((start, end))
    out.sort()
    for (_, e1), (s2, _) in pairwise(out):
        if s2 < e1:
            raise ValueError(f"{text!r}: spans overlap")
    return tuple(out)


@dataclass(frozen=True)
class Calendar:
    """When a branch works. ``week`` has seven entries, Monday first, each the day's spans in
    minutes; ``holidays`` are local dates without work."""

    timezone: str
    week: tuple[tuple[tuple[int, int], ...], ...]
    holidays: frozenset[date] = frozenset()

    @classmethod
    def build(
        cls, timezone: str, working_hours: Mapping[str, str], holidays: Iterable[date] = ()
    ) -> Calendar:
        """From the org file's shape: ``{"mon": "09:00-18:00", …}``. A branch that names no
        working hours works round the clock (holidays still excepted)."""
        if working_hours:
            week = tuple(parse_spans(working_hours[d]) if d in working_hours else () for d in DAYS)
        else:
            week = tuple(((0, 24 * 60),) for _ in DAYS)
        return cls(timezone, week, frozenset(holidays))

    def _zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def day_intervals(self, day: date) -> list[Interval]:
        """The working intervals of local ``day`` as UTC instants (none on a holiday)."""
        if day in self.holidays:
            return []
        zone = self._zone()
        out: list[Interval] = []
        for start, end in self.week[day.weekday()]:
            a = _instant(day, start, zone)
            b = _instant(day, end, zone)
            if b > a:  # a span inside a spring-forward gap can vanish
                out.append((a, b))
        return out

    def intervals_from(self, start: datetime, until: datetime | None = None) -> Iterator[Interval]:
        """Working intervals at or after ``start`` (the first one clipped to it), in order,
        up to the day of ``until`` or without end; raises ValueError when there is no working
        time within three years."""
        start = start.astimezone(UTC)
        last = (until.astimezone(self._zone()).date() + timedelta(days=1)) if until else None
        # The day before too: a local day's late span can lie after `start`'s UTC midnight.
        day = start.astimezone(self._zone()).date() - timedelta(days=1)
        idle = 0
        while last is None or day <= last:
            found = False
            for a, b in self.day_intervals(day):
                if b <= start:
                    continue
                found = True
                yield (max(a, start), b)
            idle = 0 if found else idle + 1
            if idle > _HORIZON_DAYS:
                raise ValueError(f"calendar {self.timezone} has no working time")
            day += timedelta(days=1)


def _instant(day: date, minute: int, zone: ZoneInfo) -> datetime:
    """Local wall time ``minute`` of ``day`` as a UTC instant (24:00 is the next midnight; a
    wall time that does not exist or exists twice takes the offset before the change)."""
    if minute >= 24 * 60:
        day, minute = day + timedelta(days=1), minute - 24 * 60
    local = datetime(day.year, day.month, day.day, minute // 60, minute % 60, tzinfo=zone)
    return local.astimezone(UTC)


def _cut(intervals: Iterator[Interval], excluded: Sequence[Interval]) -> Iterator[Interval]:
    """``intervals`` without the (sorted, UTC) ``excluded`` ones."""
    ex = sorted((a.astimezone(UTC), b.astimezone(UTC)) for a, b in excluded if b > a)
    i = 0
    for a, b in intervals:
        while i < len(ex) and ex[i][1] <= a:
            i += 1
        j = i
        while a < b:
            if j >= len(ex) or ex[j][0] >= b:
                yield (a, b)
                break
            xa, xb = ex[j]
            if xa > a:
                yield (a, xa)
            a = max(a, xb)
            j += 1


def add(
    cal: Calendar, start: datetime, amount: timedelta, excluded: Sequence[Interval] = ()
) -> datetime:
    """The instant at which ``amount`` of business time after ``start`` has passed (UTC).
    Zero is ``start`` itself; otherwise the result lies in working time (or at its end)."""
    if amount < _ZERO:
        raise ValueError("negative business time")
    start = start.astimezone(UTC)
    if amount == _ZERO:
        return start
    left = amount
    for a, b in _cut(cal.intervals_from(start), excluded):
        span = b - a
        if span >= left:
            return a + left
        left -= span
    raise AssertionError("unreachable: intervals_from never ends")


def between(
    cal: Calendar, start: datetime, end: datetime, excluded: Sequence[Interval] = ()
) -> timedelta:
    """Business time from ``start`` to ``end`` (zero when ``end`` is not after ``start``)."""
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    total = _ZERO
    if end <= start:
        return total
    for a, b in _cut(cal.intervals_from(start, end), excluded):
        if a >= end:
            break
        total += min(b, end) - a
    return total


_DURATION = re.compile(r"^\s*(?:(\d+)\s*h)?\s*(?:(\d+)\s*m(?:in)?)?\s*$", re.IGNORECASE)


def parse_duration(text: str) -> timedelta:
    """``"4h"``, ``"30m"``, ``"1h30m"``, ``"0m"`` → a duration (of business time, for SLA
    targets and escalation delays). Raises ValueError on anything else."""
    found = _DURATION.match(text)
    if not found or not text.strip() or found.group(0).strip() == "":
        raise ValueError(f"{text!r} is not a duration like 4h, 30m or 1h30m")
    hours, minutes = (int(x) if x else 0 for x in found.groups())
    if found.group(1) is None and found.group(2) is None:
        raise ValueError(f"{text!r} is not a duration like 4h, 30m or 1h30m")
    return timedelta(hours=hours, minutes=minutes)
