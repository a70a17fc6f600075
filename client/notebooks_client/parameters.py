"""`-p NAME VALUE` as the `notebooks` command reads it.

As papermill's `-p`: `True`, `False` and `None` are Python's; else VALUE is JSON where it
parses (`7`, `1.5`, `true`, `null`, `[1, 2]`, `{"a": 1}`, `"7"`), else the text itself.
Where the notebook declares NAME's type, the declaration has its say:
- `str` (or `Optional[str]`): VALUE as written (`-p s 123` is the string "123", `-p s '"q"'`
  the string '"q"' with its quotes), but for None where None fits the parameter;
- `int` (or `Optional[int]`): VALUE that is not JSON is read as Python's int() reads it
  where it can (`007`, `+3`);
- `float` (or `Optional[float]`): likewise with float(), to a finite number (`.5`, `1e3`).
"""

import json
import math
import re

# papermill's own words (its cli's `_resolve_type`), read before JSON.
PYTHON_CONSTANTS = {"True": True, "False": False, "None": None}
# A declared type that may be None, spaces and quotes left out: its other type is `base`.
_OPTIONAL = re.compile(
    r"(?:typing\.)?Optional\[(?P<a>\w+)\]|(?:typing\.)?Union\[(?:(?P<b>\w+),None|None,(?P<c>\w+))\]"
    r"|(?P<d>\w+)\|None|None\|(?P<e>\w+)"
)


def reading(text: str):
    """A `-p` value read without the notebook's declarations (see the module's rules)."""
    if text in PYTHON_CONSTANTS:
        return PYTHON_CONSTANTS[text]

    def not_json(constant):
        raise ValueError(constant)  # NaN and Infinity are not JSON, whatever Python's json reads

    try:
        return json.loads(text, parse_constant=not_json, parse_float=_finite)
    except (ValueError, RecursionError):  # nested too deep for Python's JSON reader: not JSON here
        return text


def _finite(number: str) -> float:
    """`number` as a float; ValueError unless finite (1e400 is infinite as a float, and
    JSON cannot carry it)."""
    value = float(number)
    if not math.isfinite(value):
        raise ValueError(number)
    return value


def declared_type(declaration: dict) -> tuple:
    """(the declared type without Optional: `str`, `int`, ..., whether None fits the
    parameter: its type says so, or its default is None)."""
    declared = "".join(declaration["type"].split()).strip("\"'")
    optional = _OPTIONAL.fullmatch(declared)
    base = next(part for part in optional.groups() if part) if optional else declared
    return base, optional is not None or declaration.get("default") == "None"


def parameters_of(pairs, declarations=()) -> dict:
    """The `-p NAME VALUE` pairs as a parameters object (a later NAME wins), read as the
    module says; `declarations`: the notebook's [{"name", "type", "default"}] (or several
    notebooks': a name any of them declares as a string is kept as written)."""
    types, none_names = {}, set()
    for declaration in declarations:
        base, takes_none = declared_type(declaration)
        types.setdefault(declaration["name"], set()).add(base)
        if takes_none:
            none_names.add(declaration["name"])
    values = {}
    for name, text in pairs or []:
        value, declared = reading(text), types.get(name, set())
        if "str" in declared:
            if not (value is None and name in none_names):
                value = text
        elif value == text:  # not JSON
            value = _number(text, declared)
        values[name] = value
    return values


def _number(text: str, declared: set):
    """`text` as the int or the finite float its parameter is declared as, where Python
    reads it so; else `text`."""
    for base, convert in (("int", int), ("float", _finite)):
        if base in declared:
            try:
                return convert(text)
            except ValueError:
                pass
    return text
