"""periodic_fast.cron: expressions, time zones, fire times and DST."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from periodic_fast import cron
from periodic_fast.cron import CronError

PARIS = "Europe/Paris"
NY = "America/New_York"


def at(text: str, tz: str) -> int:
    """Epoch of local wall time ``text`` in ``tz`` (first occurrence)."""
    return int(datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp())


def fires(expr: str, tz: str, start: str, k: int) -> list[str]:
    return [cron.iso(t, tz) for t in cron.next_fires(expr, tz, at(start, tz), k)]


def test_strictly_after_and_whole_seconds() -> None:
    t = at("2026-05-01T10:00:00", "UTC")
    assert cron.next_fire("* * * * *", "UTC", t) == t + 60
    assert cron.next_fire("* * * * *", "UTC", t - 0.5) == t
    assert cron.next_fire("* * * * *", "UTC", t + 59.9) == t + 60
    assert isinstance(cron.next_fire("* * * * *", "UTC", t + 0.25), int)


def test_ranges_steps_lists_and_names() -> None:
    start = "2026-01-05T00:00:00"  # a Monday
    assert fires("*/20 9-10 * * *", "UTC", start, 7) == [
        f"2026-01-05T{h}:{m}:00+00:00" for h in ("09", "10") for m in ("00", "20", "40")
    ] + ["2026-01-06T09:00:00+00:00"]
    assert fires("0 12 * * MON-FRI", "UTC", "2026-01-09T13:00:00", 2) == [
        "2026-01-12T12:00:00+00:00",  # Friday afternoon -> Monday
        "2026-01-13T12:00:00+00:00",
    ]
    assert fires("0 0 1 jan,Jul *", "UTC", start, 2) == [
        "2026-07-01T00:00:00+00:00",
        "2027-01-01T00:00:00+00:00",
    ]
    # 7 is Sunday too; 10-20/5 steps through a range
    assert fires("0 0 * * 7", "UTC", start, 1) == fires("0 0 * * sun", "UTC", start, 1)
    assert fires("10-20/5 0 5 1 *", "UTC", start, 3) == [
        "2026-01-05T00:10:00+00:00",
        "2026-01-05T00:15:00+00:00",
        "2026-01-05T00:20:00+00:00",
    ]


def test_day_of_month_or_day_of_week() -> None:
    # both restricted: either matches (Vixie cron)
    assert fires("0 0 13 * FRI", "UTC", "2026-02-01T00:00:00", 3) == [
        "2026-02-06T00:00:00+00:00",
        "2026-02-13T00:00:00+00:00",  # the 13th, and a Friday too
        "2026-02-20T00:00:00+00:00",
    ]


@pytest.mark.parametrize(
    ("alias", "same"),
    [
        ("@hourly", "0 * * * *"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@weekly", "0 0 * * 0"),
        ("@monthly", "0 0 1 * *"),
        ("@yearly", "0 0 1 1 *"),
        ("@ANNUALLY", "0 0 1 1 *"),
    ],
)
def test_aliases(alias: str, same: str) -> None:
    assert cron.normalize(alias) == same
    t = at("2026-03-10T10:20:00", PARIS)
    assert cron.next_fires(alias, PARIS, t, 3) == cron.next_fires(same, PARIS, t, 3)


def test_feb_29() -> None:
    assert fires("0 6 29 2 *", "UTC", "2025-01-01T00:00:00", 3) == [
        "2028-02-29T06:00:00+00:00",
        "2032-02-29T06:00:00+00:00",
        "2036-02-29T06:00:00+00:00",
    ]


def test_whitespace_is_normalized() -> None:
    assert cron.check("  */5\t*  * *   * ", "UTC") == "*/5 * * * *"


# -- DST ----------------------------------------------------------------------------


def test_paris_spring_forward_fixed_time_runs_once_after_the_gap() -> None:
    # 2026-03-29: 02:00 CET -> 03:00 CEST; 02:30 does not exist
    assert fires("30 2 * * *", PARIS, "2026-03-28T12:00:00", 3) == [
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00",
    ]


def test_paris_spring_forward_wildcard_hour_follows_elapsed_time() -> None:
    assert fires("*/30 * * * *", PARIS, "2026-03-29T01:00:00", 4) == [
        "2026-03-29T01:30:00+01:00",
        "2026-03-29T03:00:00+02:00",  # 30 real minutes later
        "2026-03-29T03:30:00+02:00",
        "2026-03-29T04:00:00+02:00",
    ]


def test_paris_fall_back_fixed_time_runs_once() -> None:
    # 2026-10-25: 03:00 CEST -> 02:00 CET; 02:30 happens twice
    assert fires("30 2 * * *", PARIS, "2026-10-24T12:00:00", 3) == [
        "2026-10-25T02:30:00+02:00",
        "2026-10-26T02:30:00+01:00",
        "2026-10-27T02:30:00+01:00",
    ]


def test_fall_back_counting_from_the_second_occurrence_stays_after() -> None:
    # from 02:10 CET (the second 02:10): today's 02:30 already ran (CEST)
    t = at("2026-10-25T02:10:00", PARIS) + 3600
    assert cron.iso(t, PARIS) == "2026-10-25T02:10:00+01:00"
    nxt = cron.next_fire("30 2 * * *", PARIS, t)
    assert nxt > t
    assert cron.iso(nxt, PARIS) == "2026-10-26T02:30:00+01:00"


def test_paris_fall_back_wildcard_hour_runs_in_both_hours() -> None:
    assert fires("0,30 * * * *", PARIS, "2026-10-25T01:45:00", 5) == [
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:30:00+02:00",
        "2026-10-25T02:00:00+01:00",
        "2026-10-25T02:30:00+01:00",
        "2026-10-25T03:00:00+01:00",
    ]


def test_new_york_transitions() -> None:
    # 2026-03-08 02:00 EST -> 03:00 EDT; 2026-11-01 02:00 EDT -> 01:00 EST
    assert fires("15 2 * * *", NY, "2026-03-07T12:00:00", 2) == [
        "2026-03-08T03:00:00-04:00",
        "2026-03-09T02:15:00-04:00",
    ]
    assert fires("30 1 * * *", NY, "2026-10-31T12:00:00", 2) == [
        "2026-11-01T01:30:00-04:00",  # once, in the first 01:30
        "2026-11-02T01:30:00-05:00",
    ]
    # a daily job keeps its local time across the change (24 or 25 h apart)
    a, b, c = cron.next_fires("0 9 * * *", NY, at("2026-10-31T00:00:00", NY), 3)
    assert (b - a, c - b) == (25 * 3600, 24 * 3600)


def test_hourly_is_elapsed_time_across_the_gap() -> None:
    got = cron.next_fires("0 * * * *", NY, at("2026-03-08T00:30:00", NY), 3)
    assert [cron.iso(t, NY) for t in got] == [
        "2026-03-08T01:00:00-05:00",
        "2026-03-08T03:00:00-04:00",
        "2026-03-08T04:00:00-04:00",
    ]
    assert got[1] - got[0] == 3600


# -- bad input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "why"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("* * * *", "4 fields"),
        ("0 * * * * *", "6 fields"),
        ("60 * * * *", "Bad minute"),
        ("* 24 * * *", "Bad hour"),
        ("* * 0 * *", "Bad day-of-month"),
        ("* * * 13 *", "Bad month"),
        ("* * * * 8", "Bad day-of-week"),
        ("*/0 * * * *", "Bad minute"),
        ("5-1 * * * *", "Bad minute"),
        ("0 0 30 2 *", "Bad day-of-month"),
        ("0 0 31 4 *", "Bad day-of-month"),
        ("@reboot", "unknown cron shortcut"),
        ("* * * * * ; rm", "character"),
        ("x" * 300, "longer than"),
    ],
)
def test_bad_expressions(expr: str, why: str) -> None:
    with pytest.raises(CronError, match=why):
        cron.check(expr, "UTC")
    with pytest.raises(ValueError):  # a CronError is a ValueError
        cron.next_fire(expr, "UTC", 0)


@pytest.mark.parametrize(
    ("tz", "why"),
    [
        ("Mars/Olympus", "unknown time zone"),
        ("../../etc/passwd", "unknown time zone"),
        ("/etc/localtime", "unknown time zone"),
        ("Europe", "unknown time zone"),
        ("", "non-empty"),
        ("E" * 65, "longer than"),
    ],
)
def test_bad_time_zones(tz: str, why: str) -> None:
    with pytest.raises(CronError, match=why):
        cron.check("* * * * *", tz)


def test_not_a_string() -> None:
    with pytest.raises(CronError):
        cron.normalize(5)  # type: ignore[arg-type]
    with pytest.raises(CronError):
        cron.check_tz(None)  # type: ignore[arg-type]


def test_time_out_of_range_and_rare_fires() -> None:
    with pytest.raises(CronError, match="out of range"):
        cron.next_fire("* * * * *", "UTC", 1e18)
    with pytest.raises(CronError, match="out of range"):
        cron.next_fire("* * * * *", "UTC", float("nan"))
    # fires rarely but fires: the fifth Monday of a February
    assert cron.iso(
        cron.next_fire("0 0 * 2 MON#5", "UTC", at("2026-01-01T00:00:00", "UTC")), "UTC"
    ).startswith("2044-02-29")


def test_iso_carries_the_offset() -> None:
    t = at("2026-07-01T12:00:00", PARIS)
    assert cron.iso(t, PARIS) == "2026-07-01T12:00:00+02:00"
    assert cron.iso(t, "UTC") == "2026-07-01T10:00:00+00:00"
