"""Schedules as AWS EventBridge cron expressions: build, validate and evaluate them.

Pure functions, no AWS and no I/O. A user asks for a job to run at `time` on `period`
(a weekday, or every day) until `until`, all wall-clock in a time zone; `parse_schedule`
validates that and builds the cron of its EventBridge rule. `WallClock` computes the
schedule's occurrences (the UTC instants it is due). `validate_aws_cron` checks an
expression the way AWS would (moto accepts any `cron(...)`, AWS does not), and
`cron_matches` / `cron_times` evaluate one, for the local stack's EventBridge clock.

Time zones. EventBridge cron is always UTC, and a zone's UTC offset changes with daylight
saving, so one UTC time cannot be a wall-clock time all year. The design:
- An occurrence is `time` on each `period` day (or every day) in the zone, converted
  to UTC with the offset in force on that date. A wall-clock time that a DST change
  skips or repeats is read with the offset in force before the change (PEP 495 fold=0):
  02:30 on a spring-forward night in New York runs at 03:30 EDT (07:30 UTC), and 01:30
  on a fall-back night runs once, at the first 01:30.
- The rule's cron *covers* every occurrence: its minutes, hours and (weekly) days are the
  union of the UTC minutes, hours and days of all occurrences from now to `until` (at most
  five years ahead; past the zone's last listed change its rules repeat every year). For
  New York, Monday 09:00 is `cron(0 13,14 ? * MON *)`; for Sydney, Monday 08:00 is
  `cron(0 21,22 ? * SUN *)` (the UTC day is Sunday); Lord Howe's 30-minute DST shift
  gives two minutes. A zone without DST gives exactly one time, as before.
- The cross product can also match times that are not occurrences (New York in winter
  fires at 13:00 and 14:00 UTC). The firing handler runs only the occurrence that is due:
  the latest one at or before the firing, if the firing is at most LATE_SECONDS after it
  (EventBridge delivers late at times, Lambda retries a failed delivery within minutes);
  the other firings run nothing. Their run id is made from the occurrence, so a
  duplicate or retried delivery finds that occurrence's run already there.
- `until` is read in the zone, with the offset in force on its date (fold=0 likewise).
- Converting to UTC may move the day: Monday 00:30 in Asia/Kolkata is Sunday 19:00 UTC,
  so the cron says SUN.

AWS numbers days of the week 1-7 = SUN-SAT (Unix cron: 0-6 = SUN-SAT). Built
expressions use names (MON), never numbers, so no numbering can be got wrong.
"""

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from datetime import timezone as dt_timezone
from functools import lru_cache
from typing import Iterator, Optional
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

_DAY_NAMES = ("MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY", "SUNDAY")
# Python's weekday() index (MON=0) -> AWS abbreviation.
_DAY_ABBRS = tuple(name[:3] for name in _DAY_NAMES)

# [0-9], not \d: \d also matches non-ASCII digits such as "٠".
_UNTIL_RE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2}) ([0-9]{2}):([0-9]{2})")
_TIME_RE = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
_UTC = dt_timezone.utc
# A firing runs the occurrence it is for if it comes at most this long after it (late
# deliveries, Lambda's retries of a failed one), or this long before it (clocks differ).
LATE_SECONDS = 15 * 60
EARLY_SECONDS = 60
# How far ahead the rule's cron covers the occurrences; past the zone's last listed change
# its DST rules repeat every year, so any span of a year or more sees every UTC time.
_COVER_DAYS = 5 * 366
_WEEK_DAYS = 8  # a span sure to hold an occurrence of a weekly schedule
_ZONE_HELP = "timezone must be an IANA time zone name such as Europe/London"


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
    timezone: str = "UTC"  # the IANA zone `time`, `period` and `until` are read in


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
        return _UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as e:
        # A deployment mistake, not the user's: deliberately not a ScheduleError.
        raise ValueError(f"unknown time zone {name!r} (NOTEBOOKS_TIMEZONE)") from e


@lru_cache(maxsize=1)
def _known_zones() -> frozenset:
    """The IANA zone names the database knows (the system's and the tzdata package's),
    without the system's aliases of its own zone, which are no IANA names."""
    return (frozenset(available_timezones()) - {"localtime", "posixrules", "Factory"}) | {"UTC"}


def _requested_zone(value, default: str) -> tuple:
    """(name, tzinfo) of the request's `timezone`, or of the deployment's default when
    omitted. Only a name the database lists is accepted: never a path, never "localtime"."""
    if value is None:
        return default, _zone(default)
    if not isinstance(value, str) or value not in _known_zones():
        raise ScheduleError("timezone", _ZONE_HELP)
    try:
        return value, _zone(value)
    except ValueError:
        raise ScheduleError("timezone", _ZONE_HELP) from None


def _parse_until(value, zone, now: datetime) -> tuple:
    """`until` as aware datetimes (in `zone`, in UTC), checked to be after `now`."""
    if value is None:
        raise ScheduleError("until", "until is required")
    match = _UNTIL_RE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ScheduleError("until", "until must be a string in YYYY-MM-DD HH:MM format")
    try:
        year, month, day, hour, minute = (int(part) for part in match.groups())
        local = datetime(year, month, day, hour, minute, tzinfo=zone)
        # Converting year-1 or year-9999 times to UTC can leave datetime's range.
        until_utc = local.astimezone(_UTC)
    except (ValueError, OverflowError):
        raise ScheduleError("until", f"until is not a real date and time: {value}") from None
    if until_utc <= now:
        raise ScheduleError("until", "until must be in the future")
    return local, until_utc


@dataclass(frozen=True)
class WallClock:
    """A schedule's occurrences: `hour`:`minute` wall-clock in `zone`, on `weekday`
    (Python's MON=0) or, when it is None, every day. Occurrences are aware UTC datetimes."""

    zone: tzinfo
    weekday: Optional[int]
    hour: int
    minute: int

    @classmethod
    def of(cls, record: dict) -> "WallClock":
        """The wall clock of a stored schedule (`period`, `time`, `until`, `timezone`)."""
        hhmm = record.get("time") or record["until"][-5:]  # no `time`: until's time of day
        period = record.get("period")
        return cls(
            _zone(record["timezone"]), None if period is None else _weekday_index(period), int(hhmm[:2]), int(hhmm[3:])
        )

    def on(self, day: date) -> Optional[datetime]:
        """The occurrence on the local date `day`, or None if that day has none. A time
        the zone skips or repeats that day is read with the offset before the change."""
        if self.weekday is not None and day.weekday() != self.weekday:
            return None
        return datetime(day.year, day.month, day.day, self.hour, self.minute, tzinfo=self.zone).astimezone(_UTC)

    def _around(self, moment: datetime, days: range) -> Iterator[datetime]:
        today = moment.astimezone(self.zone).date()
        for shift in days:
            occurrence = self.on(today + timedelta(days=shift))
            if occurrence is not None:
                yield occurrence

    def latest(self, moment: datetime) -> Optional[datetime]:
        """The last occurrence at or before `moment`."""
        return next((when for when in self._around(moment, range(1, -_WEEK_DAYS, -1)) if when <= moment), None)

    def next_after(self, moment: datetime) -> Optional[datetime]:
        """The first occurrence after `moment`."""
        return next((when for when in self._around(moment, range(-1, _WEEK_DAYS)) if when > moment), None)

    def due(self, firing: datetime) -> Optional[datetime]:
        """The occurrence a rule firing at `firing` is for: the latest one, if the firing
        is at most LATE_SECONDS after it (or EARLY_SECONDS before it); else None."""
        occurrence = self.latest(firing + timedelta(seconds=EARLY_SECONDS))
        if occurrence is None or firing - occurrence > timedelta(seconds=LATE_SECONDS):
            return None
        return occurrence

    def between(self, start: datetime, end: datetime) -> Iterator[datetime]:
        """The occurrences from `start` to `end` (both included), in order."""
        day, last = (moment.astimezone(self.zone).date() for moment in (start, end))
        day -= timedelta(days=1)  # local dates around the ends: an offset can move an occurrence a day
        while day <= last + timedelta(days=1):
            when = self.on(day)
            if when is not None and start <= when <= end:
                yield when
            day += timedelta(days=1)

    def cover(self, start: datetime, end: datetime) -> str:
        """A UTC cron matching every occurrence from `start` to `end` (at most _COVER_DAYS
        ahead, and at least a week, so it has one): the union of their minutes, hours and,
        weekly, days. It may match other times too; `due` tells them apart."""
        last = min(max(end, start + timedelta(days=_WEEK_DAYS)), start + timedelta(days=_COVER_DAYS))
        times = list(self.between(start, last))
        minutes = ",".join(str(value) for value in sorted({when.minute for when in times}))
        hours = ",".join(str(value) for value in sorted({when.hour for when in times}))
        if self.weekday is None:
            return f"cron({minutes} {hours} * * ? *)"
        days = sorted({when.weekday() for when in times}, key=_aws_day)
        return f"cron({minutes} {hours} ? * {','.join(_DAY_ABBRS[day] for day in days)} *)"


def _at(epoch_ms: int) -> datetime:
    return datetime.fromtimestamp(epoch_ms / 1000, _UTC)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp()) * 1000


def due_occurrence(record: dict, firing_ms: int) -> Optional[int]:
    """The occurrence (epoch ms) that a firing of a stored schedule's rule at `firing_ms`
    is for, or None when none is due (`until` is checked by the caller).

    A schedule stored before time zones (no `timezone`) ran at every firing of its
    single-time UTC cron: it still does, its occurrence being the firing's minute.
    """
    if "timezone" not in record:
        return firing_ms // 60_000 * 60_000
    due = WallClock.of(record).due(_at(firing_ms))
    return None if due is None else _ms(due)


def next_occurrence(record: dict, after_ms: int) -> Optional[int]:
    """The first occurrence (epoch ms) of a stored schedule after `after_ms`, or None when
    there is none up to its `until` (`until_ms`, the minute included)."""
    after = _at(after_ms)
    if "timezone" in record:
        upcoming = WallClock.of(record).next_after(after)
    else:  # stored before time zones: the next firing of its cron
        start = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
        upcoming = next(cron_times(record["expression"], start, start + timedelta(days=_WEEK_DAYS)), None)
    if upcoming is None or _ms(upcoming) > int(record["until_ms"]):
        return None
    return _ms(upcoming)


def parse_schedule(body_fields, now: datetime, timezone: str = "UTC") -> Schedule:
    """Validate a schedule request and build its EventBridge cron expression.

    `body_fields` maps "until" (required, "YYYY-MM-DD HH:MM"), "period" (optional
    weekday name; omitted or None = every day), "time" (optional "HH:MM"; omitted =
    the time of day of `until`) and "timezone" (optional IANA name; omitted or None =
    `timezone`, the deployment's) to JSON values. `now` is the aware current time.
    Raises ScheduleError for bad input, checking timezone, until, period, then time.
    The expression covers every occurrence (WallClock.cover).
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    zone_name, zone = _requested_zone(body_fields.get("timezone"), timezone)
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

    expression = WallClock(zone, day, hour, minute).cover(now, until_utc)
    validate_aws_cron(expression)
    return Schedule(
        period=period, time=time, until=until, until_utc=until_utc, expression=expression, timezone=zone_name
    )


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
    _Field("day-of-week", 1, 7, names=("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"), question=True, step=False),
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
    values: set[int] = set()
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
    fields = tuple(_field_values(text, field) for text, field in zip(texts, _FIELDS, strict=True))
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
    utc = moment.astimezone(_UTC)
    return utc.minute in minutes and utc.hour in hours and _date_matches(utc, days, months, weekdays, years)


def _date_matches(utc: datetime, days, months, weekdays, years) -> bool:
    """Whether the UTC date of `utc` is one of the parsed expression's."""
    # Exactly one of days and weekdays is None ("?", any); _parse guarantees it.
    day_ok = utc.day in days if weekdays is None else _aws_day(utc.weekday()) in weekdays
    return day_ok and utc.month in months and utc.year in years


def cron_times(expression: str, start: datetime, end: datetime) -> Iterator[datetime]:
    """The UTC minutes from aware `start` to `end` (both included) at which AWS would fire
    `expression`, in order. Raises ValueError if the expression is invalid."""
    minutes, hours, days, months, weekdays, years = _parse(expression)
    day = start.astimezone(_UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    while day <= end:
        if _date_matches(day, days, months, weekdays, years):
            for hour in sorted(hours):
                for minute in sorted(minutes):
                    when = day.replace(hour=hour, minute=minute)
                    if start <= when <= end:
                        yield when
        day += timedelta(days=1)
