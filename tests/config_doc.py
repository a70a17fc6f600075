"""docs/configuration.md's tables, read as data, and how each documented variable maps
onto `Settings`: what the documentation tests and the dev-loop tests check."""

import dataclasses
import os
import re

from chalicelib.common.config import Settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGURATION = os.path.join(ROOT, "docs", "configuration.md")
# Values tried, in order, until one changes a setting: a number parses as an int, a
# float or a string (two numbers, in case a default is one of them); the words reach the
# booleans whichever way their default lies. A new kind of setting that none of these
# changes (say, one of a few names) adds a value it accepts here.
PROBES = ("7", "8", "false", "true")


def table(heading: str, path: str = CONFIGURATION) -> list:
    """The rows of the first table after `## heading`, as lists of cells (header and
    separator left out)."""
    with open(path) as page:
        text = page.read()
    section = text.split(f"\n## {heading}\n", 1)[1]
    rows = []
    for line in section.split("\n"):
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows:
            break
    return rows[2:]


def variable(cell: str) -> str:
    """The variable a table's first cell names (`` `NAME` ``)."""
    found = re.fullmatch(r"`([A-Z0-9_]+)`", cell)
    assert found, f"a variable cell is one `NAME`, not {cell!r}"
    return found.group(1)


def settings_rows() -> dict:
    """{variable: default cell} of the Settings table."""
    return {variable(row[0]): row[1] for row in table("Settings")}


def unset() -> Settings:
    """The settings when no variable is set."""
    return Settings.from_env({})


def probe(name: str):
    """(field, value given, value read) for the one setting `name` changes, or None if
    no probe value changes any."""
    base = unset()
    for value in PROBES:
        try:
            read = Settings.from_env({name: value})
        except ValueError:
            continue  # not a value of this setting's kind
        changed = [f.name for f in dataclasses.fields(Settings) if getattr(read, f.name) != getattr(base, f.name)]
        if changed:
            assert len(changed) == 1, f"{name}={value} changes {changed}"
            return changed[0], value, getattr(read, changed[0])
    return None


class Recording(dict):
    """An empty environment that notes every variable looked up in it."""

    def __init__(self):
        super().__init__()
        self.read = set()

    def get(self, name, default=None):
        self.read.add(name)
        return default

    def __getitem__(self, name):
        self.read.add(name)
        raise KeyError(name)

    def __contains__(self, name):
        self.read.add(name)
        return False


def variables_read() -> set:
    """Every variable `Settings.from_env` reads."""
    env = Recording()
    Settings.from_env(env)
    return env.read
