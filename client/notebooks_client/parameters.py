"""`-p NAME VALUE` as the `notebooks` command reads it.

As papermill's `-p`: `True`, `False` and `None` are Python's; else VALUE is JSON where it
parses (`7`, `1.5`, `true`, `null`, `[1, 2]`, `{"a": 1}`, `"7"`), else the text itself.
Where the notebook declares NAME as `str` (or `Optional[str]`), VALUE is kept as written
(`-p s 123` is the string "123"), but for None where None fits the parameter.
"""

import json
import math

# papermill's own words (its cli's `_resolve_type`), read before JSON.
PYTHON_CONSTANTS = {"True": True, "False": False, "None": None}
# Declared types (spaces and quotes left out) that take a string, and those that take None too.
STRING_TYPES = frozenset({"str"})
OPTIONAL_STRING_TYPES = frozenset(
    {"Optional[str]", "typing.Optional[str]", "str|None", "None|str", "Union[str,None]", "Union[None,str]"}
)


def reading(text: str):
    """A `-p` value read without the notebook's declarations (see the module's rules)."""
    if text in PYTHON_CONSTANTS:
        return PYTHON_CONSTANTS[text]

    def not_json(constant):
        raise ValueError(constant)  # NaN and Infinity are not JSON, whatever Python's json reads

    def finite(number: str) -> float:
        value = float(number)
        if not math.isfinite(value):  # 1e400: infinite as a float, which JSON cannot carry
            raise ValueError(number)
        return value

    try:
        return json.loads(text, parse_constant=not_json, parse_float=finite)
    except (ValueError, RecursionError):  # nested too deep for Python's JSON reader: not JSON here
        return text


def takes_text(pairs) -> bool:
    """Whether the notebook's declarations could change how these pairs are read: some
    value reads as other than a string."""
    return any(not isinstance(reading(text), str) for _, text in pairs or [])


def parameters_of(pairs, declarations=()) -> dict:
    """The `-p NAME VALUE` pairs as a parameters object (a later NAME wins), read as the
    module says; `declarations`: the notebook's [{"name", "type", "default"}] (or several
    notebooks': a name any of them declares as a string is kept as written)."""
    string_names, none_names = set(), set()
    for declaration in declarations:
        declared = "".join(declaration["type"].split()).strip("\"'")
        if declared in STRING_TYPES | OPTIONAL_STRING_TYPES:
            string_names.add(declaration["name"])
            if declared in OPTIONAL_STRING_TYPES or declaration.get("default") == "None":
                none_names.add(declaration["name"])
    values = {}
    for name, text in pairs or []:
        value = reading(text)
        if name in string_names and not isinstance(value, str) and not (value is None and name in none_names):
            value = text
        values[name] = value
    return values
