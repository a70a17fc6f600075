"""The documentation says what the code does: docs/configuration.md against `Settings`
and the local stack's own variables."""

import dataclasses
import os
import re

import pytest

from chalicelib.common.config import Settings
from tests import config_doc

ROOT = config_doc.ROOT
DOCUMENTED = config_doc.settings_rows()


def test_every_variable_settings_reads_is_documented():
    missing = config_doc.variables_read() - set(DOCUMENTED)
    assert not missing, f"add a row to docs/configuration.md's Settings table for {sorted(missing)}"


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_each_documented_variable_changes_a_setting(name):
    assert config_doc.probe(name) is not None, f"{name} is documented, but Settings.from_env does not read it"


def _default_matches(cell: str, value) -> bool:
    """Whether the table's default cell states `value` (see docs/configuration.md)."""
    if cell == "(unset)":
        return value in (None, (), "")
    if cell == "(cores)":
        return value == (os.cpu_count() or 1)
    literal = re.fullmatch(r"`([^`]*)`", cell)
    assert literal, f"a default is `value`, (unset) or (cores), not {cell!r}"
    text = literal.group(1)
    if isinstance(value, bool):
        return text in ("true", "false") and (text == "true") == value
    if isinstance(value, (int, float)):
        return float(text.replace(",", "")) == value
    if isinstance(value, tuple):
        return tuple(item.strip() for item in text.split(",")) == value
    return text == value


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_each_documented_default_is_the_settings_default(name):
    field = config_doc.probe(name)[0]
    value = getattr(config_doc.unset(), field)
    assert _default_matches(DOCUMENTED[name], value), f"{name}: documented {DOCUMENTED[name]}, Settings has {value!r}"


def test_the_default_check_catches_a_wrong_default():
    assert _default_matches("`840`", 840.0)
    assert not _default_matches("`841`", 840.0)
    assert not _default_matches("`true`", False)
    assert not _default_matches("(unset)", "runner")
    assert _default_matches("`a, b`", ("a", "b"))


# Variables devstack/ reads that a user does not set: Chalice's reloader marks its worker
# (CHALICE_WORKER); the stack gives its processes the key and addresses (AWS_*) and the
# API its supervisor's pid (NOTEBOOKS_STACK_PID).
_STACK_INTERNAL = re.compile(r"AWS_.*|CHALICE_WORKER|NOTEBOOKS_STACK_PID")


def test_the_local_stack_table_lists_what_devstack_reads():
    read = set()
    folder = os.path.join(ROOT, "devstack")
    for name in os.listdir(folder):
        if name.endswith(".py"):
            with open(os.path.join(folder, name)) as source:
                read |= set(re.findall(r"os\.environ(?:\.get\(|\[)\s*\"([A-Z0-9_]+)\"", source.read()))
    read = {name for name in read if not _STACK_INTERNAL.fullmatch(name)}
    documented = {config_doc.variable(row[0]) for row in config_doc.table("Local stack")}
    assert read == documented


def test_settings_from_env_is_what_the_table_checks():
    # The probes reach every field: a field no documented variable changes is a setting
    # that cannot be configured (or a variable missing from the table).
    fields = {config_doc.probe(name)[0] for name in DOCUMENTED}
    assert fields == {field.name for field in dataclasses.fields(Settings)}
