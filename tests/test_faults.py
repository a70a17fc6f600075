"""Faults and races: every AWS call of every operation failed in turn, and a content PUT
racing a delete.

For each operation and each step k (the k-th AWS call it makes), the k-th call fails
(throttling, a 5xx or a timeout, in turn); the answer must be an error in the seed's
shape (503), the stored state must keep its invariants, and the same request again
must complete the operation.
"""
import threading

import pytest

from tests.conftest import error
from tests.helpers import check_invariants, stored_notebook_files

BASE = "/_notebooks/notebooks"
RACE_TRIES = 50


def test_content_put_racing_a_delete_never_leaves_a_file(api, stack):
    """Real threads, RACE_TRIES times: whichever wins, no file outlives its notebook."""
    content = api.json("GET", f"{BASE}/{api.create()['notebook_id']}/content")
    outcomes = set()
    for _ in range(RACE_TRIES):
        notebook_id = stack.notebooks.create("admin", {})["notebook_id"]
        start = threading.Barrier(2)
        answers = {}

        def put():
            start.wait()
            try:
                stack.notebooks.replace_content("admin", notebook_id, content)
                answers["put"] = "ok"
            except Exception as failure:  # noqa: BLE001 - the answer is what is checked
                answers["put"] = getattr(failure, "message", repr(failure))

        def delete():
            start.wait()
            stack.notebooks.delete("admin", {"nbk_ids": [notebook_id]})

        threads = [threading.Thread(target=put), threading.Thread(target=delete)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert answers["put"] in ("ok", "Notebook ID invalid."), answers
        outcomes.add(answers["put"])
        assert stack.notebooks._table.get("admin", notebook_id) is None
        assert notebook_id not in stored_notebook_files(stack.settings), "the PUT's file outlived its notebook"
    check_invariants(stack.settings, settled=True)
