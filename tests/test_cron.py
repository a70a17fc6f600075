"""Tests for chalicelib.schedules.cron: schedule requests -> AWS cron, AWS cron validation and evaluation.

Expected cron strings are written out by hand, and weekdays are checked against the
calendar (datetime.weekday() of real dates), never against the code's own tables.
"""

import dataclasses
import itertools
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pytest

from chalicelib.schedules import cron
from chalicelib.schedules.cron import (
    Schedule,
    ScheduleError,
    cron_matches,
    cron_times,
    parse_schedule,
    validate_aws_cron,
    weekday_number,
)

UTC = timezone.utc
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
FUTURE = "2027-01-01 10:00"

# One real week: 2026-11-23 (Monday) to 2026-11-29 (Sunday). Python weekday(): MON=0.
WEEK = [datetime(2026, 11, 23 + i, tzinfo=UTC) for i in range(7)]
PY_DAY = {"MONDAY": 0, "TUESDAY": 1, "WEDNESDAY": 2, "THURSDAY": 3, "FRIDAY": 4, "SATURDAY": 5, "SUNDAY": 6}
# AWS numbering, from the EventBridge docs: 1-7 = SUN-SAT.
AWS_NUMBER = {"SUNDAY": 1, "MONDAY": 2, "TUESDAY": 3, "WEDNESDAY": 4, "THURSDAY": 5, "FRIDAY": 6, "SATURDAY": 7}
ABBR = {
    "MONDAY": "MON",
    "TUESDAY": "TUE",
    "WEDNESDAY": "WED",
    "THURSDAY": "THU",
    "FRIDAY": "FRI",
    "SATURDAY": "SAT",
    "SUNDAY": "SUN",
}


def on(day: str) -> datetime:
    """The date in WEEK that the calendar says is `day`."""
    (date,) = [d for d in WEEK if d.weekday() == PY_DAY[day]]
    return date


def at(date: datetime, hhmm: str) -> datetime:
    hour, minute = map(int, hhmm.split(":"))
    return date.replace(hour=hour, minute=minute)


def test_the_calendar_oracle():
    assert datetime(2026, 11, 27).weekday() == 4  # Friday
    assert on("FRIDAY").day == 27 and on("MONDAY").day == 23 and on("SUNDAY").day == 29


# --- Building crons: every period x time -------------------------------------------------

TIMES = ["00:00", "06:50", "12:05", "23:59"]


def spellings(day: str):
    full, abbr = day.capitalize(), ABBR[day]
    return [full, full.lower(), full.upper(), abbr.capitalize(), abbr.lower(), abbr]


@pytest.mark.parametrize("day", list(PY_DAY))
@pytest.mark.parametrize("hhmm", TIMES)
@pytest.mark.parametrize("time_given", [True, False])
def test_weekly_cron_for_every_day_spelling_and_time(day, hhmm, time_given):
    h, m = map(int, hhmm.split(":"))
    expected = f"cron({m} {h} ? * {ABBR[day]} *)"
    for period in spellings(day):
        if time_given:
            body = {"period": period, "time": hhmm, "until": FUTURE}
        else:
            body = {"period": period, "until": f"2027-01-01 {hhmm}"}
        schedule = parse_schedule(body, NOW)
        assert schedule.expression == expected, period
        assert schedule.period == period
        assert schedule.time == (hhmm if time_given else None)
    # The cron fires on the calendar's `day` at that minute, and on no other day of the week.
    for date in WEEK:
        assert cron_matches(expected, at(date, hhmm)) == (date.weekday() == PY_DAY[day])
    assert not cron_matches(expected, at(on(day), hhmm) + timedelta(minutes=1))


@pytest.mark.parametrize("hhmm", TIMES)
@pytest.mark.parametrize("time_given", [True, False])
def test_daily_cron_when_period_is_omitted_or_null(hhmm, time_given):
    h, m = map(int, hhmm.split(":"))
    until = FUTURE if time_given else f"2027-01-01 {hhmm}"
    bodies = [{"until": until}, {"until": until, "period": None}]
    if time_given:
        bodies = [dict(b, time=hhmm) for b in bodies]
    for body in bodies:
        schedule = parse_schedule(body, NOW)
        assert schedule.expression == f"cron({m} {h} * * ? *)"
        assert schedule.period is None
    for date in WEEK:
        assert cron_matches(schedule.expression, at(date, hhmm))
        assert not cron_matches(schedule.expression, at(date, hhmm) - timedelta(minutes=1))


def test_time_defaults_to_the_time_of_until_not_now():
    schedule = parse_schedule({"period": "Friday", "until": "2026-12-31 07:45", "time": None}, NOW)
    assert schedule.expression == "cron(45 7 ? * FRI *)"
    assert schedule.time is None


def test_schedule_keeps_the_request_as_given_and_is_frozen():
    schedule = parse_schedule({"period": "fRiDaY", "time": "06:50", "until": "2026-12-31 23:00"}, NOW)
    assert schedule == Schedule(
        period="fRiDaY",
        time="06:50",
        until="2026-12-31 23:00",
        until_utc=datetime(2026, 12, 31, 23, 0, tzinfo=UTC),
        expression="cron(50 6 ? * FRI *)",
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        schedule.expression = "cron(0 0 * * ? *)"


# --- Weekday numbering ---------------------------------------------------------------------


@pytest.mark.parametrize("day", list(PY_DAY))
def test_weekday_number_is_aws_numbering(day):
    for name in spellings(day):
        assert weekday_number(name) == AWS_NUMBER[day]


@pytest.mark.parametrize("name", ["", "Mo", "Tues", "Thurs", "Funday", " Monday", "1", None, 2])
def test_weekday_number_rejects_non_weekdays(name):
    with pytest.raises(ValueError):
        weekday_number(name)


@pytest.mark.parametrize("day", list(PY_DAY))
def test_cron_day_of_week_numbers_and_names_follow_the_calendar(day):
    number, name = AWS_NUMBER[day], ABBR[day]
    for expression in (f"cron(0 9 ? * {number} *)", f"cron(0 9 ? * {name} *)"):
        for date in WEEK:
            assert cron_matches(expression, at(date, "09:00")) == (date.weekday() == PY_DAY[day]), (expression, date)


def test_friday_is_6_and_never_thursday():
    # The bug seen elsewhere: a weekly job meant for Friday ran on Thursday.
    friday, thursday = datetime(2026, 11, 27, 9, 0, tzinfo=UTC), datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
    for expression in ("cron(0 9 ? * 6 *)", "cron(0 9 ? * FRI *)"):
        assert cron_matches(expression, friday)
        assert not cron_matches(expression, thursday)
    built = parse_schedule({"period": "Friday", "time": "09:00", "until": FUTURE}, NOW).expression
    assert cron_matches(built, friday) and not cron_matches(built, thursday)


def test_sunday_is_1_not_unix_0_or_7():
    sunday, saturday = datetime(2026, 11, 29, 9, 0, tzinfo=UTC), datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
    assert cron_matches("cron(0 9 ? * 1 *)", sunday) and not cron_matches("cron(0 9 ? * 1 *)", saturday)
    assert cron_matches("cron(0 9 ? * 7 *)", saturday) and not cron_matches("cron(0 9 ? * 7 *)", sunday)
    with pytest.raises(ValueError, match="outside 1-7"):
        validate_aws_cron("cron(0 9 ? * 0 *)")


# --- Time zones ----------------------------------------------------------------------------


def test_weekday_moves_back_across_midnight_and_the_week_start():
    # Monday 00:30 in Kolkata (UTC+05:30) is Sunday 19:00 UTC.
    schedule = parse_schedule({"period": "Monday", "time": "00:30", "until": FUTURE}, NOW, "Asia/Kolkata")
    assert schedule.expression == "cron(0 19 ? * SUN *)"
    kolkata = ZoneInfo("Asia/Kolkata")
    monday = datetime(2026, 11, 23, 0, 30, tzinfo=kolkata)
    assert monday.weekday() == 0
    assert cron_matches(schedule.expression, monday)
    assert not cron_matches(schedule.expression, monday + timedelta(days=1))


def test_weekday_moves_forward_across_midnight_and_the_week_end():
    # Sunday 22:00 in Los Angeles is Monday 06:00 UTC in winter (UTC-8), 05:00 in summer (UTC-7).
    winter = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
    schedule = parse_schedule({"period": "Sunday", "time": "22:00", "until": FUTURE}, winter, "America/Los_Angeles")
    assert schedule.expression == "cron(0 5,6 ? * MON *)"
    los_angeles = ZoneInfo("America/Los_Angeles")
    for sunday in (datetime(2026, 1, 18, 22, 0, tzinfo=los_angeles), datetime(2026, 7, 19, 22, 0, tzinfo=los_angeles)):
        assert sunday.weekday() == 6
        assert cron_matches(schedule.expression, sunday)
        assert not cron_matches(schedule.expression, sunday - timedelta(days=1))


def test_daily_cron_wraps_the_hour_without_a_day():
    schedule = parse_schedule({"time": "00:30", "until": FUTURE}, NOW, "Asia/Kolkata")
    assert schedule.expression == "cron(0 19 * * ? *)"


def test_offsets_with_odd_minutes():
    # Nepal is UTC+05:45: 06:00 there is 00:15 UTC, same day.
    schedule = parse_schedule({"period": "Tue", "time": "06:00", "until": FUTURE}, NOW, "Asia/Kathmandu")
    assert schedule.expression == "cron(15 0 ? * TUE *)"


def test_dst_zone_cron_covers_both_offsets_whenever_scheduled():
    body = {"period": "Monday", "time": "09:00", "until": "2027-12-01 09:00"}
    january = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)  # New York on EST, UTC-5
    july = datetime(2026, 7, 15, 12, 0, tzinfo=UTC)  # New York on EDT, UTC-4
    for now in (january, july):
        assert parse_schedule(body, now, "America/New_York").expression == "cron(0 13,14 ? * MON *)"
    new_york = ZoneInfo("America/New_York")
    clock = cron.WallClock(new_york, 0, 9, 0)
    # 09:00 wall-clock in July and in November; the cron's other hour is no occurrence.
    for monday in (datetime(2026, 7, 20, 9, 0, tzinfo=new_york), datetime(2026, 11, 23, 9, 0, tzinfo=new_york)):
        assert cron_matches("cron(0 13,14 ? * MON *)", monday)
        assert clock.due(monday.astimezone(UTC)) == monday.astimezone(UTC)
        for other_hour in (monday - timedelta(hours=1), monday + timedelta(hours=1)):
            assert clock.due(other_hour.astimezone(UTC)) in (None, monday.astimezone(UTC))
    assert clock.due(datetime(2026, 11, 23, 13, 0, tzinfo=UTC)) is None  # 08:00 EST: a week after the last


def test_until_is_converted_with_its_own_dates_offset():
    july = datetime(2026, 7, 15, 12, 0, tzinfo=UTC)
    winter_until = parse_schedule({"until": "2027-01-10 09:00"}, july, "America/New_York")
    assert winter_until.until_utc == datetime(2027, 1, 10, 14, 0, tzinfo=UTC)
    assert winter_until.until_utc.tzinfo == UTC
    # The time of day taken from `until` is wall-clock: 13:00 UTC in summer, 14:00 in winter.
    assert winter_until.expression == "cron(0 13,14 * * ? *)"
    summer_until = parse_schedule({"until": "2026-08-10 09:00"}, july, "America/New_York")
    assert summer_until.until_utc == datetime(2026, 8, 10, 13, 0, tzinfo=UTC)
    assert summer_until.expression == "cron(0 13 * * ? *)"  # no DST change before until


def test_utc_is_the_default_zone():
    body = {"period": "Monday", "time": "09:00", "until": FUTURE}
    assert parse_schedule(body, NOW).expression == parse_schedule(body, NOW, "Etc/UTC").expression
    assert parse_schedule(body, NOW).expression == "cron(0 9 ? * MON *)"


def test_utc_needs_no_time_zone_database(monkeypatch):
    # Minimal runtime images may ship without tzdata; the default zone must still work.
    def no_database(name):
        raise ZoneInfoNotFoundError(name)

    monkeypatch.setattr(cron, "ZoneInfo", no_database)
    assert parse_schedule({"time": "09:00", "until": FUTURE}, NOW).expression == "cron(0 9 * * ? *)"
    with pytest.raises(ValueError, match="unknown time zone"):
        parse_schedule({"until": FUTURE}, NOW, "Europe/London")


@pytest.mark.parametrize("zone", ["Mars/Olympus", "utc", "", "/etc/localtime", "../etc/passwd"])
def test_unknown_zone_is_a_deployment_error_not_a_user_error(zone):
    with pytest.raises(ValueError, match="unknown time zone") as info:
        parse_schedule({"until": FUTURE}, NOW, zone)
    assert not isinstance(info.value, ScheduleError)


# --- until ---------------------------------------------------------------------------------


def rejected(body, now=NOW, zone="UTC") -> ScheduleError:
    with pytest.raises(ScheduleError) as info:
        parse_schedule(body, now, zone)
    error = info.value
    assert isinstance(error, ValueError)
    assert str(error) == error.message
    assert error.field in error.message
    return error


def test_until_exactly_now_is_not_in_the_future():
    error = rejected({"until": "2026-06-01 12:00"})
    assert (error.field, error.message) == ("until", "until must be in the future")


def test_until_one_minute_ahead_is_accepted():
    schedule = parse_schedule({"until": "2026-06-01 12:01"}, NOW)
    assert schedule.until_utc == NOW + timedelta(minutes=1)


def test_until_in_the_past_is_rejected():
    assert rejected({"until": "2026-06-01 11:59"}).message == "until must be in the future"
    assert rejected({"until": "2020-01-01 00:00"}).message == "until must be in the future"


def test_until_compares_against_now_with_seconds():
    now = NOW.replace(second=30)
    assert rejected({"until": "2026-06-01 12:00"}, now).message == "until must be in the future"
    assert parse_schedule({"until": "2026-06-01 12:01"}, now).until_utc == datetime(2026, 6, 1, 12, 1, tzinfo=UTC)


def test_until_now_is_judged_in_the_deployment_zone():
    # 17:30 in Kolkata is 12:00 UTC, i.e. exactly NOW.
    assert rejected({"until": "2026-06-01 17:30"}, zone="Asia/Kolkata").message == "until must be in the future"
    accepted = parse_schedule({"until": "2026-06-01 17:31"}, NOW, "Asia/Kolkata")
    assert accepted.until_utc == datetime(2026, 6, 1, 12, 1, tzinfo=UTC)
    # 12:01 wall-clock in Kolkata is hours in the past, although it is after NOW read as UTC.
    assert rejected({"until": "2026-06-01 12:01"}, zone="Asia/Kolkata").message == "until must be in the future"


@pytest.mark.parametrize("body", [{}, {"until": None}, {"period": "Monday", "time": "09:00"}])
def test_until_is_required(body):
    error = rejected(body)
    assert (error.field, error.message) == ("until", "until is required")


@pytest.mark.parametrize(
    "until",
    [
        "2027-01-01",
        "2027-01-01 10:00:00",
        "2027-01-01T10:00",
        "2027-01-01 10:00 ",
        " 2027-01-01 10:00",
        "2027-1-1 10:00",
        "2027-01-01 9:00",
        "2027-01-01 10:0",
        "27-01-01 10:00",
        "2027/01/01 10:00",
        "2027-01-01 10:00Z",
        "2027-01-01  10:00",
        "tomorrow",
        "",
        "２０２７-01-01 10:00",
        "2027-01-01 ١٠:00",
    ],
)
def test_until_bad_format(until):
    error = rejected({"until": until})
    assert (error.field, error.message) == ("until", "until must be a string in YYYY-MM-DD HH:MM format")


@pytest.mark.parametrize("until", [20270101, 1.5, True, False, [], ["2027-01-01 10:00"], {"date": "2027-01-01"}])
def test_until_wrong_json_type(until):
    error = rejected({"until": until})
    assert (error.field, error.message) == ("until", "until must be a string in YYYY-MM-DD HH:MM format")


@pytest.mark.parametrize(
    "until",
    [
        "2027-02-30 10:00",
        "2027-02-29 10:00",
        "2027-04-31 10:00",
        "2027-13-01 10:00",
        "2027-00-10 10:00",
        "2027-01-00 10:00",
        "2027-01-01 24:00",
        "2027-01-01 10:60",
        "0000-01-01 10:00",
    ],
)
def test_until_impossible_date_or_time(until):
    error = rejected({"until": until})
    assert error.field == "until"
    assert error.message == f"until is not a real date and time: {until}"


def test_until_at_the_edge_of_datetime_range_is_an_error_not_a_crash():
    # 9999-12-31 23:59 in New York is in year 10000 UTC, beyond datetime.
    error = rejected({"until": "9999-12-31 23:59"}, zone="America/New_York")
    assert error.field == "until"


def test_leap_day_is_accepted():
    assert parse_schedule({"until": "2028-02-29 10:00"}, NOW).until_utc == datetime(2028, 2, 29, 10, 0, tzinfo=UTC)


# --- period and time -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "period",
    [
        "",
        "Mo",
        "Monda",
        "Mondays",
        "Tues",
        "Thurs",
        "Mon.",
        " Monday",
        "Monday ",
        "weekday",
        "daily",
        "1",
        "2",
        0,
        2,
        1.0,
        True,
        False,
        [],
        ["Monday"],
        {"day": "Monday"},
    ],
)
def test_period_must_be_a_weekday_name(period):
    error = rejected({"period": period, "until": FUTURE})
    assert (error.field, error.message) == ("period", "period must be a weekday name such as Monday")


@pytest.mark.parametrize(
    "time",
    [
        "6:50",
        "06:5",
        "6:5",
        "24:00",
        "23:60",
        "06:50:00",
        "0650",
        "06-50",
        "06.50",
        " 06:50",
        "06:50 ",
        "",
        "noon",
        "6pm",
        "٠٦:٥٠",
        "+6:50",
        650,
        6.5,
        True,
        False,
        [],
        ["06:50"],
        {"h": 6},
    ],
)
def test_time_must_be_hh_mm(time):
    error = rejected({"time": time, "until": FUTURE})
    assert (error.field, error.message) == ("time", "time must be HH:MM (24-hour)")


def test_errors_are_reported_until_first_then_period_then_time():
    assert rejected({"until": "soon", "period": "Funday", "time": "25:00"}).field == "until"
    assert rejected({"until": FUTURE, "period": "Funday", "time": "25:00"}).field == "period"


def test_naive_now_is_a_programming_error():
    with pytest.raises(ValueError, match="timezone-aware") as info:
        parse_schedule({"until": FUTURE}, datetime(2026, 6, 1, 12, 0))
    assert not isinstance(info.value, ScheduleError)


# --- validate_aws_cron ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "expression",
    [
        # Examples from the EventBridge user guide.
        "cron(0 10 * * ? *)",
        "cron(15 12 * * ? *)",
        "cron(0 18 ? * MON-FRI *)",
        "cron(0 8 1 * ? *)",
        "cron(0/15 * * * ? *)",
        "cron(0/10 * ? * MON-FRI *)",
        "cron(0/5 8-17 ? * MON-FRI *)",
        # The rest of the supported grammar, at its bounds.
        "cron(59 23 31 12 ? 2199)",
        "cron(0 0 1 JAN ? 1970)",
        "cron(0 9 ? * 1 *)",
        "cron(0 9 ? * 7 *)",
        "cron(0 9 ? * SUN,SAT *)",
        "cron(*/5 1,2,3 1-15/2 1/3 ? *)",
        "cron(0 9 ? JAN,MAR-MAY SUN-SAT 2026-2030)",
        "cron(0 9 * JUN-JUL ? 2026/2)",
        "cron(0 9 ? * MON-WED *)",  # W inside a name is not the W wildcard
    ],
)
def test_validate_accepts(expression):
    validate_aws_cron(expression)


@pytest.mark.parametrize(
    "expression, reason",
    [
        ("cron(0 10 * * * *)", "exactly one of day-of-month and day-of-week"),
        ("cron(0 10 1 * MON *)", "exactly one of day-of-month and day-of-week"),
        ("cron(0 10 ? * ? *)", "exactly one of day-of-month and day-of-week"),
        ("cron(0 10 * * *)", "5 fields"),
        ("cron(0 10 * * ? * *)", "7 fields"),
        ("cron(0 10 * * 8 *)", "day-of-week: 8 is outside 1-7"),
        ("cron(0 10 ? * 8 *)", "day-of-week: 8 is outside 1-7"),
        ("cron(0 10 ? * 0 *)", "day-of-week: 0 is outside 1-7"),
        ("cron(60 10 * * ? *)", "minutes: 60 is outside 0-59"),
        ("cron(0 24 * * ? *)", "hours: 24 is outside 0-23"),
        ("cron(0 10 0 * ? *)", "day-of-month: 0 is outside 1-31"),
        ("cron(0 10 32 * ? *)", "day-of-month: 32 is outside 1-31"),
        ("cron(0 10 * 0 ? *)", "month: 0 is outside 1-12"),
        ("cron(0 10 * 13 ? *)", "month: 13 is outside 1-12"),
        ("cron(0 10 * * ? 1969)", "year: 1969 is outside 1970-2199"),
        ("cron(0 10 * * ? 2200)", "year: 2200 is outside 1970-2199"),
        ("cron(0 10-24 * * ? *)", "hours: 24 is outside 0-23"),
        ("0 10 * * ? *", "not of the form cron"),
        ("cron 0 10 * * ? *", "not of the form cron"),
        ("CRON(0 10 * * ? *)", "not of the form cron"),
        ("cron(0 10 * * ? *", "not of the form cron"),
        ("cron(0 10 * * ? *) ", "not of the form cron"),
        ("cron(0 10 * * ? *)x", "not of the form cron"),
        ("rate(5 minutes)", "not of the form cron"),
        ("", "not of the form cron"),
        ("cron()", "empty field"),
        ("cron(0  10 * * ? *)", "empty field"),
        ("cron( 0 10 * * ? *)", "empty field"),
        ("cron(0 10 * * ? *\t)", "year"),
        ("cron(a b c d e f)", "minutes: 'a' is not a number or name"),
        ("cron(0 10 * * ? -)", "year"),
        ("cron(0 10 * * MON *)", "exactly one of"),
        ("cron(0,,5 10 * * ? *)", "minutes: empty list item"),
        ("cron(0, 10 * * ? *)", "minutes: empty list item"),
        ("cron(*,5 10 * * ? *)", "minutes: '\\*' cannot be part of a list"),
        ("cron(? 10 * * ? *)", "minutes: '\\?' is only allowed"),
        ("cron(0 10 * ? ? *)", "month: '\\?' is only allowed"),
        ("cron(0 10 ? * FRI-MON *)", "day-of-week: range 'FRI-MON' runs backwards"),
        ("cron(0/0 10 * * ? *)", "minutes: the increment in '0/0' must be a number from 1 to 60"),
        ("cron(0/61 10 * * ? *)", "minutes: the increment"),
        ("cron(0/ 10 * * ? *)", "minutes: the increment"),
        ("cron(0/x 10 * * ? *)", "minutes: the increment"),
        ("cron(0 10 ? * 1/2 *)", "day-of-week: '/' is not allowed"),
        ("cron(0 10 ? * mon *)", "day-of-week: 'mon' is not a number or name"),
        ("cron(0 10 1 jan ? *)", "month: 'jan' is not a number or name"),
        ("cron(0 10 1 * SUN-SAT *)", "exactly one of"),
        ("cron(0 10 ? * MONDAY *)", "day-of-week: 'MONDAY' is not a number or name"),
        ("cron(0 10 L * ? *)", "unsupported"),
        ("cron(0 10 15W * ? *)", "unsupported"),
        ("cron(0 10 LW * ? *)", "unsupported"),
        ("cron(0 10 ? * 6L *)", "unsupported"),
        ("cron(0 10 ? * 6#2 *)", "unsupported"),
        ("cron(0 10 ? * 1-7 1970-2199-1)", "year"),
        ("cron(٠ 10 * * ? *)", "minutes"),
    ],
)
def test_validate_rejects_with_a_reason(expression, reason):
    with pytest.raises(ValueError, match=reason):
        validate_aws_cron(expression)


@pytest.mark.parametrize("expression", [None, 5, b"cron(0 10 * * ? *)", ["cron(0 10 * * ? *)"]])
def test_validate_rejects_non_strings_with_value_error(expression):
    with pytest.raises(ValueError, match="must be a string"):
        validate_aws_cron(expression)


# --- cron_matches --------------------------------------------------------------------------


def minutes_matching(expression: str) -> list:
    hour = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
    return [m for m in range(60) if cron_matches(expression, hour.replace(minute=m))]


def test_minute_steps_lists_and_ranges():
    assert minutes_matching("cron(0/15 9 * * ? *)") == [0, 15, 30, 45]
    assert minutes_matching("cron(*/20 9 * * ? *)") == [0, 20, 40]
    assert minutes_matching("cron(5/20 9 * * ? *)") == [5, 25, 45]
    assert minutes_matching("cron(10-30/10 9 * * ? *)") == [10, 20, 30]
    assert minutes_matching("cron(1,2,58-59 9 * * ? *)") == [1, 2, 58, 59]
    assert minutes_matching("cron(* 9 * * ? *)") == list(range(60))
    assert minutes_matching("cron(0 10 * * ? *)") == []


def test_hours_range():
    expression = "cron(0/5 8-17 ? * MON-FRI *)"
    monday = datetime(2026, 11, 23, tzinfo=UTC)
    assert [h for h in range(24) if cron_matches(expression, monday.replace(hour=h))] == list(range(8, 18))


def test_weekday_range_follows_the_calendar():
    expression = "cron(0 18 ? * MON-FRI *)"
    for date in WEEK:
        assert cron_matches(expression, at(date, "18:00")) == (date.weekday() < 5), date


def test_day_of_month_month_and_year():
    assert cron_matches("cron(0 8 1 * ? *)", datetime(2026, 12, 1, 8, 0, tzinfo=UTC))
    assert not cron_matches("cron(0 8 1 * ? *)", datetime(2026, 12, 2, 8, 0, tzinfo=UTC))
    assert cron_matches("cron(0 0 1 JUN ? *)", datetime(2026, 6, 1, tzinfo=UTC))
    assert not cron_matches("cron(0 0 1 JUN ? *)", datetime(2026, 7, 1, tzinfo=UTC))
    assert cron_matches("cron(0 0 1 6 ? *)", datetime(2026, 6, 1, tzinfo=UTC))
    assert cron_matches("cron(0 0 1 1 ? 2027)", datetime(2027, 1, 1, tzinfo=UTC))
    assert not cron_matches("cron(0 0 1 1 ? 2027)", datetime(2028, 1, 1, tzinfo=UTC))
    assert [d for d in range(1, 31) if cron_matches("cron(0 0 1/10 * ? *)", datetime(2026, 11, d, tzinfo=UTC))] == [
        1,
        11,
        21,
    ]


def test_minute_resolution():
    expression = "cron(0 9 * * ? *)"
    assert cron_matches(expression, datetime(2026, 11, 23, 9, 0, 59, 999999, tzinfo=UTC))
    assert not cron_matches(expression, datetime(2026, 11, 23, 9, 1, tzinfo=UTC))
    assert not cron_matches(expression, datetime(2026, 11, 23, 8, 59, 59, tzinfo=UTC))


def test_moment_is_compared_in_utc():
    kolkata = ZoneInfo("Asia/Kolkata")
    assert cron_matches("cron(0 9 * * ? *)", datetime(2026, 11, 23, 14, 30, tzinfo=kolkata))
    assert not cron_matches("cron(30 14 * * ? *)", datetime(2026, 11, 23, 14, 30, tzinfo=kolkata))
    # Friday 02:00 in Kolkata is Thursday 20:30 UTC.
    friday_early = datetime(2026, 11, 27, 2, 0, tzinfo=kolkata)
    assert cron_matches("cron(30 20 ? * THU *)", friday_early)
    assert not cron_matches("cron(30 20 ? * FRI *)", friday_early)


def test_cron_matches_rejects_bad_input():
    with pytest.raises(ValueError, match="timezone-aware"):
        cron_matches("cron(0 9 * * ? *)", datetime(2026, 11, 23, 9, 0))
    with pytest.raises(ValueError, match="exactly one of"):
        cron_matches("cron(0 9 * * * *)", datetime(2026, 11, 23, 9, 0, tzinfo=UTC))


# --- Wall-clock time in a zone, across daylight saving -------------------------------------

YEAR_START, YEAR_END = datetime(2026, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)


def local_hhmm(moment: datetime, zone: str) -> str:
    return moment.astimezone(ZoneInfo(zone)).strftime("%H:%M")


def exists_on(day, hhmm: str, zone: str) -> bool:
    """Whether the wall-clock time `hhmm` happens on local date `day` (not skipped by DST)."""
    hour, minute = map(int, hhmm.split(":"))
    local = datetime(day.year, day.month, day.day, hour, minute, tzinfo=ZoneInfo(zone))
    return local.astimezone(UTC).astimezone(ZoneInfo(zone)).replace(tzinfo=None) == local.replace(tzinfo=None)


def fired_over_the_year(period, hhmm, zone) -> tuple:
    """Every UTC minute in 2026 the schedule's rule matches, each delivered to `due` as
    EventBridge would; (the rule's expression, the occurrences that ran, in order)."""
    schedule = parse_schedule(
        {"period": period, "time": hhmm, "until": "2027-01-01 00:00", "timezone": zone}, YEAR_START
    )
    clock = cron.WallClock.of({"period": period, "time": hhmm, "until": schedule.until, "timezone": zone})
    fired = [clock.due(firing) for firing in cron_times(schedule.expression, YEAR_START, YEAR_END)]
    return schedule.expression, [occurrence for occurrence in fired if occurrence is not None]


@pytest.mark.parametrize(
    "zone, period, hhmm, expression",
    [
        ("America/New_York", "Monday", "09:00", "cron(0 13,14 ? * MON *)"),
        ("Europe/London", "Wednesday", "18:30", "cron(30 17,18 ? * WED *)"),
        # Southern hemisphere, and the UTC day is Sunday: 08:00 Monday is 21:00 (summer) or 22:00 Sunday UTC.
        ("Australia/Sydney", "Monday", "08:00", "cron(0 21,22 ? * SUN *)"),
        # The UTC day is Sunday in summer (23:30 UTC), Monday in winter (00:30 UTC).
        ("Europe/London", "Monday", "00:30", "cron(30 0,23 ? * SUN,MON *)"),
        ("Asia/Tokyo", "Friday", "18:45", "cron(45 9 ? * FRI *)"),  # no DST: one time, as before
        ("Asia/Kolkata", "Monday", "00:30", "cron(0 19 ? * SUN *)"),
        ("Australia/Lord_Howe", "Tuesday", "07:15", "cron(15,45 20 ? * MON *)"),  # a 30-minute DST shift
        # Times that a DST change skips (02:30 New York, 01:30 London in spring) or repeats (autumn).
        ("America/New_York", "Sunday", "02:30", "cron(30 6,7 ? * SUN *)"),
        ("Europe/London", "Sunday", "01:30", "cron(30 0,1 ? * SUN *)"),
    ],
)
def test_a_year_of_weekly_firings_runs_once_a_week_at_the_local_minute(zone, period, hhmm, expression):
    built, ran = fired_over_the_year(period, hhmm, zone)
    assert built == expression
    assert len(ran) == 52 and len(set(ran)) == 52  # 2026 has 52 of each weekday here, each run once
    for occurrence in ran:
        local = occurrence.astimezone(ZoneInfo(zone))
        assert local.weekday() == PY_DAY[period.upper()], local
        if exists_on(local.date(), hhmm, zone):
            assert local_hhmm(occurrence, zone) == hhmm, local
        else:  # skipped that night: the first minute after the gap, as the offset before it gives
            assert local_hhmm(occurrence, zone) > hhmm, local
    # Consecutive runs are a week apart, give or take the DST shift.
    assert all(abs(b - a - timedelta(days=7)) <= timedelta(hours=1) for a, b in itertools.pairwise(ran))
    utc_times = {occurrence.strftime("%H:%M") for occurrence in ran}
    assert len(utc_times) == (1 if zone.startswith("Asia/") else 2)
    assert len(list(cron_times(expression, YEAR_START, YEAR_END))) > len(ran) or len(utc_times) == 1


def test_sydney_monday_morning_runs_on_sunday_utc_in_both_seasons():
    _, ran = fired_over_the_year("Monday", "08:00", "Australia/Sydney")
    january, july = [next(o for o in ran if o.month == month) for month in (1, 7)]
    assert (january.weekday(), january.hour) == (6, 21)  # AEDT, UTC+11
    assert (july.weekday(), july.hour) == (6, 22)  # AEST, UTC+10


def test_a_repeated_wall_clock_time_runs_once_at_its_first_occurrence():
    # London, Sunday 25 October 2026: 01:30 happens at 00:30 UTC (BST), then again at 01:30 UTC (GMT).
    _, ran = fired_over_the_year("Sunday", "01:30", "Europe/London")
    that_night = [o for o in ran if o.date() == datetime(2026, 10, 25).date()]
    assert that_night == [datetime(2026, 10, 25, 0, 30, tzinfo=UTC)]


def test_a_daily_schedule_runs_every_local_day_across_both_changes():
    _, ran = fired_over_the_year(None, "09:00", "America/New_York")
    assert len(ran) == 365 and {local_hhmm(o, "America/New_York") for o in ran} == {"09:00"}
    assert len({o.astimezone(ZoneInfo("America/New_York")).date() for o in ran}) == 365


def test_a_late_or_repeated_delivery_is_for_the_same_occurrence():
    clock = cron.WallClock(ZoneInfo("Australia/Sydney"), 0, 8, 0)
    occurrence = datetime(2026, 4, 5, 22, 0, tzinfo=UTC)  # Monday 6 April 08:00 AEST, the day after the change
    for firing in (
        occurrence,
        occurrence + timedelta(seconds=59),
        occurrence + timedelta(minutes=15),
        occurrence - timedelta(seconds=30),
    ):
        assert clock.due(firing) == occurrence, firing
    for firing in (
        occurrence + timedelta(minutes=15, seconds=1),
        occurrence - timedelta(minutes=2),
        occurrence - timedelta(hours=1),
    ):  # 21:00 UTC: the cron's summer hour
        assert clock.due(firing) is None, firing


def test_next_occurrence_is_in_the_zone_and_null_past_until():
    record = {
        "period": "Monday",
        "time": "08:00",
        "until": "2026-04-13 08:00",
        "timezone": "Australia/Sydney",
        "until_ms": int(datetime(2026, 4, 12, 22, 0, tzinfo=UTC).timestamp() * 1000),
    }
    ms = int(datetime(2026, 3, 30, 12, 0, tzinfo=UTC).timestamp() * 1000)
    assert cron.next_occurrence(record, ms) == int(datetime(2026, 4, 5, 22, 0, tzinfo=UTC).timestamp() * 1000)
    after = int(datetime(2026, 4, 5, 22, 0, tzinfo=UTC).timestamp() * 1000)
    assert cron.next_occurrence(record, after) == record["until_ms"]  # until's own minute is included
    assert cron.next_occurrence(record, record["until_ms"]) is None


def test_a_schedule_stored_before_zones_keeps_its_utc_cron():
    legacy = {
        "period": "Monday",
        "time": "09:00",
        "until": "2026-12-01 09:00",
        "expression": "cron(0 8 ? * MON *)",
        "until_ms": int(datetime(2026, 12, 1, 9, 0, tzinfo=UTC).timestamp() * 1000),
    }
    firing = int(datetime(2026, 11, 23, 8, 0, 40, tzinfo=UTC).timestamp() * 1000)
    assert cron.due_occurrence(legacy, firing) == firing - 40_000  # every firing runs, as before
    assert cron.next_occurrence(legacy, firing) == int(datetime(2026, 11, 30, 8, 0, tzinfo=UTC).timestamp() * 1000)
    assert cron.next_occurrence(legacy, firing + 7 * 86_400_000) is None  # past until


@pytest.mark.parametrize("zone", ["Europe/London", "UTC", "Etc/GMT+5", "America/Argentina/Buenos_Aires"])
def test_timezone_accepts_iana_names_and_reads_time_and_until_there(zone):
    schedule = parse_schedule({"time": "09:00", "until": "2026-12-01 10:00", "timezone": zone}, NOW, "Asia/Tokyo")
    assert schedule.timezone == zone
    assert schedule.until_utc == datetime(2026, 12, 1, 10, 0, tzinfo=ZoneInfo(zone)).astimezone(UTC)
    assert parse_schedule({"until": FUTURE, "timezone": None}, NOW, "Asia/Tokyo").timezone == "Asia/Tokyo"


@pytest.mark.parametrize(
    "zone",
    [
        "Mars/Olympus",
        "utc",
        "",
        "/etc/localtime",
        "../etc/passwd",
        "localtime",
        "Europe/London ",
        5,
        True,
        ["Europe/London"],
        {"name": "UTC"},
    ],
)
def test_timezone_must_be_a_known_iana_name(zone):
    error = rejected({"until": "soon", "period": "Funday", "timezone": zone})  # checked first
    assert (error.field, error.message) == ("timezone", "timezone must be an IANA time zone name such as Europe/London")


def test_cron_times_lists_the_matches_in_order():
    start = datetime(2026, 11, 22, 0, 0, tzinfo=UTC)  # a Sunday
    times = list(cron_times("cron(30 6,7 ? * SUN,MON *)", start, start + timedelta(days=7)))
    assert times == [
        start.replace(hour=6, minute=30),
        start.replace(hour=7, minute=30),
        start.replace(day=23, hour=6, minute=30),
        start.replace(day=23, hour=7, minute=30),
    ]
    assert list(cron_times("cron(0 9 * * ? *)", start.replace(hour=9), start.replace(hour=9))) == [
        start.replace(hour=9)
    ]


def test_zones_come_from_the_pinned_tzdata_package_without_a_system_database():
    # As on a runtime without /usr/share/zoneinfo: zoneinfo falls back to the tzdata package.
    import zoneinfo

    saved = zoneinfo.TZPATH
    try:
        zoneinfo.reset_tzpath(to=[])
        ZoneInfo.clear_cache()
        cron._known_zones.cache_clear()
        body = {"period": "Monday", "time": "08:00", "until": "2027-06-01 00:00", "timezone": "Australia/Sydney"}
        assert parse_schedule(body, NOW).expression == "cron(0 21,22 ? * SUN *)"
    finally:
        zoneinfo.reset_tzpath(to=saved)
        ZoneInfo.clear_cache()
        cron._known_zones.cache_clear()
