"""Typed parameters: what a notebook's `parameters` cell declares, and whether a Run's
values fit it.

The cell is read by papermill's own `inspect_notebook`, never by a parser of ours. Its
`type` is the annotation (or `# type:` comment) as written; papermill gives "None" when
there is none, its word for "unknown type". A value fits its declared type by these rules:
- unknown type ("None", or a name not listed here): any value;
- `str`: a string; `int`: an integer, not a bool; `float` (and `complex`): any number but
  a bool; `bool`: true or false;
- `list`, `List[X]`, `Sequence[X]`, `set`, `tuple`: an array (each element fitting X);
  `Tuple[X, Y]`: an array of that length, position by position;
- `dict`, `Dict[K, V]`, `Mapping[K, V]`: an object (each value fitting V; keys, strings
  in JSON, fitting K);
- `Optional[X]`: null or X; `Union[X, Y]`: any of them; `Any`, `object`: any value;
- null also fits a parameter whose default is `None` (`x: int = None`).

Bounded cost: papermill's reader takes time that grows with the square of a line's
length, so a line of the parameters cell over MAX_LINE_CHARS characters is not read (its
name is undeclared); a type over MAX_TYPE_CHARS characters is unknown.
"""

import ast
import json
import os
import tempfile

from chalicelib.common import errors

# Cached declarations larger than this are not kept on the notebook's item (400 KB a
# DynamoDB item): such a notebook's content is read when a Run gives parameters.
MAX_CACHED_BYTES = 32 * 1024

MAX_LINE_CHARS = 1000
MAX_TYPE_CHARS = 200

UNKNOWN = "None"  # papermill's type name for a parameter without an annotation
_SCALARS = {
    "str": lambda value: isinstance(value, str),
    "int": lambda value: type(value) is int,
    "float": lambda value: type(value) in (int, float),
    "complex": lambda value: type(value) in (int, float),
    "bool": lambda value: type(value) is bool,
    "NoneType": lambda value: value is None,
}
_ARRAYS = {"list", "List", "Sequence", "set", "Set", "frozenset", "FrozenSet", "Iterable", "tuple", "Tuple"}
_OBJECTS = {"dict", "Dict", "Mapping", "MutableMapping"}


def declared(notebook) -> list:
    """The parameters `notebook`'s `parameters` cell declares, in order: [{"name", "type",
    "default", "help"}], as papermill's `inspect_notebook` reads them; [] without such a
    cell, or for a kernel language papermill cannot inspect."""
    if not any("parameters" in cell.get("metadata", {}).get("tags", []) for cell in notebook.get("cells", [])):
        return []  # no parameters cell: no need for papermill, slow to import (about a second)
    # papermill is imported here, not at the top: the API's cold start does not pay for it.
    import papermill
    from papermill.exceptions import PapermillException

    metadata = notebook.get("metadata", {})
    language = metadata.get("kernelspec", {}).get("language") or metadata.get("language_info", {}).get("name")
    if not isinstance(language, str) or not language:
        # No language named (or not as a name): the runner runs it on python3, so
        # papermill reads it as Python.
        notebook = {
            **notebook,
            "metadata": {
                **metadata,
                "language_info": {"name": "python"},
                "kernelspec": {
                    "display_name": "Python 3",
                    "name": "python3",
                    **metadata.get("kernelspec", {}),
                    "language": "python",
                },
            },
        }
    notebook = {**notebook, "cells": [_short_lines(cell) for cell in notebook.get("cells", [])]}
    handle, path = tempfile.mkstemp(suffix=".ipynb")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(notebook, out)
        inspected = papermill.inspect_notebook(path)
    except PapermillException:  # no translator for the notebook's kernel language
        return []
    finally:
        os.remove(path)
    return [
        {"name": name, "type": entry["inferred_type_name"], "default": entry["default"], "help": entry["help"]}
        for name, entry in inspected.items()
    ]


def _short_lines(cell: dict) -> dict:
    """A parameters cell without its lines over MAX_LINE_CHARS; other cells unchanged."""
    if "parameters" not in cell.get("metadata", {}).get("tags", []):
        return cell
    source = cell.get("source", "")
    source = "".join(source) if isinstance(source, list) else str(source)
    return {**cell, "source": "\n".join(line for line in source.split("\n") if len(line) <= MAX_LINE_CHARS)}


def check(values: dict, declarations: list) -> None:
    """A 400 naming the first parameter in `values` that `declarations` does not declare,
    or whose value does not fit its declared type."""
    by_name = {entry["name"]: entry for entry in declarations}
    for name, value in values.items():
        entry = by_name.get(name)
        if entry is None:
            raise errors.InvalidInput(f"Unknown parameter {name!r}: the notebook's parameters cell does not declare it")
        if value is None and entry["default"] == "None":
            continue
        if not fits(value, entry["type"]):
            raise errors.InvalidInput(f"Parameter {name!r} must be of type {entry['type']}, not {_json_type(value)}")


def fits(value, type_name: str) -> bool:
    """Whether a JSON `value` fits the declared `type_name` (see the module's rules)."""
    type_name = type_name.strip().strip("\"'")
    if type_name == UNKNOWN or len(type_name) > MAX_TYPE_CHARS:
        return True
    try:
        annotation = ast.parse(type_name, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return True  # not a type we can read: unknown
    return _fits(value, annotation)


def _fits(value, node) -> bool:
    if isinstance(node, ast.Name):
        return _fits_name(value, node.id, [])
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
        arguments = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        return _fits_name(value, node.value.id, arguments)
    if isinstance(node, ast.Constant) and node.value is None:  # None inside Optional[...] or Union[...]
        return value is None
    return True  # any other form (a dotted name, a string, an expression): unknown


def _fits_name(value, name: str, arguments: list) -> bool:
    if name in _SCALARS:
        return _SCALARS[name](value)
    if name == "Optional":
        return value is None or all(_fits(value, argument) for argument in arguments)
    if name == "Union":
        return any(_fits(value, argument) for argument in arguments)
    if name in _ARRAYS:
        if not isinstance(value, list):
            return False
        if name in ("tuple", "Tuple") and len(arguments) > 1 and not _is_ellipsis(arguments[-1]):
            return len(value) == len(arguments) and all(map(_fits, value, arguments))
        return not arguments or all(_fits(element, arguments[0]) for element in value)
    if name in _OBJECTS:
        if not isinstance(value, dict):
            return False
        if len(arguments) != 2:
            return True
        return all(_fits(key, arguments[0]) and _fits(item, arguments[1]) for key, item in value.items())
    return True  # Any, object, a class of the notebook's own: unknown, any value


def _is_ellipsis(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is Ellipsis


def _json_type(value) -> str:
    """The JSON type of `value`, in words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "an integer" if isinstance(value, int) else "a number with a fraction"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def cacheable(declarations: list):
    """`declarations` as JSON to keep on the notebook's item, or None when too large to."""
    text = json.dumps(declarations)
    return text if len(text.encode("utf-8")) <= MAX_CACHED_BYTES else None
