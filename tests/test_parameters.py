"""Typed parameters: the parameters endpoint, and Run refusing unknown or ill-typed values."""

import boto3
import pytest

from chalicelib.notebooks.parameters import MAX_LINE_CHARS, fits
from tests.conftest import error
from tests.helpers import AwsCalls, stored_state
from tests.test_runs import BASE, RUNS, notebook_of, run_all, stream_text

pytest_plugins = ["tests.test_runs"]  # its fixtures: dispatched, executor


CELL = "\n".join(
    [
        "from typing import Dict, List, Optional",
        "count: int = 2  # how many",
        "ratio: float = 0.5",
        "label: str = 'a'",
        "flag: bool = False",
        "ids: List[int] = [1]",
        "options: Dict[str, float] = {}",
        "limit: Optional[int] = None",
        "anything = 'untyped'",
        "start: int = None",
    ]
)


def typed_notebook(*sources):
    return notebook_of(
        *(sources or ("print(count, ratio, label, flag, ids, options, limit, anything)",)), parameters_cell=CELL
    )


def run(api, ids, parameters, **kwargs):
    return api.call("POST", BASE + "/_run", {"nbkIds": ids, "module": "m", "parameters": parameters}, **kwargs)


def test_the_parameters_endpoint_lists_the_cell_as_papermill_reads_it(api):
    notebook_id = api.create(content=typed_notebook())["notebook_id"]
    declared = api.json("GET", f"{BASE}/{notebook_id}/parameters")["parameters"]
    assert declared[0] == {"name": "count", "type": "int", "default": "2", "help": "how many"}
    assert [(p["name"], p["type"], p["default"]) for p in declared[1:]] == [
        ("ratio", "float", "0.5"),
        ("label", "str", "'a'"),
        ("flag", "bool", "False"),
        ("ids", "List[int]", "[1]"),
        ("options", "Dict[str, float]", "{}"),
        ("limit", "Optional[int]", "None"),
        ("anything", "None", "'untyped'"),
        ("start", "int", "None"),
    ]
    plain = api.create(content=notebook_of("x = 1"))["notebook_id"]
    assert api.json("GET", f"{BASE}/{plain}/parameters") == {"parameters": []}
    unreadable = notebook_of(parameters_cell="u: int | None = 1\nv: int = 2")
    notebook_id = api.create(content=unreadable)["notebook_id"]
    assert [p["name"] for p in api.json("GET", f"{BASE}/{notebook_id}/parameters")["parameters"]] == ["v"]
    unreadable.metadata.kernelspec = {"name": "python3", "display_name": "no language named"}
    notebook_id = api.create(content=unreadable)["notebook_id"]
    assert [p["name"] for p in api.json("GET", f"{BASE}/{notebook_id}/parameters")["parameters"]] == ["v"]
    unreadable.metadata.kernelspec = {"name": "cobol", "display_name": "COBOL", "language": "cobol"}
    notebook_id = api.create(content=unreadable)["notebook_id"]
    assert api.json("GET", f"{BASE}/{notebook_id}/parameters") == {"parameters": []}


def test_hostile_parameters_cells_are_read_at_bounded_cost_and_never_fail_the_request(api):
    """A line over MAX_LINE_CHARS is not read (papermill's reader is quadratic in it), a
    type too long or too deep to parse is unknown, and a language that is not a name is
    read as Python."""
    long_line = "long = '" + "x" * MAX_LINE_CHARS + "'"
    deep_type = "deep = 1  # type: " + "List[" * 150 + "int" + "]" * 150
    notebook = notebook_of(parameters_cell="\n".join(["short: int = 1", long_line, deep_type]))
    notebook.metadata.kernelspec = {"name": "python3", "display_name": "P", "language": ["python"]}
    notebook_id = api.create(content=notebook)["notebook_id"]
    declared = api.json("GET", f"{BASE}/{notebook_id}/parameters")["parameters"]
    assert [p["name"] for p in declared] == ["short", "deep"]
    assert run(api, [notebook_id], {"deep": "any value"}).status_code == 200
    assert error(run(api, [notebook_id], {"long": "x"}))[0] == 400
    for type_name in ("x." * 20000 + "x", "-" * 100000 + "1", "(" * 5000):
        assert fits(1, type_name)


def test_the_parameters_endpoint_answers_only_the_owner(api):
    notebook_id = api.create(content=typed_notebook())["notebook_id"]
    for user, path in [("bob", notebook_id), ("admin", "00000000-0000-4000-8000-000000000000"), ("admin", "junk")]:
        assert error(api.call("GET", f"{BASE}/{path}/parameters", user=user)) == (400, "Notebook ID invalid.")


def test_the_parameters_follow_the_content(api):
    notebook_id = api.create(content=typed_notebook())["notebook_id"]
    api.json("PUT", f"{BASE}/{notebook_id}/content", notebook_of("print(z)", parameters_cell="z: str = 'q'"))
    assert api.json("GET", f"{BASE}/{notebook_id}/parameters")["parameters"] == [
        {"name": "z", "type": "str", "default": "'q'", "help": ""}
    ]
    assert error(run(api, [notebook_id], {"count": 1}))[0] == 400


@pytest.mark.parametrize(
    "parameters, named",
    [
        ({"nope": 1}, "nope"),
        ({"count": 1.5}, "count"),
        ({"count": True}, "count"),
        ({"count": "2"}, "count"),
        ({"ratio": "0.5"}, "ratio"),
        ({"ratio": False}, "ratio"),
        ({"label": 3}, "label"),
        ({"flag": 1}, "flag"),
        ({"ids": [1, "2"]}, "ids"),
        ({"ids": {"a": 1}}, "ids"),
        ({"options": {"a": "b"}}, "options"),
        ({"options": [1]}, "options"),
        ({"limit": 1.5}, "limit"),
        ({"count": None}, "count"),
        ({"count": 3, "label": None}, "label"),
    ],
)
def test_unknown_or_ill_typed_parameters_are_a_400_naming_them_and_nothing_runs(
    api, stack, dispatched, parameters, named
):
    good = api.create(content=typed_notebook())["notebook_id"]
    also = api.create(content=typed_notebook())["notebook_id"]
    before = stored_state(stack.settings)
    status, message = error(run(api, [good, also], parameters))
    assert status == 400 and repr(named) in message
    assert stored_state(stack.settings) == before and dispatched.events == []


def test_one_notebook_refusing_refuses_the_whole_run(api, stack, dispatched):
    typed = api.create(content=typed_notebook())["notebook_id"]
    other = api.create(content=notebook_of("print(count)", parameters_cell="count: str = 'x'"))["notebook_id"]
    before = stored_state(stack.settings)
    status, message = error(run(api, [typed, other], {"count": 3}))
    assert status == 400 and "'count'" in message and "str" in message
    assert stored_state(stack.settings) == before and dispatched.events == []
    plain = api.create(content=notebook_of("print(1)"))["notebook_id"]
    assert "'count'" in error(run(api, [typed, plain], {"count": 3}))[1]  # no parameters cell: declares none


@pytest.mark.parametrize("language_named", [True, False])
def test_fitting_parameters_run_with_their_values(api, dispatched, executor, language_named):
    notebook = typed_notebook()
    if not language_named:  # a Python notebook whose kernel spec does not say so
        notebook.metadata.kernelspec = {"name": "python3", "display_name": "Python"}
    notebook_id = api.create(content=notebook)["notebook_id"]
    values = {
        "count": 7,
        "ratio": 2,
        "label": "b",
        "flag": True,
        "ids": [4, 5],
        "options": {"k": 1.5},
        "limit": None,
        "anything": {"any": ["thing"]},
        "start": None,
    }
    [started] = api.json("POST", BASE + "/_run", {"nbkIds": [notebook_id], "module": "m", "parameters": values})["runs"]
    run_all(executor, dispatched)
    assert api.json("GET", f"{RUNS}/{started['run_id']}")["status"] == "succeeded"
    printed = stream_text(api.json("GET", f"{RUNS}/{started['run_id']}/output"))
    assert printed.strip() == "7 2 b True [4, 5] {'k': 1.5} None {'any': ['thing']}"


@pytest.mark.parametrize(
    "value, type_name, expected",
    [
        (1, "int", True),
        (True, "int", False),
        (1, "float", True),
        (1.5, "float", True),
        (True, "float", False),
        ("x", "str", True),
        (None, "str", False),
        (True, "bool", True),
        (0, "bool", False),
        ([1, 2], "list", True),
        ([1, "a"], "List[int]", False),
        ([[1]], "List[List[int]]", True),
        ([1, "a"], "Tuple[int, str]", True),
        ([1], "Tuple[int, str]", False),
        ([1, 2, 3], "Tuple[int, ...]", True),
        ({"a": 1}, "dict", True),
        ({"a": 1}, "Dict[str, int]", True),
        ({"a": 1}, "Dict[int, int]", False),
        (None, "Optional[int]", True),
        ("x", "Optional[int]", False),
        ("x", "Union[int, str]", True),
        ([], "Union[int, str]", False),
        (None, "Union[int, None]", True),
        ({"a": 1}, "None", True),
        ("x", "Any", True),
        ("x", "MyClass", True),
        (3, "'int'", True),
        ("x", "1 +", True),
    ],
)
def test_json_values_against_declared_types(value, type_name, expected):
    assert fits(value, type_name) is expected


def test_a_run_with_parameters_reads_no_file_but_a_notebook_written_before_them(api, stack, dispatched):
    ids = [api.create(content=typed_notebook())["notebook_id"] for _ in range(3)]
    with AwsCalls() as calls:
        api.json("POST", BASE + "/_run", {"nbkIds": ids, "module": "m", "parameters": {"count": 1}})
    assert calls.total("s3") == 0
    # A notebook stored before typed parameters and versions has neither on its item.
    table = boto3.resource("dynamodb", region_name=stack.settings.region).Table(stack.settings.notebooks_table)
    table.update_item(
        Key={"owner": "admin", "sk": "nb#" + ids[0]}, UpdateExpression="REMOVE content_version, declared_parameters"
    )
    assert "'count'" in error(run(api, ids, {"count": "one"}))[1]
    with AwsCalls() as calls:
        runs = api.json("POST", BASE + "/_run", {"nbkIds": ids, "module": "m", "parameters": {"count": 1}})["runs"]
    assert calls.calls[("s3", "GetObject")] == 1
    # the content read to check the parameters is the version the run pins
    assert api.json("GET", f"{RUNS}/{runs[0]['run_id']}")["notebook_version"] is not None


def test_declarations_too_large_to_keep_are_read_from_the_file(api, stack, dispatched, monkeypatch):
    monkeypatch.setattr("chalicelib.notebooks.parameters.MAX_CACHED_BYTES", 10)
    notebook_id = api.create(content=typed_notebook())["notebook_id"]
    api.json("PUT", f"{BASE}/{notebook_id}/content", typed_notebook("print(count)"))
    assert "'count'" in error(run(api, [notebook_id], {"count": "one"}))[1]
    with AwsCalls() as calls:
        api.json("POST", BASE + "/_run", {"nbkIds": [notebook_id], "module": "m", "parameters": {"count": 1}})
    assert calls.calls[("s3", "GetObject")] == 1


def test_a_repeated_run_answers_its_first_runs_whatever_its_parameters(api, stack, dispatched):
    notebook_id = api.create(content=typed_notebook())["notebook_id"]
    headers = {"Idempotency-Key": "typed-1"}
    assert error(run(api, [notebook_id], {"count": "x"}, headers=headers))[0] == 400  # nothing claimed the token
    first = api.json(
        "POST", BASE + "/_run", {"nbkIds": [notebook_id], "module": "m", "parameters": {"count": 3}}, headers=headers
    )
    again = api.json(
        "POST", BASE + "/_run", {"nbkIds": [notebook_id], "module": "m", "parameters": {"count": "x"}}, headers=headers
    )
    assert again == first and api.json("GET", f"{BASE}/{notebook_id}")["no_of_runs"] == 1
    assert api.json("GET", f"{RUNS}/{first['runs'][0]['run_id']}")["parameters"] == {"count": 3}
