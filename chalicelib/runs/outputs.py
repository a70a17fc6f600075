"""Executed notebooks bounded in size: the runner stores at most a configured maximum.

An output past the maximum keeps every cell's source and the outputs that fit, from the
first cell on; later cells' outputs are replaced by a note, and the run fails with
`OutputTooLarge`, naming the first cell whose output was dropped.
"""

import json

import nbformat

from chalicelib.notebooks.service import serialise

OUTPUT_DROPPED = "[output dropped: the executed notebook was over the size limit]\n"


def _outputs_bytes(cell) -> int:
    return len(json.dumps(cell.get("outputs", [])).encode("utf-8"))


def fit_output(notebook, limit: int) -> tuple:
    """(bytes to store, error or None): the notebook serialised, at most `limit` bytes
    where dropping outputs can make it so."""
    data = serialise(notebook)
    original_size = len(data)
    if original_size <= limit:
        return data, None
    trimmed = nbformat.from_dict(json.loads(json.dumps(notebook)))
    note = nbformat.v4.new_output("stream", name="stderr", text=OUTPUT_DROPPED)
    excess, first_dropped = len(data) - limit, None
    for index in reversed(range(len(trimmed.cells))):
        cell = trimmed.cells[index]
        if not cell.get("outputs"):
            continue
        if excess <= 0:  # the estimate says it fits: check it
            data = serialise(trimmed)
            if len(data) <= limit:
                break
            excess = len(data) - limit
        excess -= _outputs_bytes(cell) - _outputs_bytes({"outputs": [note]})
        cell.outputs = [note]
        first_dropped = index
    else:  # every cell looked at without a fitting check: serialise what is left
        data = serialise(trimmed)
    error = {
        "cell_index": first_dropped,
        "ename": "OutputTooLarge",
        "evalue": f"The executed notebook was {original_size} bytes, over the limit of {limit} "
        f"(NOTEBOOKS_MAX_OUTPUT_BYTES): outputs from cell {first_dropped} on were dropped",
    }
    return data, error
