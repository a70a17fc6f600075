"""Work repeated while something else runs: a thread of its own, stopped with the block."""

import logging
import threading
from typing import Callable

log = logging.getLogger(__name__)


class Periodic:
    """Calls `tick()` every `interval` seconds, from a thread of its own, while the
    `with` block runs. A tick that raises is logged, and the next tick comes as planned:
    what it failed to do is tried again then."""

    def __init__(self, interval: float, tick: Callable[[], None], name: str):
        self._interval, self._tick = interval, tick
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *_):
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._tick()
            except Exception:  # tried again at the next tick
                log.warning("%s: a tick failed", self._thread.name, exc_info=True)
