"""Send windows: a physician's business hours, in the physician's own time zone.

A window is written the way a practice owner would say it:
``"Mon-Fri 08:00-17:00"`` or ``"Mon,Wed,Fri 09:00-12:30"``. Non-urgent
mail waits (``not_before``) for the window's next opening; it is never
dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
WINDOW_RE = re.compile(r"^\s*([A-Za-z,\-\s]+?)\s+(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


@dataclass(frozen=True)
class Window:
    days: frozenset[int]  # 0 = Monday
    start: time
    end: time

    def contains(self, local: datetime) -> bool:
        return local.weekday() in self.days and self.start <= local.time() < self.end

    def next_opening(self, moment: datetime, tz: ZoneInfo) -> datetime:
        """``moment`` itself if inside the window, else when the window next opens."""
        local = moment.astimezone(tz)
        if self.contains(local):
            return moment
        for offset in range(8):
            day = local.date() + timedelta(days=offset)
            opening = datetime.combine(day, self.start, tz)
            if day.weekday() in self.days and opening > local:
                return opening
        raise AssertionError("a window with at least one day always opens within a week")

    def __str__(self) -> str:
        names = ",".join(DAYS[d].title() for d in sorted(self.days))
        return f"{names} {self.start:%H:%M}-{self.end:%H:%M}"


def physician_zone(timezone: str | None, practice: ZoneInfo) -> ZoneInfo:
    """A physician's own time zone, or the practice's when none is recorded for them."""
    return ZoneInfo(timezone) if timezone else practice


def parse_window(text: str) -> Window:
    """Parse ``"Mon-Fri 08:00-17:00"``; ValueError with a readable reason."""
    match = WINDOW_RE.match(text or "")
    if not match:
        raise ValueError(f"{text!r} is not a send window like 'Mon-Fri 08:00-17:00'")
    days = _parse_days(match[1])
    try:
        start, end = time(int(match[2]), int(match[3])), time(int(match[4]), int(match[5]))
    except ValueError:
        raise ValueError(f"{text!r}: hours must be between 00:00 and 23:59") from None
    if start >= end:
        raise ValueError(f"{text!r}: the window must open before it closes")
    return Window(frozenset(days), start, end)


def _parse_days(text: str) -> set[int]:
    days: set[int] = set()
    for part in re.split(r"\s*,\s*", text.strip().lower()):
        bounds = [b.strip()[:3] for b in part.split("-")]
        if len(bounds) > 2 or any(b not in DAYS for b in bounds):
            raise ValueError(f"{text!r}: days are Mon, Tue, Wed, Thu, Fri, Sat, Sun (e.g. Mon-Fri)")
        first, last = DAYS.index(bounds[0]), DAYS.index(bounds[-1])
        days.update(range(first, last + 1) if first <= last else [*range(first, 7), *range(0, last + 1)])
    return days
