"""The shapes of the notebooks API's answers, as far as the client reads them: an answer
of another shape comes from another server than the API (see docs/api.md for the
objects; a field the client does not read is not checked)."""

from typing import Callable, NamedTuple, Optional


class Shape(NamedTuple):
    """What an answer must be to be the API's: `expected` says it in words; `fits` checks
    the JSON value, or the text when `content_type` names the text type it must have."""

    expected: str
    fits: Callable[[object], bool]
    content_type: Optional[str] = None


def _fits(value, spec) -> bool:
    """Whether `value` fits `spec`: a Shape, or a type (a tuple of types) it must be of."""
    return spec.fits(value) if isinstance(spec, Shape) else isinstance(value, spec)


def _object(expected: str, **fields) -> Shape:
    """A JSON object that has each of `fields`, each fitting its spec (see _fits)."""

    def fits(value) -> bool:
        return isinstance(value, dict) and all(
            name in value and _fits(value[name], spec) for name, spec in fields.items()
        )

    return Shape(expected, fits)


def _array(expected: str, item: Shape, length: Optional[int] = None) -> Shape:
    """A JSON array of items fitting `item` (of `length` items, when given)."""

    def fits(value) -> bool:
        return (
            isinstance(value, list)
            and (length is None or len(value) == length)
            and all(item.fits(element) for element in value)
        )

    return Shape(expected, fits)


NOTEBOOK = _object("a notebook object", notebook_id=str, notebook_name=str, status=str)
NOTEBOOKS = _array("an array of notebook objects", NOTEBOOK)
CREATED = _object("an object with notebook_id", notebook_id=str)
PARAMETERS = _object(
    "an object with a parameters array",
    parameters=_array(
        "parameters", _object("a parameter", name=str, type=str, default=(str, type(None)), help=(str, type(None)))
    ),
)
STARTED = _object("a started run", run_id=str, notebook_id=str, status=str)
# Run (of one notebook) and Rerun answer {"runs": [<the started run>]}.
ONE_STARTED = _object("an object with a runs array of one run", runs=_array("one run", STARTED, length=1))
RUN = _object(
    "a run object",
    run_id=str,
    notebook_id=str,
    status=str,
    trigger=str,
    created_at=(int, float),
    error=(dict, type(None)),
)
RUNS = _array("an array of run objects", RUN)
EXECUTED = _object("a notebook (an object with cells)", cells=list)
SUCCESS = Shape('"Success"', lambda value: value == "Success")
LOG = Shape("text/plain", lambda value: isinstance(value, str), "text/plain")
HTML = Shape("text/html", lambda value: isinstance(value, str), "text/html")
