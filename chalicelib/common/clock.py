"""The clock every service reads: wall-clock seconds since the epoch, `time.time` in
production, a hand-moved stand-in in tests. Services take it as a `Clock`, so a test
decides what "now" is without patching the time module."""

import time
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """A callable answering the current time as epoch seconds (a float)."""

    def __call__(self) -> float: ...


def now_ms(clock: Clock = time.time) -> int:
    """Epoch milliseconds, the unit of every time in responses."""
    return int(clock() * 1000)
