"""Calendar-aligned date windows, and how they are rendered into a CML job's environment.

Pure Python (stdlib + pydantic); never imports prefect.

A :class:`Window` is a half-open range of calendar dates ``[start, end)``: ``end`` is the first
day of the *next* window. A :class:`Cadence` (unit, every N, week start, time zone) cuts the
calendar into consecutive windows. A :class:`Rendering` turns a window into environment
variables, by default ``START_DATE=2017-01-01`` / ``END_DATE=2017-01-31`` for January 2017
(inclusive last day).

Anchors (fixed, so alignment never depends on the range asked):

* days: counted from 1970-01-01. Every N days = windows starting on 1970-01-01 + k*N days.
* weeks: counted from the week containing 1970-01-01 (a Thursday), starting on the
  configured week start (Monday 1969-12-29 by default; Sunday 1969-12-28 if weeks start on
  Sunday). Every N weeks = windows starting on that day + k*N weeks.
* months, quarters and years share one anchor: January of (proleptic) year 0. Hence
  every 3 months == quarters, every 6 months == halves (Jan/Jul), every 12k months ==
  every k years; every 2 years starts in even years (2016, 2018),
  every 10 years are decades 2010-2019, every 100 years are 1900-1999.

The time zone only matters to turn an instant into a local date (:func:`window_for`); windows
themselves are calendar dates, so a day skipped in some zone (Pacific/Kiritimati skipped
1994-12-31) is still a window. Windows must lie within 0001-01-01..9999-12-31; a window that
would start before or end after that range is a :class:`CMLInputError`.
"""

from __future__ import annotations

import difflib
import functools
import re
from datetime import date, datetime, timedelta
from enum import StrEnum
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from cml_tasks._text import printable
from cml_tasks.environment import ENV_NAME
from cml_tasks.errors import CMLInputError

__all__ = [
    "MAX_WINDOWS",
    "Cadence",
    "Rendering",
    "Unit",
    "Window",
    "explicit_window",
    "make_rendering",
    "parse_date",
    "parse_every",
    "window_for",
    "windows_between",
]

_EPOCH = date(1970, 1, 1)
MAX_WINDOWS = 100_000
"""Most windows one range may hold (274 years of days): a range beyond it is a typo, and
building it would take minutes and gigabytes before anything is shown or started."""
MAX_EVERY_DIGITS = 6
"""Digits of a cadence's count: 999999 days is 2,700 years, past any supported date."""
_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


class Unit(StrEnum):
    """The calendar unit a cadence counts in."""

    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    QUARTER = "quarter"
    YEAR = "year"


# Words accepted for each unit (lower case): singular, plural, adjective.
_UNIT_WORDS: dict[str, Unit] = {}
for _u, _adj in (
    (Unit.DAY, "daily"),
    (Unit.WEEK, "weekly"),
    (Unit.MONTH, "monthly"),
    (Unit.QUARTER, "quarterly"),
    (Unit.YEAR, "yearly"),
):
    _UNIT_WORDS[_u.value] = _u
    _UNIT_WORDS[_u.value + "s"] = _u
    _UNIT_WORDS[_adj] = _u

_EVERY_FORMS = (
    "day/daily/days, week/weekly/weeks, month/monthly/months, quarter/quarterly/quarters, "
    "year/yearly/years, optionally preceded by a count N >= 1 and/or 'every' "
    "(e.g. 'month', '3 months', 'every 2 weeks')"
)
_EVERY_RE = re.compile(r"(?:every\s+)?(?:(\d+)\s*)?([a-z]+)")


def _unit_from_word(word: str) -> Unit | None:
    return _UNIT_WORDS.get(word.strip().lower())


@functools.cache
def _zone_names() -> frozenset[str]:
    return frozenset(available_timezones() - {"localtime"})


def _zone(key: object) -> ZoneInfo:
    """The ZoneInfo for an IANA key, or CMLInputError (with close matches) if unknown."""
    if not isinstance(key, str):
        raise CMLInputError(f"time zone must be an IANA name such as 'Europe/Berlin', got {key!r}")
    return _load_zone(key)


@functools.cache
def _load_zone(key: str) -> ZoneInfo:
    if key in _zone_names():
        try:
            return ZoneInfo(key)
        except (OSError, ValueError, KeyError):  # pragma: no cover - listed but unloadable
            pass
    hint = ""
    if key.strip():
        by_lower = {name.lower(): name for name in _zone_names()}
        close = difflib.get_close_matches(key.strip().lower(), list(by_lower), n=3, cutoff=0.6)
        if close:
            hint = " Did you mean " + " or ".join(repr(by_lower[c]) for c in close) + "?"
    raise CMLInputError(
        f"unknown time zone {key!r}: use an IANA name such as 'UTC', 'Europe/Berlin' "
        f"or 'America/New_York'.{hint}"
    )


def _week_start_from(value: object) -> int:
    if isinstance(value, bool):
        raise CMLInputError(f"invalid week start {value!r}: use 0..6 (0=Monday) or a day name")
    if isinstance(value, int):
        if 0 <= value <= 6:
            return value
    elif isinstance(value, str):
        text = value.strip().lower()
        if text.isdigit() and 0 <= int(text) <= 6:
            return int(text)
        for i, name in enumerate(_WEEKDAYS):
            if text in (name, name[:3]):
                return i
    raise CMLInputError(
        f"invalid week start {value!r}: use 0..6 (0=Monday .. 6=Sunday) or a day name "
        "such as 'monday' or 'sun'"
    )


def _check_plain_date(value: object, what: str) -> date:
    if isinstance(value, datetime) or not isinstance(value, date):
        raise CMLInputError(
            f"{what} must be a datetime.date (not {type(value).__name__}): {value!r}"
        )
    return value


def _month_start(month_index: int) -> date:
    """First day of the month numbered from January of year 0 (index = 12*year + month - 1)."""
    year, month0 = divmod(month_index, 12)
    if not 1 <= year <= 9999:
        raise CMLInputError(
            f"window boundary in year {year} is outside the supported dates 0001-01-01..9999-12-31"
        )
    return date(year, month0 + 1, 1)


def _add_days(anchor: date, days: int) -> date:
    try:
        return anchor + timedelta(days=days)
    except OverflowError:
        raise CMLInputError(
            f"window boundary {days:+d} days from {anchor.isoformat()} is outside the "
            "supported dates 0001-01-01..9999-12-31"
        ) from None


class Window(BaseModel):
    """Dates ``[start, end)``: ``start`` is the first day, ``end`` the first day after."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    start: date
    end: date

    @model_validator(mode="after")
    def _end_after_start(self) -> Window:
        if self.end <= self.start:
            raise ValueError(
                f"window end {self.end.isoformat()} (exclusive) must be after its start "
                f"{self.start.isoformat()}"
            )
        return self

    @property
    def last_day(self) -> date:
        """The last day in the window (inclusive)."""
        return self.end - timedelta(days=1)

    @property
    def days(self) -> int:
        """Number of days in the window."""
        return (self.end - self.start).days

    @property
    def label(self) -> str:
        """Short human label, derived from the dates alone.

        One day -> ``2017-01-05``; a calendar month -> ``2017-01``; a calendar quarter ->
        ``2017-Q1``; a calendar year -> ``2017``; anything else (weeks, every-N days...) ->
        ``2017-01-02..2017-01-08`` (inclusive last day). So "every 3 months" windows are
        labelled like quarters and "every 12 months" like years: they are the same windows.
        """
        s, e = self.start, self.end
        if self.days == 1:
            return s.isoformat()
        if s.day == 1 and e.day == 1:
            months = (e.year - s.year) * 12 + e.month - s.month
            if months == 1:
                return f"{s.year:04d}-{s.month:02d}"
            if months == 3 and s.month in (1, 4, 7, 10):
                return f"{s.year:04d}-Q{(s.month - 1) // 3 + 1}"
            if months == 12 and s.month == 1:
                return f"{s.year:04d}"
        return f"{s.isoformat()}..{self.last_day.isoformat()}"

    def __contains__(self, item: object) -> bool:
        if isinstance(item, datetime) or not isinstance(item, date):
            return False
        return self.start <= item < self.end

    def __str__(self) -> str:
        return self.label


class Cadence(BaseModel):
    """How the calendar is cut into windows: every ``every`` ``unit``s, aligned on fixed anchors.

    ``week_start`` (0=Monday..6=Sunday; names like "sunday" accepted) matters only for weeks;
    ``timezone`` (IANA name) only to turn instants into local dates. A plain string such as
    ``"3 months"`` validates as :func:`parse_every` would parse it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    unit: Unit = Unit.MONTH
    every: int = Field(default=1, ge=1)
    week_start: int = Field(default=0, ge=0, le=6)
    timezone: str = "UTC"

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, data: Any) -> Any:
        if isinstance(data, str):
            return _parse_every_fields(data)
        return data

    @field_validator("unit", mode="before")
    @classmethod
    def _unit_aliases(cls, value: Any) -> Any:
        if isinstance(value, str) and not isinstance(value, Unit):
            unit = _unit_from_word(value)
            if unit is None:
                raise ValueError(f"unknown unit {value!r}: accepted {_EVERY_FORMS}")
            return unit
        return value

    @field_validator("week_start", mode="before")
    @classmethod
    def _week_start_names(cls, value: Any) -> int:
        return _week_start_from(value)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        _zone(value)
        return value

    @property
    def zone(self) -> ZoneInfo:
        return _zone(self.timezone)

    # Windows are numbered by an integer index; index i covers [_start(i), _start(i + 1)).
    def _months_per_window(self) -> int:
        return self.every * {Unit.MONTH: 1, Unit.QUARTER: 3, Unit.YEAR: 12}[self.unit]

    def _day_anchor(self) -> tuple[date, int]:
        if self.unit is Unit.DAY:
            return _EPOCH, self.every
        anchor = _EPOCH - timedelta(days=(_EPOCH.weekday() - self.week_start) % 7)
        return anchor, 7 * self.every

    def _index(self, d: date) -> int:
        if self.unit in (Unit.DAY, Unit.WEEK):
            anchor, step = self._day_anchor()
            return (d - anchor).days // step
        return (d.year * 12 + d.month - 1) // self._months_per_window()

    def _start(self, index: int) -> date:
        if self.unit in (Unit.DAY, Unit.WEEK):
            anchor, step = self._day_anchor()
            return _add_days(anchor, index * step)
        return _month_start(index * self._months_per_window())

    def _window(self, index: int) -> Window:
        return Window(start=self._start(index), end=self._start(index + 1))

    def window_containing(self, d: date) -> Window:
        """The window that contains date ``d``."""
        return self._window(self._index(_check_plain_date(d, "date")))

    def next_start(self, d: date) -> date:
        """The first day of the window after the one containing ``d`` (first boundary > d)."""
        return self._start(self._index(_check_plain_date(d, "date")) + 1)

    def shift(self, window: Window, n: int) -> Window:
        """The window ``n`` windows after (n > 0) or before (n < 0) the one starting ``window``."""
        return self._window(self._index(window.start) + n)

    def local_date(self, instant: datetime) -> date:
        """The calendar date of a timezone-aware ``instant`` in this cadence's time zone."""
        if not isinstance(instant, datetime):
            raise CMLInputError(
                f"instant must be a timezone-aware datetime, got {type(instant).__name__}: "
                f"{instant!r}"
            )
        if instant.tzinfo is None or instant.utcoffset() is None:
            raise CMLInputError(
                f"instant {instant.isoformat()} is naive: pass a timezone-aware datetime "
                "(e.g. datetime(..., tzinfo=ZoneInfo('UTC'))) so its local date is unambiguous"
            )
        return instant.astimezone(self.zone).date()

    def __str__(self) -> str:
        name = self.unit.value if self.every == 1 else f"{self.every} {self.unit.value}s"
        text = f"every {name}"
        if self.unit is Unit.WEEK:
            text += f" starting {_WEEKDAYS[self.week_start].capitalize()}"
        return f"{text} ({self.timezone})"


def _parse_every_fields(text: str) -> dict[str, Any]:
    if not isinstance(text, str):
        raise CMLInputError(f"cadence must be text such as '3 months', got {text!r}")
    match = _EVERY_RE.fullmatch(" ".join(text.strip().lower().split()))
    unit = _unit_from_word(match.group(2)) if match else None
    if match is None or unit is None:
        raise CMLInputError(f"unknown frequency {text!r}: accepted {_EVERY_FORMS}")
    count = match.group(1)
    if count is not None and len(count.lstrip("0")) > MAX_EVERY_DIGITS:
        # int() refuses over 4,300 digits with a ValueError; a count this long is a typo.
        shown = printable(repr(text)[:40]) + ("..." if len(text) > 40 else "")
        raise CMLInputError(f"frequency {shown}: the count has more than {MAX_EVERY_DIGITS} digits")
    if count is not None:
        if match.group(2) in ("daily", "weekly", "monthly", "quarterly", "yearly"):
            raise CMLInputError(
                f"unknown frequency {text!r}: write '{count} {unit.value}s', "
                f"not '{count} {match.group(2)}'"
            )
        if int(count) < 1:
            raise CMLInputError(f"frequency {text!r}: the count must be at least 1")
    return {"unit": unit, "every": int(count) if count is not None else 1}


def parse_every(text: str, *, week_start: int | str = 0, timezone: str = "UTC") -> Cadence:
    """Parse "month", "monthly", "months", "3 months", "every 2 weeks", "quarter"... (any case).

    Raises CMLInputError listing the accepted forms for anything else.
    """
    fields = _parse_every_fields(text)
    return Cadence(
        unit=fields["unit"],
        every=fields["every"],
        week_start=_week_start_from(week_start),
        timezone=_zone(timezone).key,
    )


def parse_date(text: str) -> date:
    """Parse an ISO date ``YYYY-MM-DD`` (CLI/flow parameters), or raise CMLInputError."""
    value = text.strip() if isinstance(text, str) else text
    if not isinstance(value, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise CMLInputError(f"invalid date {text!r}: expected YYYY-MM-DD, e.g. 2017-01-31")
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise CMLInputError(f"invalid date {text!r}: {exc}") from None


def windows_between(start: date, end: date, cadence: Cadence) -> list[Window]:
    """The cadence's windows overlapping the inclusive date range ``[start, end]``, in order.

    Windows are calendar-aligned, so the first may begin before ``start`` and the last may end
    after ``end``; together they tile ``[first.start, last.end)`` with no gap or overlap.
    """
    start = _check_plain_date(start, "start")
    end = _check_plain_date(end, "end")
    if end < start:
        raise CMLInputError(
            f"end {end.isoformat()} is before start {start.isoformat()}: "
            "the range is inclusive, so end must be on or after start"
        )
    first, last = cadence._index(start), cadence._index(end)
    if last - first + 1 > MAX_WINDOWS:
        raise CMLInputError(
            f"{start.isoformat()}..{end.isoformat()} holds {last - first + 1:,} windows of "
            f"{cadence}, more than the maximum of {MAX_WINDOWS:,} (MAX_WINDOWS): "
            "choose a shorter range or a longer cadence"
        )
    starts = [cadence._start(i) for i in range(first, last + 2)]
    return [Window(start=a, end=b) for a, b in pairwise(starts)]


def window_for(instant: datetime, cadence: Cadence, lag: int = 1) -> Window:
    """The window for a timezone-aware ``instant``, looked at in the cadence's time zone.

    ``lag=1`` (default): the last complete window before the instant (scheduled runs: on
    2017-02-01 a monthly cadence gives January 2017). ``lag=0``: the window in progress, the one
    containing the instant's local date. ``lag=k``: k windows before the one in progress.
    """
    if isinstance(lag, bool) or not isinstance(lag, int) or lag < 0:
        raise CMLInputError(
            f"lag must be an integer >= 0 (0 = window in progress, 1 = last complete), got {lag!r}"
        )
    local = cadence.local_date(instant)
    return cadence._window(cadence._index(local) - lag)


class Rendering(BaseModel):
    """How a window becomes the job's environment variables.

    Defaults give ``START_DATE=2017-01-01``, ``END_DATE=2017-01-31`` for January 2017
    (``inclusive_end=True``: the last day). With ``inclusive_end=False`` the end is the first
    day after the window (``END_DATE=2017-02-01``). ``date_format`` is a strftime format.
    ``extra`` variables are added verbatim and may not reuse the start/end names.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    start_var: str = "START_DATE"
    end_var: str = "END_DATE"
    date_format: str = "%Y-%m-%d"
    inclusive_end: bool = True
    extra: dict[str, str] = Field(default_factory=dict)

    @field_validator("start_var", "end_var")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not ENV_NAME.fullmatch(value):
            raise ValueError(
                f"invalid environment variable name {value!r}: use letters, digits and "
                "underscores, not starting with a digit"
            )
        return value

    @field_validator("date_format")
    @classmethod
    def _renders_a_date(cls, value: str) -> str:
        probes = (date(1999, 12, 31), date(2001, 2, 3), date(2004, 5, 6))
        try:
            rendered = {d.strftime(value) for d in probes}
        except (ValueError, UnicodeError) as exc:
            raise ValueError(f"invalid date format {value!r}: {exc}") from None
        if len(rendered) < 2:
            raise ValueError(
                f"date format {value!r} renders no date (different dates give the same "
                f"text {rendered.pop()!r}): use strftime codes such as '%Y-%m-%d' or '%Y%m%d'"
            )
        return value

    @field_validator("extra")
    @classmethod
    def _valid_extra(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not ENV_NAME.fullmatch(name):
                raise ValueError(
                    f"invalid environment variable name {name!r} in extra: use letters, "
                    "digits and underscores, not starting with a digit"
                )
            if "\x00" in text:
                raise ValueError(f"extra variable {name!r} contains a NUL character")
        return value

    @model_validator(mode="after")
    def _distinct_names(self) -> Rendering:
        if self.start_var == self.end_var:
            raise ValueError(f"start_var and end_var must differ (both are {self.start_var!r})")
        clash = sorted({self.start_var, self.end_var} & set(self.extra))
        if clash:
            raise ValueError(
                f"extra variables may not override the window variables: {', '.join(clash)}"
            )
        return self

    def render_date(self, d: date) -> str:
        """One date in ``date_format`` (the default ISO format is always 4-digit years)."""
        if self.date_format == "%Y-%m-%d":
            return d.isoformat()
        return d.strftime(self.date_format)

    def environment(self, window: Window) -> dict[str, str]:
        """The variables to send for ``window``: start, end, then the extras."""
        end = window.last_day if self.inclusive_end else window.end
        return {
            self.start_var: self.render_date(window.start),
            self.end_var: self.render_date(end),
            **self.extra,
        }


def make_rendering(
    *,
    start_var: str = "START_DATE",
    end_var: str = "END_DATE",
    date_format: str = "%Y-%m-%d",
    inclusive_end: bool = True,
    extra: dict[str, str] | None = None,
) -> Rendering:
    """A :class:`Rendering` from flat options (CLI, flow parameters), else a CMLInputError.

    Callers outside pydantic then see one error type, with each problem stated plainly.
    """
    try:
        return Rendering(
            start_var=start_var,
            end_var=end_var,
            date_format=date_format,
            inclusive_end=inclusive_end,
            extra=extra or {},
        )
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"])
            message = str(error["msg"]).removeprefix("Value error, ")
            problems.append(f"{where}: {message}" if where else message)
        raise CMLInputError("invalid rendering options: " + "; ".join(problems)) from None


def explicit_window(cadence: Cadence, first_day: date, last_day: date | None = None) -> Window:
    """The cadence's window starting on ``first_day`` (and, if given, ending on ``last_day``).

    A date range that is not exactly one window of the cadence is an error, not a custom
    window: a typo (``2017-01-30`` for ``2017-01-31``) must not quietly send a partial month.
    """
    first_day = _check_plain_date(first_day, "window start")
    window = cadence.window_containing(first_day)
    expected = f"{window.start.isoformat()}..{window.last_day.isoformat()}"
    if window.start != first_day:
        raise CMLInputError(
            f"window start {first_day.isoformat()} is not the first day of a window of "
            f"{cadence}: the window containing it is {expected}"
        )
    if last_day is not None and _check_plain_date(last_day, "window end") != window.last_day:
        raise CMLInputError(
            f"window {first_day.isoformat()}..{last_day.isoformat()} is not a window of "
            f"{cadence}: the window starting {first_day.isoformat()} is {expected} "
            "(the end is the last day, inclusive)"
        )
    return window
