"""A run's live log: its stream output (stdout, stderr) and error tracebacks so far, as
plain text in cell order, and the cell it is executing.

While a run executes, a thread of the runner's own (`LiveLog`) looks at the executing
notebook every LOG_INTERVAL_SECONDS: when the text changed, it stores the whole log as
one S3 object beside the run's output (`runs/<owner>/<notebook_id>/<run_id>.log`: the
output's lifetime, lifecycle rule and cleanup); when the executing cell changed, it
records its index on the run (`current_cell`). The runner stores the final log once the
run ends, before recording the end. A log is at most `max_bytes` (NOTEBOOKS_MAX_LOG_BYTES):
past it, its first and last parts are kept around a marker that says how much was cut.
"""

import re
from typing import Callable, Optional

from chalicelib.common.periodic import Periodic
from chalicelib.storage.files import output_key, outputs_prefix

# How often a running run's log and current cell are stored (when they changed).
LOG_INTERVAL_SECONDS = 2.0
CONTENT_TYPE = "text/plain; charset=utf-8"
# Terminal escape sequences (IPython colours its tracebacks): CSI sequences and two-byte escapes.
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|[@-Z\\-_])")


def log_key(owner: str, notebook_id: str, run_id: str) -> str:
    """Where one run's log lives: beside its executed notebook."""
    return f"{outputs_prefix(owner, notebook_id)}{run_id}.log"


def run_object_keys(owner: str, notebook_id: str, run_id: str) -> list:
    """Every S3 object a run has: its executed notebook and its log."""
    return [output_key(owner, notebook_id, run_id), log_key(owner, notebook_id, run_id)]


def _text(value) -> str:
    """A stream's text or a traceback line: a string, or a list of them in a stored
    notebook; whatever else a hostile kernel sends, as text."""
    return "".join(map(str, value)) if isinstance(value, list) else str(value or "")


def log_text(cells) -> str:
    """The stream output and error tracebacks of `cells`, in cell order, without terminal
    colour codes. Safe on a notebook that another thread is executing: it only copies
    lists and reads values, which nbclient replaces whole."""
    parts = []
    for cell in list(cells or []):
        for output in list(cell.get("outputs") or []):
            kind = output.get("output_type")
            if kind == "stream":
                parts.append(_text(output.get("text")))
            elif kind == "error":
                parts.append("\n".join(_text(line) for line in list(output.get("traceback") or [])) + "\n")
    return _ANSI.sub("", "".join(parts))


def capped(text: str, max_bytes: int) -> str:
    """`text` if it is at most `max_bytes` (UTF-8), else its first and last parts around a
    marker saying how many bytes were cut there; the result is at most `max_bytes`."""
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text

    def marker(cut: int) -> str:
        return (
            f"\n[... log cut here: {cut} bytes left out; a run's log keeps at most {max_bytes} bytes "
            f"(NOTEBOOKS_MAX_LOG_BYTES), its first and last parts; the executed notebook has everything "
            f"that fit in it ...]\n"
        )

    budget = max(0, max_bytes - len(marker(len(data)).encode("utf-8")))
    head_bytes = budget // 2
    tail_bytes = budget - head_bytes
    head = data[:head_bytes].decode("utf-8", "ignore")
    tail = data[len(data) - tail_bytes :].decode("utf-8", "ignore") if tail_bytes else ""
    cut = len(data) - len(head.encode("utf-8")) - len(tail.encode("utf-8"))
    return head + marker(cut) + tail


class LiveLog(Periodic):
    """While a run executes (use as a context manager around it), every `interval`
    seconds from a thread of its own: `store(text)` when the log changed, and
    `record_cell(index)` when the executing cell changed.

    `snapshot()` answers (the executing notebook's cells or None, the executing cell's
    index or None), from any thread (NotebookRunner.live). A failed store is tried again
    at the next tick; the run never fails for it.
    """

    def __init__(
        self,
        snapshot: Callable[[], tuple],
        store: Callable[[str], object],
        record_cell: Callable[[int], None],
        max_bytes: int,
        interval: Optional[float] = None,
    ):
        super().__init__(LOG_INTERVAL_SECONDS if interval is None else interval, self.tick, "live-log")
        self._snapshot, self._store, self._record_cell = snapshot, store, record_cell
        self._max_bytes = max_bytes
        self._stored_text = ""  # nothing stored yet reads as empty
        self._stored_cell = None

    def tick(self) -> None:
        """Store what changed since the last tick."""
        cells, index = self._snapshot()
        if index is not None and index != self._stored_cell:
            self._record_cell(index)
            self._stored_cell = index
        text = capped(log_text(cells), self._max_bytes)
        if text != self._stored_text:
            self._store(text)
            self._stored_text = text
