"""Tests for cml_tasks.windows: calendar-aligned windows, cadences, rendering, parsing."""

from __future__ import annotations

import calendar
import json
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from cml_tasks.errors import CMLInputError
from cml_tasks.windows import (
    Cadence,
    Rendering,
    Unit,
    Window,
    parse_date,
    parse_every,
    window_for,
    windows_between,
)

D = date
MONTHLY = Cadence()


def labels(ws: list[Window]) -> list[str]:
    return [w.label for w in ws]


def at(zone: str, y: int, m: int, d: int, hh: int = 0, mm: int = 0) -> datetime:
    return datetime(y, m, d, hh, mm, tzinfo=ZoneInfo(zone))


# --------------------------------------------------------------------------- the documented case


def test_documented_example_january_2017() -> None:
    (w,) = windows_between(D(2017, 1, 1), D(2017, 1, 31), MONTHLY)
    assert (w.start, w.end, w.last_day) == (D(2017, 1, 1), D(2017, 2, 1), D(2017, 1, 31))
    assert w.label == str(w) == "2017-01"
    assert Rendering().environment(w) == {"START_DATE": "2017-01-01", "END_DATE": "2017-01-31"}


def test_cli_year_of_months() -> None:
    ws = windows_between(D(2017, 1, 1), D(2017, 12, 31), parse_every("month"))
    assert labels(ws) == [f"2017-{m:02d}" for m in range(1, 13)]
    envs = [Rendering().environment(w) for w in ws]
    assert envs[1] == {"START_DATE": "2017-02-01", "END_DATE": "2017-02-28"}
    assert envs[-1] == {"START_DATE": "2017-12-01", "END_DATE": "2017-12-31"}


def test_scheduled_run_on_first_of_month_gives_previous_month() -> None:
    w = window_for(at("UTC", 2017, 2, 1, 6), MONTHLY)
    assert w.label == "2017-01"
    assert Rendering().environment(w) == {"START_DATE": "2017-01-01", "END_DATE": "2017-01-31"}


# --------------------------------------------------------------------------- each frequency


def test_daily() -> None:
    ws = windows_between(D(2017, 1, 30), D(2017, 2, 2), parse_every("daily"))
    assert labels(ws) == ["2017-01-30", "2017-01-31", "2017-02-01", "2017-02-02"]
    assert all(w.days == 1 for w in ws)
    assert ws[0].last_day == ws[0].start


def test_weekly_monday_default() -> None:
    ws = windows_between(D(2017, 1, 1), D(2017, 1, 10), parse_every("week"))
    # 2017-01-01 is a Sunday: its Monday-started week began 2016-12-26.
    assert labels(ws) == [
        "2016-12-26..2017-01-01",
        "2017-01-02..2017-01-08",
        "2017-01-09..2017-01-15",
    ]
    assert all(w.start.weekday() == 0 and w.days == 7 for w in ws)


def test_weekly_sunday_start() -> None:
    cad = parse_every("weekly", week_start="Sunday")
    assert cad.week_start == 6
    ws = windows_between(D(2017, 1, 1), D(2017, 1, 10), cad)
    assert labels(ws) == ["2017-01-01..2017-01-07", "2017-01-08..2017-01-14"]
    assert all(w.start.weekday() == 6 for w in ws)


@pytest.mark.parametrize(
    ("value", "expected"), [(0, 0), (6, 6), ("mon", 0), ("SUNDAY", 6), ("sat", 5), ("3", 3)]
)
def test_week_start_forms(value: int | str, expected: int) -> None:
    assert Cadence(unit=Unit.WEEK, week_start=value).week_start == expected


def test_quarterly() -> None:
    ws = windows_between(D(2016, 12, 31), D(2017, 12, 31), parse_every("quarterly"))
    assert labels(ws) == ["2016-Q4", "2017-Q1", "2017-Q2", "2017-Q3", "2017-Q4"]
    assert ws[1].start == D(2017, 1, 1) and ws[1].last_day == D(2017, 3, 31)
    assert Rendering().environment(ws[2]) == {"START_DATE": "2017-04-01", "END_DATE": "2017-06-30"}


def test_yearly() -> None:
    ws = windows_between(D(2016, 6, 1), D(2017, 1, 1), parse_every("yearly"))
    assert labels(ws) == ["2016", "2017"]
    assert ws[0].days == 366 and ws[1].days == 365
    assert Rendering().environment(ws[1]) == {"START_DATE": "2017-01-01", "END_DATE": "2017-12-31"}


# --------------------------------------------------------------------------- month ends, leap years


def test_month_ends() -> None:
    ws = windows_between(D(2017, 1, 31), D(2017, 3, 1), MONTHLY)
    assert [(w.start, w.last_day) for w in ws] == [
        (D(2017, 1, 1), D(2017, 1, 31)),
        (D(2017, 2, 1), D(2017, 2, 28)),
        (D(2017, 3, 1), D(2017, 3, 31)),
    ]
    assert MONTHLY.next_start(D(2017, 1, 31)) == D(2017, 2, 1)
    assert MONTHLY.next_start(D(2017, 1, 1)) == D(2017, 2, 1)


@pytest.mark.parametrize(
    ("year", "feb_days"), [(2016, 29), (2020, 29), (2017, 28), (1900, 28), (2000, 29), (2100, 28)]
)
def test_february_leap_years(year: int, feb_days: int) -> None:
    assert calendar.monthrange(year, 2)[1] == feb_days  # sanity of the expectation
    w = MONTHLY.window_containing(D(year, 2, 15))
    assert w.last_day == D(year, 2, feb_days)
    assert w.days == feb_days
    assert Rendering().environment(w)["END_DATE"] == f"{year}-02-{feb_days}"
    daily = parse_every("day")
    assert daily.next_start(D(year, 2, 28)) == (D(year, 2, 29) if feb_days == 29 else D(year, 3, 1))


def test_year_boundary() -> None:
    assert labels(windows_between(D(2016, 12, 31), D(2017, 1, 1), MONTHLY)) == [
        "2016-12",
        "2017-01",
    ]
    assert labels(windows_between(D(2016, 12, 31), D(2017, 1, 1), parse_every("day"))) == [
        "2016-12-31",
        "2017-01-01",
    ]
    # A week straddling the new year keeps its Monday start.
    (w,) = windows_between(D(2020, 12, 31), D(2021, 1, 1), parse_every("week"))
    assert w.label == "2020-12-28..2021-01-03"
    assert window_for(at("UTC", 2017, 1, 1, 0, 0), MONTHLY).label == "2016-12"
    assert window_for(at("UTC", 2017, 1, 1, 0, 0), parse_every("year")).label == "2016"


# --------------------------------------------------------------------------- every-N alignment


def test_every_3_months_is_quarters() -> None:
    a = windows_between(D(2017, 2, 10), D(2017, 11, 30), parse_every("3 months"))
    b = windows_between(D(2017, 2, 10), D(2017, 11, 30), parse_every("quarter"))
    assert a == b
    assert labels(a) == ["2017-Q1", "2017-Q2", "2017-Q3", "2017-Q4"]


def test_every_6_months_are_halves() -> None:
    ws = windows_between(D(2017, 3, 1), D(2017, 8, 1), parse_every("6 months"))
    assert labels(ws) == ["2017-01-01..2017-06-30", "2017-07-01..2017-12-31"]
    assert windows_between(D(2017, 3, 1), D(2017, 8, 1), parse_every("2 quarters")) == ws


def test_every_n_years_anchor() -> None:
    assert windows_between(D(2017, 5, 1), D(2017, 5, 1), parse_every("2 years"))[0].start == D(
        2016, 1, 1
    )
    decade = parse_every("10 years").window_containing(D(2017, 5, 1))
    assert (decade.start, decade.last_day) == (D(2010, 1, 1), D(2019, 12, 31))
    century = parse_every("100 years").window_containing(D(1999, 12, 31))
    assert (century.start, century.end) == (D(1900, 1, 1), D(2000, 1, 1))
    # Months and years share their anchor: every 24 months == every 2 years.
    assert parse_every("24 months").window_containing(D(2017, 5, 1)) == parse_every(
        "2 years"
    ).window_containing(D(2017, 5, 1))
    assert parse_every("12 months").window_containing(D(2017, 5, 1)).label == "2017"


def test_every_n_days_and_weeks_anchor() -> None:
    w = parse_every("10 days").window_containing(D(1970, 1, 15))
    assert (w.start, w.end) == (D(1970, 1, 11), D(1970, 1, 21))
    w = parse_every("3 days").window_containing(D(1969, 12, 31))
    assert (w.start, w.end) == (D(1969, 12, 29), D(1970, 1, 1))
    # Weeks: anchor is the week containing 1970-01-01 (Thursday), on the week start.
    assert parse_every("2 weeks").window_containing(D(1970, 1, 1)).start == D(1969, 12, 29)
    sunday = parse_every("2 weeks", week_start="sun")
    assert sunday.window_containing(D(1970, 1, 1)).start == D(1969, 12, 28)
    assert parse_every("2 weeks").window_containing(D(1970, 1, 12)).start == D(1970, 1, 12)
    assert parse_every("2 weeks").window_containing(D(1970, 1, 11)).start == D(1969, 12, 29)


@pytest.mark.parametrize("every", ["2 weeks", "10 days", "5 months", "3 years", "2 quarters"])
def test_every_n_alignment_independent_of_range(every: str) -> None:
    cad = parse_every(every)
    full = windows_between(D(2010, 1, 1), D(2020, 12, 31), cad)
    for lo, hi in [
        (D(2013, 7, 19), D(2015, 2, 2)),
        (D(2016, 2, 29), D(2016, 3, 1)),
        (D(2019, 1, 1), D(2020, 1, 1)),
    ]:
        part = windows_between(lo, hi, cad)
        assert part and all(w in full for w in part)
        assert part[0].start <= lo < part[0].end and part[-1].start <= hi < part[-1].end


def test_first_window_may_begin_before_start() -> None:
    (w,) = windows_between(D(2017, 1, 15), D(2017, 1, 20), MONTHLY)
    assert w.start == D(2017, 1, 1) and w.end == D(2017, 2, 1)


def test_shift_and_contains() -> None:
    jan = MONTHLY.window_containing(D(2017, 1, 9))
    assert MONTHLY.shift(jan, 1).label == "2017-02"
    assert MONTHLY.shift(jan, -1).label == "2016-12"
    assert MONTHLY.shift(jan, 0) == jan
    assert D(2017, 1, 31) in jan and D(2017, 2, 1) not in jan and D(2016, 12, 31) not in jan


# --------------------------------------------------------------------------- labels


@pytest.mark.parametrize(
    ("start", "end", "label"),
    [
        (D(2017, 1, 5), D(2017, 1, 6), "2017-01-05"),
        (D(2017, 1, 1), D(2017, 2, 1), "2017-01"),
        (D(2017, 12, 1), D(2018, 1, 1), "2017-12"),
        (D(2017, 1, 1), D(2017, 4, 1), "2017-Q1"),
        (D(2017, 10, 1), D(2018, 1, 1), "2017-Q4"),
        (D(2017, 2, 1), D(2017, 5, 1), "2017-02-01..2017-04-30"),
        (D(2017, 1, 1), D(2018, 1, 1), "2017"),
        (D(2017, 7, 1), D(2018, 7, 1), "2017-07-01..2018-06-30"),
        (D(2017, 1, 2), D(2017, 1, 9), "2017-01-02..2017-01-08"),
    ],
)
def test_labels(start: date, end: date, label: str) -> None:
    assert Window(start=start, end=end).label == label


# --------------------------------------------------------------------------- window_for, zones, DST


def test_berlin_just_after_midnight_on_the_first() -> None:
    berlin = Cadence(timezone="Europe/Berlin")
    instant = at("Europe/Berlin", 2017, 2, 1, 0, 30)
    assert instant == datetime(2017, 1, 31, 23, 30, tzinfo=UTC)
    assert window_for(instant, berlin).label == "2017-01"
    assert window_for(instant, berlin, lag=0).label == "2017-02"
    assert window_for(instant, berlin, lag=2).label == "2016-12"
    # The same instant given in UTC is converted to Berlin first.
    assert window_for(instant.astimezone(UTC), berlin, lag=0).label == "2017-02"
    # In UTC it is still January 31st.
    assert window_for(instant, MONTHLY, lag=0).label == "2017-01"


def test_berlin_dst_spring_forward() -> None:
    daily = parse_every("day", timezone="Europe/Berlin")
    # 2017-03-26 02:00 CET -> 03:00 CEST; 01:30 UTC is 03:30 local on the 26th.
    assert window_for(datetime(2017, 3, 26, 1, 30, tzinfo=UTC), daily, lag=0).label == "2017-03-26"
    assert window_for(datetime(2017, 3, 25, 22, 59, tzinfo=UTC), daily, lag=0).label == "2017-03-25"
    assert window_for(datetime(2017, 3, 25, 23, 0, tzinfo=UTC), daily, lag=0).label == "2017-03-26"
    # After DST (UTC+2): 22:00 UTC on the 31st is midnight April 1st.
    monthly = Cadence(timezone="Europe/Berlin")
    assert window_for(datetime(2017, 3, 31, 22, 0, tzinfo=UTC), monthly).label == "2017-03"
    assert window_for(datetime(2017, 3, 31, 21, 59, tzinfo=UTC), monthly).label == "2017-02"


def test_new_york_west_of_utc_and_fall_back() -> None:
    ny = Cadence(timezone="America/New_York")
    # 03:00 UTC on Feb 1st is still Jan 31st, 22:00 EST.
    instant = datetime(2017, 2, 1, 3, 0, tzinfo=UTC)
    assert window_for(instant, ny, lag=0).label == "2017-01"
    assert window_for(instant, ny).label == "2016-12"
    assert window_for(datetime(2017, 2, 1, 5, 0, tzinfo=UTC), ny).label == "2017-01"
    # 2017-11-05 01:30 happens twice; both are on the 5th.
    daily = parse_every("day", timezone="America/New_York")
    first = datetime(2017, 11, 5, 1, 30, tzinfo=ZoneInfo("America/New_York"))
    second = first.replace(fold=1)
    assert first.astimezone(UTC) != second.astimezone(UTC)
    assert window_for(first, daily, lag=0) == window_for(second, daily, lag=0)
    assert window_for(second, daily, lag=0).label == "2017-11-05"
    # Spring forward 2017-03-12: 07:30 UTC is 03:30 EDT.
    assert window_for(datetime(2017, 3, 12, 7, 30, tzinfo=UTC), daily).label == "2017-03-11"


def test_sydney_southern_summer_dst() -> None:
    syd = Cadence(timezone="Australia/Sydney")
    # January is AEDT (UTC+11): 13:30 UTC on Jan 31st is 00:30 on Feb 1st.
    instant = datetime(2017, 1, 31, 13, 30, tzinfo=UTC)
    assert window_for(instant, syd).label == "2017-01"
    assert window_for(instant, syd, lag=0).label == "2017-02"
    assert window_for(datetime(2017, 1, 31, 12, 59, tzinfo=UTC), syd, lag=0).label == "2017-01"
    # July is AEST (UTC+10): 14:00 UTC on Jun 30th is midnight July 1st.
    assert window_for(datetime(2017, 6, 30, 14, 0, tzinfo=UTC), syd, lag=0).label == "2017-07"
    assert window_for(datetime(2017, 6, 30, 13, 59, tzinfo=UTC), syd, lag=0).label == "2017-06"


def test_kolkata_half_hour_offset() -> None:
    kol = parse_every("quarter", timezone="Asia/Kolkata")
    # UTC+5:30: 18:30 UTC on Mar 31st is exactly midnight Apr 1st.
    assert window_for(datetime(2017, 3, 31, 18, 30, tzinfo=UTC), kol, lag=0).label == "2017-Q2"
    assert window_for(datetime(2017, 3, 31, 18, 30, tzinfo=UTC), kol).label == "2017-Q1"
    assert window_for(datetime(2017, 3, 31, 18, 29, 59, tzinfo=UTC), kol).label == "2016-Q4"


def test_kiritimati_utc_plus_14_and_skipped_day() -> None:
    kir = Cadence(timezone="Pacific/Kiritimati")
    # UTC+14: 10:00 UTC on Dec 31st is already midnight of the new year.
    instant = datetime(2016, 12, 31, 10, 0, tzinfo=UTC)
    assert window_for(instant, kir).label == "2016-12"
    assert window_for(instant, kir, lag=0).label == "2017-01"
    assert window_for(instant, parse_every("year", timezone="Pacific/Kiritimati")).label == "2016"
    # Kiritimati skipped 1994-12-31 (UTC-10 -> UTC+14); windows are calendar days, so it is
    # still a window, even though no instant has that local date.
    daily = parse_every("day", timezone="Pacific/Kiritimati")
    local_days = {
        window_for(
            datetime(1994, 12, 30, 0, 0, tzinfo=UTC) + timedelta(hours=h), daily, lag=0
        ).start
        for h in range(72)
    }
    assert D(1994, 12, 31) not in local_days
    assert {D(1994, 12, 30), D(1995, 1, 1)} <= local_days
    assert labels(windows_between(D(1994, 12, 30), D(1995, 1, 1), daily)) == [
        "1994-12-30",
        "1994-12-31",
        "1995-01-01",
    ]


def test_window_for_weeks_and_lag_k() -> None:
    weekly = parse_every("week")
    # Wednesday 2017-01-11: in progress is the week of Monday the 9th.
    instant = datetime(2017, 1, 11, 12, tzinfo=UTC)
    assert window_for(instant, weekly, lag=0).label == "2017-01-09..2017-01-15"
    assert window_for(instant, weekly).label == "2017-01-02..2017-01-08"
    assert window_for(instant, weekly, lag=3).start == D(2016, 12, 19)


# --------------------------------------------------------------------------- rendering


def test_exclusive_end() -> None:
    jan = MONTHLY.window_containing(D(2017, 1, 1))
    env = Rendering(inclusive_end=False).environment(jan)
    assert env == {"START_DATE": "2017-01-01", "END_DATE": "2017-02-01"}


def test_custom_names_format_and_extra() -> None:
    r = Rendering(
        start_var="FROM",
        end_var="TO",
        date_format="%Y%m%d",
        extra={"MODE": "backfill", "_X1": ""},
    )
    jan = MONTHLY.window_containing(D(2017, 1, 1))
    assert r.environment(jan) == {
        "FROM": "20170101",
        "TO": "20170131",
        "MODE": "backfill",
        "_X1": "",
    }
    assert Rendering(date_format="%d/%m/%Y").environment(jan)["END_DATE"] == "31/01/2017"
    assert Rendering(date_format="%Y-%m").environment(jan) == {
        "START_DATE": "2017-01",
        "END_DATE": "2017-01",
    }


def test_models_are_json_round_trippable() -> None:
    cad = parse_every("2 weeks", week_start="sunday", timezone="Europe/Berlin")
    data = json.loads(cad.model_dump_json())
    assert data == {"unit": "week", "every": 2, "week_start": 6, "timezone": "Europe/Berlin"}
    assert Cadence.model_validate(data) == cad
    r = Rendering(extra={"A": "b"}, inclusive_end=False)
    assert Rendering.model_validate_json(r.model_dump_json()) == r
    w = Window(start=D(2017, 1, 1), end=D(2017, 2, 1))
    assert Window.model_validate_json(w.model_dump_json()) == w
    assert Window.model_validate({"start": "2017-01-01", "end": "2017-02-01"}) == w
    # A cadence may be given as text (CLI / flow parameter).
    assert Cadence.model_validate("3 months") == Cadence(unit=Unit.MONTH, every=3)
    assert Cadence(unit="Monthly") == MONTHLY


def test_module_does_not_import_prefect() -> None:
    code = (
        "import sys, cml_tasks.windows; "
        "assert not any(m.split('.')[0] == 'prefect' for m in sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "unit", "every"),
    [
        ("month", Unit.MONTH, 1),
        ("monthly", Unit.MONTH, 1),
        ("months", Unit.MONTH, 1),
        ("MONTH", Unit.MONTH, 1),
        ("3 months", Unit.MONTH, 3),
        (" 3   Months ", Unit.MONTH, 3),
        ("1 month", Unit.MONTH, 1),
        ("2 weeks", Unit.WEEK, 2),
        ("every 2 weeks", Unit.WEEK, 2),
        ("week", Unit.WEEK, 1),
        ("Weekly", Unit.WEEK, 1),
        ("quarter", Unit.QUARTER, 1),
        ("quarterly", Unit.QUARTER, 1),
        ("day", Unit.DAY, 1),
        ("daily", Unit.DAY, 1),
        ("10 days", Unit.DAY, 10),
        ("year", Unit.YEAR, 1),
        ("yearly", Unit.YEAR, 1),
        ("every year", Unit.YEAR, 1),
    ],
)
def test_parse_every(text: str, unit: Unit, every: int) -> None:
    cad = parse_every(text)
    assert (cad.unit, cad.every, cad.week_start, cad.timezone) == (unit, every, 0, "UTC")


def test_parse_every_passes_week_start_and_zone() -> None:
    cad = parse_every("week", week_start=6, timezone="Asia/Kolkata")
    assert (cad.week_start, cad.timezone) == (6, "Asia/Kolkata")


@pytest.mark.parametrize(
    "text",
    ["hourly", "hour", "fortnight", "", "3", "months 3", "3 monthly", "-1 months", "1.5 months"],
)
def test_parse_every_rejects(text: str) -> None:
    with pytest.raises(CMLInputError) as exc:
        parse_every(text)
    assert repr(text) in str(exc.value)


def test_parse_every_error_lists_accepted_forms() -> None:
    with pytest.raises(CMLInputError, match="month/monthly/months") as exc:
        parse_every("hourly")
    for word in ("daily", "weeks", "quarter", "yearly", "3 months"):
        assert word in str(exc.value)


def test_parse_every_zero_count() -> None:
    with pytest.raises(CMLInputError, match="at least 1"):
        parse_every("0 months")


def test_parse_every_bad_zone_and_week_start() -> None:
    with pytest.raises(CMLInputError, match="unknown time zone 'Mars/Olympus'"):
        parse_every("month", timezone="Mars/Olympus")
    with pytest.raises(CMLInputError, match="week start"):
        parse_every("week", week_start="funday")
    with pytest.raises(CMLInputError, match="week start"):
        parse_every("week", week_start=7)


def test_parse_date() -> None:
    assert parse_date("2017-01-31") == D(2017, 1, 31)
    assert parse_date(" 2016-02-29 ") == D(2016, 2, 29)
    for bad in ["2017-02-29", "2017-1-5", "31/01/2017", "", "20170131"]:
        with pytest.raises(CMLInputError, match="invalid date"):
            parse_date(bad)


# --------------------------------------------------------------------------- bad input


def test_end_before_start() -> None:
    with pytest.raises(CMLInputError, match="end 2017-01-01 is before start 2017-01-31"):
        windows_between(D(2017, 1, 31), D(2017, 1, 1), MONTHLY)


def test_single_day_range_is_fine() -> None:
    assert labels(windows_between(D(2017, 1, 31), D(2017, 1, 31), MONTHLY)) == ["2017-01"]


def test_datetimes_rejected_where_dates_expected() -> None:
    with pytest.raises(CMLInputError, match=r"must be a datetime\.date"):
        windows_between(datetime(2017, 1, 1, tzinfo=UTC), D(2017, 2, 1), MONTHLY)
    with pytest.raises(CMLInputError, match=r"must be a datetime\.date"):
        MONTHLY.window_containing(datetime(2017, 1, 1))


@pytest.mark.parametrize(
    "zone", ["utc", "Europe/Berln", "Europe", "", "../etc/passwd", "localtime", "Mars/Olympus"]
)
def test_unknown_zone(zone: str) -> None:
    with pytest.raises(ValidationError, match="unknown time zone"):
        Cadence(timezone=zone)


def test_unknown_zone_suggests_close_match() -> None:
    with pytest.raises(ValidationError, match="Did you mean 'Europe/Berlin'"):
        Cadence(timezone="Europe/Berln")


def test_unknown_unit_and_bad_every() -> None:
    with pytest.raises(ValidationError, match="unknown unit 'hour'"):
        Cadence(unit="hour")
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        Cadence(every=0)
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        Cadence(every=-3)
    with pytest.raises(ValidationError, match="unknown frequency"):
        Cadence.model_validate("hourly")
    with pytest.raises(ValidationError, match="Extra inputs"):
        Cadence(units="month")  # type: ignore[call-arg]


def test_validation_errors_are_value_errors() -> None:
    with pytest.raises(ValueError):
        Cadence(every=0)
    assert issubclass(CMLInputError, ValueError)


@pytest.mark.parametrize("fmt", ["%H:%M", "hello", "", "%p", "%%Y"])
def test_format_rendering_no_date(fmt: str) -> None:
    with pytest.raises(ValidationError, match="renders no date"):
        Rendering(date_format=fmt)


@pytest.mark.parametrize("name", ["1START", "START-DATE", "START DATE", "", "ÄRGER", "A.B", "X\n"])
def test_invalid_variable_names(name: str) -> None:
    with pytest.raises(ValidationError, match="invalid environment variable name"):
        Rendering(start_var=name)
    with pytest.raises(ValidationError, match="invalid environment variable name"):
        Rendering(end_var=name)
    with pytest.raises(ValidationError, match="invalid environment variable name"):
        Rendering(extra={name: "x"})


def test_start_end_names_distinct_and_not_overridden() -> None:
    with pytest.raises(ValidationError, match="must differ"):
        Rendering(start_var="D", end_var="D")
    with pytest.raises(ValidationError, match="may not override the window variables: START_DATE"):
        Rendering(extra={"START_DATE": "2017-01-01"})
    with pytest.raises(ValidationError, match="may not override the window variables: TO"):
        Rendering(end_var="TO", extra={"TO": "x", "OTHER": "y"})


@pytest.mark.parametrize("lag", [-1, -10])
def test_negative_lag(lag: int) -> None:
    with pytest.raises(CMLInputError, match="lag must be an integer >= 0"):
        window_for(datetime(2017, 2, 1, tzinfo=UTC), MONTHLY, lag=lag)


def test_naive_instant() -> None:
    with pytest.raises(CMLInputError, match="naive"):
        window_for(datetime(2017, 2, 1, 0, 30), MONTHLY)
    with pytest.raises(CMLInputError, match="timezone-aware datetime"):
        window_for(D(2017, 2, 1), MONTHLY)  # type: ignore[arg-type]


def test_window_end_must_follow_start() -> None:
    with pytest.raises(ValidationError, match="must be after its start"):
        Window(start=D(2017, 1, 1), end=D(2017, 1, 1))


def test_out_of_supported_dates() -> None:
    with pytest.raises(CMLInputError, match="outside the supported dates"):
        MONTHLY.window_containing(D(9999, 12, 5))
    with pytest.raises(CMLInputError, match="outside the supported dates"):
        parse_every("10 years").window_containing(D(1, 6, 1))
    with pytest.raises(CMLInputError, match="outside the supported dates"):
        parse_every("week", week_start="sunday").window_containing(D(1, 1, 1))
    with pytest.raises(CMLInputError, match="outside the supported dates"):
        window_for(datetime(1, 1, 5, tzinfo=UTC), parse_every("week"), lag=2)
    assert MONTHLY.window_containing(D(9999, 11, 30)).label == "9999-11"
    assert parse_every("week").window_containing(D(1, 1, 1)).start == D(1, 1, 1)


# --------------------------------------------------------------------------- properties

ZONES = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Australia/Sydney",
    "Asia/Kolkata",
    "Pacific/Kiritimati",
    "Pacific/Pago_Pago",
]

cadences = st.builds(
    Cadence,
    unit=st.sampled_from(list(Unit)),
    every=st.one_of(st.integers(1, 13), st.sampled_from([24, 52, 100])),
    week_start=st.integers(0, 6),
    timezone=st.sampled_from(ZONES),
)
dates = st.dates(min_value=D(1800, 1, 1), max_value=D(2200, 12, 31))
PROPS = settings(max_examples=150, deadline=None)


@PROPS
@given(cad=cadences, start=dates, length=st.integers(0, 1500))
def test_windows_between_tiles_the_range(cad: Cadence, start: date, length: int) -> None:
    end = start + timedelta(days=length)
    ws = windows_between(start, end, cad)
    assert ws
    assert start in ws[0] and end in ws[-1]
    for a, b in pairwise(ws):
        assert a.end == b.start
    for w in ws:
        assert w.start < w.end
        assert cad.window_containing(w.start) == w
        assert cad.window_containing(w.last_day) == w
    # Only windows overlapping [start, end].
    assert ws[0].start <= start and (len(ws) == 1 or ws[1].start > start)
    assert ws[-1].start <= end < ws[-1].end


@PROPS
@given(cad=cadences, d=dates, lo=st.integers(0, 800), hi=st.integers(0, 800))
def test_alignment_does_not_depend_on_range(cad: Cadence, d: date, lo: int, hi: int) -> None:
    w = cad.window_containing(d)
    (only,) = [
        x for x in windows_between(d - timedelta(days=lo), d + timedelta(days=hi), cad) if d in x
    ]
    assert only == w
    assert cad.next_start(d) == w.end
    assert cad.shift(cad.shift(w, 1), -1) == w


@PROPS
@given(
    cad=cadences,
    instant=st.datetimes(
        min_value=datetime(1800, 1, 1), max_value=datetime(2200, 12, 31), timezones=st.just(UTC)
    ),
    lag=st.integers(0, 5),
)
def test_window_for_lags(cad: Cadence, instant: datetime, lag: int) -> None:
    local = instant.astimezone(ZoneInfo(cad.timezone)).date()
    current = window_for(instant, cad, lag=0)
    assert local in current
    assert current == cad.window_containing(local)
    previous = window_for(instant, cad)
    assert previous.end == current.start
    assert cad.window_containing(previous.start) == previous
    lagged = window_for(instant, cad, lag=lag)
    expected = current
    for _ in range(lag):
        expected = cad.window_containing(expected.start - timedelta(days=1))
    assert lagged == expected


@PROPS
@given(cad=cadences, d=dates, inclusive=st.booleans())
def test_rendering_matches_window(cad: Cadence, d: date, inclusive: bool) -> None:
    w = cad.window_containing(d)
    env = Rendering(inclusive_end=inclusive).environment(w)
    assert env["START_DATE"] == w.start.isoformat()
    assert env["END_DATE"] == (w.last_day if inclusive else w.end).isoformat()


def test_item_11_at_most_max_windows_counted_before_any_is_built() -> None:
    """Daily windows over 0001..9999 took 134 s and 6 GB; the count is now arithmetic and a
    range over `MAX_WINDOWS` is refused at once, naming the maximum."""
    import time

    from cml_tasks.windows import MAX_WINDOWS

    day = parse_every("day")
    first = date(1800, 1, 1)
    last = first + timedelta(days=MAX_WINDOWS - 1)
    assert len(windows_between(first, last, day)) == MAX_WINDOWS
    started = time.monotonic()
    for span in ((first, last + timedelta(days=1)), (date(1, 1, 1), date(9999, 12, 30))):
        with pytest.raises(CMLInputError, match=r"maximum of 100,000 \(MAX_WINDOWS\)"):
            windows_between(*span, day)
    assert time.monotonic() - started < 1
    assert len(windows_between(date(1, 1, 1), date(9998, 12, 31), parse_every("year"))) == 9998


@pytest.mark.parametrize("digits", [7, 4301, 5000])
def test_item_12_an_every_count_too_long_is_an_input_error(digits: int) -> None:
    with pytest.raises(CMLInputError, match="the count has more than 6 digits"):
        parse_every("9" * digits + " days")
    assert parse_every("000001 month") == parse_every("month")
