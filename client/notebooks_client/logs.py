"""A run's log followed as it grows, past the server's cap on its size.

The server stores a run's whole log while it fits in NOTEBOOKS_MAX_LOG_BYTES; past that,
it stores the log's first part, a marker, and its last part:

    <first part>\\n[... log cut here: N bytes left out; a run's log keeps at most M bytes ...]\\n<last part>

so the last part starts N bytes after the first part ends, in the whole log. `LogFollower`
places each stored log in the whole log by these numbers (byte offsets) and writes only
what is new: a follower that saw the text before it was cut writes the whole log, and one
that missed a piece writes the marker instead, saying how many bytes it missed. Whatever
happens, what it writes ends with what the stored log ends with (its last lines: a
traceback). A log rewritten (an output cleared) is written again from the changed line on,
or whole once it is shorter than what was written past a cut.
"""

import re
from typing import Callable, NamedTuple

# The server's marker (chalicelib/runs/log.py, `capped`): the bytes cut, then the cap.
_MARKER = re.compile(
    r"\n\[\.\.\. log cut here: (?P<cut>\d+) bytes left out; a run's log keeps at most (?P<cap>\d+) bytes"
    r"[^\n]*\.\.\.\]\n"
)
# A character's UTF-8 encoding is at most this many bytes: the server cuts at character
# boundaries, so each part may hold up to this many bytes less one under its share.
_MAX_CHARACTER_BYTES = 4


class _Piece(NamedTuple):
    """Consecutive bytes of the whole log: `data`, starting at byte `start`."""

    start: int
    data: bytes

    @property
    def end(self) -> int:
        return self.start + len(self.data)


def _pieces(log: str) -> tuple:
    """(the pieces of the whole log that the stored `log` holds, the marker's match or None
    when it holds the whole log). A marker-like line that does not fit the stored log's
    sizes (a notebook that printed one) is text of the log."""
    for match in _MARKER.finditer(log):
        head, tail = log[: match.start()].encode("utf-8"), log[match.end() :].encode("utf-8")
        if _cut_by_server(match, len(head), len(tail)):
            return (_Piece(0, head), _Piece(len(head) + int(match["cut"]), tail)), match
    data = log.encode("utf-8")
    return (_Piece(0, data),), None


def _cut_by_server(marker: re.Match, head: int, tail: int) -> bool:
    """Whether first and last parts of `head` and `tail` bytes around `marker` are what
    the server keeps of a log of that many bytes in all: it shares out the cap less its
    marker's size (a marker with the whole log's size as the number of bytes cut), and
    leaves out the bytes of a character it would cut in two."""
    cut, cap = int(marker["cut"]), int(marker["cap"])
    sized_marker = len(marker.group(0).encode("utf-8")) - len(marker["cut"]) + len(str(head + cut + tail))
    budget = cap - sized_marker
    first = budget // 2
    return (
        budget > 0
        and first - _MAX_CHARACTER_BYTES < head <= first
        and budget - first - _MAX_CHARACTER_BYTES < tail <= budget - first
    )


class LogFollower:
    """Writes (with `write`) what each stored log of a run, given in turn to `update`,
    adds to what it has written."""

    def __init__(self, write: Callable[[str], None]):
        self._write = write
        self._known = _Piece(0, b"")  # the last piece written, up to its end
        self._written = 0  # how far into the whole log (bytes) it has written

    def update(self, log: str) -> None:
        """Write what `log` (the run's stored log now) has that was not written yet."""
        parts, marker = _pieces(log)
        out = []
        for piece in parts:
            if piece.start > self._written:  # a part of the log was cut before it was seen
                out += [_missed(marker, piece.start - self._written), piece.data]
                self._known, self._written = piece, piece.end
                continue
            # The piece's bytes that were written, as far as the last piece written still has them.
            low, high = max(piece.start, self._known.start), min(piece.end, self._written)
            resume = self._written
            if low < high:
                old = self._known.data[low - self._known.start : high - self._known.start]
                ours = piece.data[low - piece.start : high - piece.start]
                if ours != old:  # rewritten (the notebook cleared an output): from the changed line on
                    resume = _line_start(piece, low + _agreed(old, ours))
            elif marker is None and piece.end < self._written:
                resume = piece.start  # the whole log is now shorter than the part written: all of it again
            if resume < piece.end:
                out.append(piece.data[resume - piece.start :])
                self._known, self._written = piece, piece.end
        if out:
            self._write(b"".join(out).decode("utf-8", "replace"))


def _missed(marker: re.Match, missed: int) -> bytes:
    """The server's marker, saying how many bytes the follower missed."""
    text = marker.group(0)
    at = marker.start("cut") - marker.start()
    return (text[:at] + str(missed) + text[at + len(marker["cut"]) :]).encode("utf-8")


def _line_start(piece: _Piece, at: int) -> int:
    """Where, in the whole log, the line of `piece` holding byte `at` starts (the piece's
    start at the most), so a changed line is written whole, never its changed end alone."""
    return piece.start + piece.data.rfind(b"\n", 0, at - piece.start) + 1


def _agreed(old: bytes, new: bytes) -> int:
    """How many first bytes `old` and `new` share (fewer than both have), down to a
    character boundary of `new`."""
    low, high = 0, min(len(old), len(new))
    while low < high:  # by halves: slices compare at C speed, a log is up to a few MiB
        middle = (low + high + 1) // 2
        if old[:middle] == new[:middle]:
            low = middle
        else:
            high = middle - 1
    while low and low < len(new) and (new[low] & 0xC0) == 0x80:  # inside a character
        low -= 1
    return low
