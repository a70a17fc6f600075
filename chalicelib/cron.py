"""Schedules as AWS EventBridge cron expressions: build, validate and evaluate them.

Pure functions, no AWS and no I/O. A user asks for a job to run at `time` on `period`
(a weekday, or every day) until `until`; `parse_schedule` turns that into a cron
expression. `validate_aws_cron` checks an expression the way AWS would (moto accepts
any `cron(...)`, AWS does not), and `cron_matches` evaluates one at a given minute, for
the local stack's EventBridge clock.

Time zones. EventBridge cron is always UTC. With a deployment time zone
(NOTEBOOKS_TIMEZONE, an IANA name) `time` and `until` are wall-clock times in that zone:
- `until` is converted with the zone's offset on that date, so it is the exact instant.
- The cron is built with the zone's UTC offset *at the moment of scheduling*. A UTC
  cron cannot follow daylight saving, so after the zone's next DST change the job runs
  one hour off wall-clock (09:00 becomes 08:00 or 10:00) until it is rescheduled.
- Converting to UTC may move the day: Monday 00:30 in Asia/Kolkata is Sunday 19:00
  UTC, so the cron says SUN.
- A wall-clock `until` that a DST change skips or repeats is read with the offset in
  force before the change (PEP 495 fold=0).

AWS numbers days of the week 1-7 = SUN-SAT (Unix cron: 0-6 = SUN-SAT). Built
expressions use names (MON), never numbers, so no numbering can be got wrong.
"""
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone as dt_timezone
from typing import Optional
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_DAY_NAMES = ("MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY", "SUNDAY")
# Python's weekday() index (MON=0) -> AWS abbreviation.
_DAY_ABBRS = tuple(name[:3] for name in _DAY_NAMES)

# [0-9], not \d: \d also matches non-ASCII digits such as "٠".
_UNTIL_RE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2}) ([0-9]{2}):([0-9]{2})")
_TIME_RE = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
_MINUTES_PER_DAY = 24 * 60
_MINUTES_PER_WEEK = 7 * _MINUTES_PER_DAY


class ScheduleError(ValueError):
    """A schedule request the API must refuse (400); `field` names the bad input."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Schedule:
    """A validated schedule request and the EventBridge cron expression that runs it."""

    period: Optional[str]  # as given by the user (None if omitted)
    time: Optional[str]  # as given (None if omitted)
    until: str  # as given
    until_utc: datetime  # aware UTC datetime of `until`
    expression: str  # AWS cron, e.g. "cron(50 6 ? * MON *)"


def _weekday_index(name) -> Optional[int]:
    """Python weekday() index (MON=0) of a full or three-letter day name, any case."""
    if not isinstance(name, str):
        return None
    upper = name.upper()
    for index, full in enumerate(_DAY_NAMES):
        if upper in (full, full[:3]):
            return index
    return None


def weekday_number(name: str) -> int:
    """AWS day-of-week number of a weekday name (full or three-letter, any case).

    SUN=1, MON=2, ... SAT=7; raises ValueError for anything else.
    """
    index = _weekday_index(name)
    if index is None:
        raise ValueError(f"not a weekday name: {name!r}")
    return _aws_day(index)


def _aws_day(index: int) -> int:
    """AWS day-of-week number (SUN=1 ... SAT=7) of a Python weekday() index (MON=0)."""
    return (index + 1) % 7 + 1


def _zone(name: str):
    # UTC needs no time zone database, which a minimal runtime image may lack.
    if name == "UTC":
        return dt_timezone.utc
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as e:
        # A deployment mistake, not the user's: deliberately not a ScheduleError.
        raise ValueError(f"unknown time zone {name!r} (NOTEBOOKS_TIMEZONE)") from e


def _parse_until(value, zone, now: datetime) -> tuple:
    """`until` as aware datetimes (in `zone`, in UTC), checked to be after `now`."""
    if value is None:
        raise ScheduleError("until", "until is required")
    match = _UNTIL_RE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ScheduleError("until", "until must be a string in YYYY-MM-DD HH:MM format")
    try:
        local = datetime(*(int(part) for part in match.groups()), tzinfo=zone)
        # Converting year-1 or year-9999 times to UTC can leave datetime's range.
        until_utc = local.astimezone(dt_timezone.utc)
    except (ValueError, OverflowError):
        raise ScheduleError("until", f"until is not a real date and time: {value}") from None
    if until_utc <= now:
        raise ScheduleError("until", "until must be in the future")
    return local, until_utc


def parse_schedule(body_fields, now: datetime, timezone: str = "UTC") -> Schedule:
    """Validate a schedule request and build its EventBridge cron expression.

    `body_fields` maps "until" (required, "YYYY-MM-DD HH:MM"), "period" (optional
    weekday name; omitted or None = every day) and "time" (optional "HH:MM"; omitted =
    the time of day of `until`) to JSON values. `now` is the aware current time;
    `timezone` is the IANA zone `time` and `until` are given in. Raises ScheduleError
    for bad input, checking until, then period, then time.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    zone = _zone(timezone)
    until = body_fields.get("until")
    until_local, until_utc = _parse_until(until, zone, now)

    period = body_fields.get("period")
    day = None
    if period is not None:
        day = _weekday_index(period)
        if day is None:
            raise ScheduleError("period", "period must be a weekday name such as Monday")

    time = body_fields.get("time")
    if time is None:
        hour, minute = until_local.hour, until_local.minute
    else:
        match = _TIME_RE.fullmatch(time) if isinstance(time, str) else None
        if match is None:
            raise ScheduleError("time", "time must be HH:MM (24-hour)")
        hour, minute = int(match.group(1)), int(match.group(2))

    offset = now.astimezone(zone).utcoffset() // timedelta(minutes=1)
    # Work in minutes since Monday 00:00 so that crossing midnight also moves the day.
    utc_minutes = (day or 0) * _MINUTES_PER_DAY + hour * 60 + minute - offset
    utc_minutes %= _MINUTES_PER_WEEK
    utc_day, minute_of_day = divmod(utc_minutes, _MINUTES_PER_DAY)
    utc_hour, utc_minute = divmod(minute_of_day, 60)
    if day is None:
        expression = f"cron({utc_minute} {utc_hour} * * ? *)"
    else:
        expression = f"cron({utc_minute} {utc_hour} ? * {_DAY_ABBRS[utc_day]} *)"
    validate_aws_cron(expression)
    return Schedule(period=period, time=time, until=until, until_utc=until_utc, expression=expression)


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple = ()  # names[i] stands for the value low + i
    question: bool = False  # may be "?"
    step: bool = True  # may use "/"


_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_FIELDS = (
    _Field("minutes", 0, 59),
    _Field("hours", 0, 23),
    _Field("day-of-month", 1, 31, question=True),
    _Field("month", 1, 12, names=_MONTHS),
    # AWS documents no "/" for day-of-week; refusing it is stricter than AWS, never looser.
    _Field("day-of-week", 1, 7, names=("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"),
           question=True, step=False),
    _Field("year", 1970, 2199),
)


def _value(text: str, field: _Field) -> int:
    if text in field.names:
        return field.low + field.names.index(text)
    if re.fullmatch(r"[0-9]+", text) is None:
        if set(text) & set("LW#"):
            raise ValueError(f"{field.name}: {text!r} uses L, W or #, which are unsupported")
        raise ValueError(f"{field.name}: {text!r} is not a number or name")
    number = int(text)
    if not field.low <= number <= field.high:
        raise ValueError(f"{field.name}: {number} is outside {field.low}-{field.high}")
    return number


def _item(text: str, field: _Field) -> range:
    base, slash, step_text = text.partition("/")
    if slash and not field.step:
        raise ValueError(f"{field.name}: '/' is not allowed in this field")
    if base == "*":
        first, last = field.low, field.high
    elif "-" in base:
        start, _, end = base.partition("-")
        first, last = _value(start, field), _value(end, field)
        if first > last:
            raise ValueError(f"{field.name}: range {base!r} runs backwards")
    else:
        first = _value(base, field)
        # "a/n" runs from a to the end of the field; a lone "a" is just a.
        last = field.high if slash else first
    step = 1
    if slash:
        span = field.high - field.low + 1
        if re.fullmatch(r"[0-9]+", step_text) is None or not 1 <= int(step_text) <= span:
            raise ValueError(f"{field.name}: the increment in {text!r} must be a number from 1 to {span}")
        step = int(step_text)
    return range(first, last + 1, step)


def _field_values(text: str, field: _Field) -> Optional[frozenset]:
    """The values `text` allows in `field`; None for "?" (any)."""
    if text == "?":
        if not field.question:
            raise ValueError(f"{field.name}: '?' is only allowed in day-of-month and day-of-week")
        return None
    items = text.split(",")
    values = set()
    for item in items:
        if item == "":
            raise ValueError(f"{field.name}: empty list item in {text!r}")
        if item == "*" and len(items) > 1:
            raise ValueError(f"{field.name}: '*' cannot be part of a list in {text!r}")
        values.update(_item(item, field))
    return frozenset(values)


def _parse(expression) -> tuple:
    """The six fields' allowed values (None for "?"); ValueError if AWS would refuse it."""
    if not isinstance(expression, str):
        raise ValueError(f"cron expression must be a string, not {type(expression).__name__}")
    match = re.fullmatch(r"cron\((.*)\)", expression)
    if match is None:
        raise ValueError(f"{expression!r} is not of the form cron(...)")
    texts = match.group(1).split(" ")
    if "" in texts:
        raise ValueError(f"{expression!r} has an empty field: separate fields by single spaces")
    if len(texts) != len(_FIELDS):
        raise ValueError(f"{expression!r} has {len(texts)} fields; AWS cron needs 6")
    fields = tuple(_field_values(text, field) for text, field in zip(texts, _FIELDS))
    if (fields[2] is None) == (fields[4] is None):
        raise ValueError(f"{expression!r}: exactly one of day-of-month and day-of-week must be '?'")
    return fields


def validate_aws_cron(expression: str) -> None:
    """Check `expression` is an AWS EventBridge cron expression; ValueError says why not.

    Supports `*`, `?`, numbers, JAN-DEC and SUN-SAT names, ranges, lists and `/`
    increments; refuses `L`, `W` and `#`, which this service never builds. Where AWS is
    vague it errs strict: names are uppercase only, day-of-week takes no `/` (AWS
    documents none), ranges may not run backwards and `*` may not be in a list.
    """
    _parse(expression)


def cron_matches(expression: str, moment: datetime) -> bool:
    """Whether AWS would fire `expression` in the UTC minute containing aware `moment`.

    Day-of-week uses AWS numbering (1=SUN ... 7=SAT). Raises ValueError if the
    expression is invalid or `moment` is naive.
    """
    if moment.tzinfo is None:
        raise ValueError("moment must be timezone-aware")
    minutes, hours, days, months, weekdays, years = _parse(expression)
    utc = moment.astimezone(dt_timezone.utc)
    # Exactly one of days and weekdays is None ("?", any); _parse guarantees it.
    day_ok = utc.day in days if weekdays is None else _aws_day(utc.weekday()) in weekdays
    return (utc.minute in minutes and utc.hour in hours and day_ok
            and utc.month in months and utc.year in years)
