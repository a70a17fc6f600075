"""The tables layer's retries: a chunk whose condition fails is read again and written
as it now is, and gives up with Conflict when it keeps failing."""

import pytest

from chalicelib.storage import tables as metadata
from tests.helpers import seed_notebooks

OWNER = "admin"


@pytest.fixture
def tables(stack):
    return stack.notebooks._table, stack.runs._table


def test_mark_deleting_a_stale_read_counts_a_notebook_off_once(stack, tables):
    notebooks, _ = tables
    stale = list(notebooks.get_many(OWNER, seed_notebooks(stack.settings, OWNER, 3)).values())
    notebooks.mark_deleting(OWNER, stale[:1])  # another Delete flags the first meanwhile
    flagged = notebooks.mark_deleting(OWNER, stale)
    assert sorted(item["notebook_id"] for item in flagged) == sorted(item["notebook_id"] for item in stale)
    assert notebooks.counts(OWNER)["notebooks"] == 0


def test_mark_deleting_gives_up_with_conflict_after_every_attempt(stack, tables, monkeypatch):
    notebooks, _ = tables
    items = list(notebooks.get_many(OWNER, seed_notebooks(stack.settings, OWNER, 2)).values())
    attempts = []
    monkeypatch.setattr(notebooks, "transact", lambda *args: attempts.append(args) or ["ConditionalCheckFailed"])
    with pytest.raises(metadata.Conflict):
        notebooks.mark_deleting(OWNER, items)
    assert len(attempts) == metadata._CONFLICT_ATTEMPTS
    assert notebooks.counts(OWNER)["notebooks"] == 2


def _new_runs(stack, tables, count):
    notebooks, runs = tables
    notebook_id = seed_notebooks(stack.settings, OWNER, 1)[0]
    records = [
        {
            "run_id": f"run-{index}",
            "notebook_id": notebook_id,
            "owner": OWNER,
            "status": "queued",
            "created_at": 1_700_000_000_000 + index,
        }
        for index in range(count)
    ]
    for record in records:  # one per transaction: `create` takes distinct notebooks
        assert runs.create(OWNER, [record]) is None
    return notebook_id, notebooks.all_run_pointers(OWNER, notebook_id)


def test_run_delete_reads_a_run_ended_meanwhile_again(stack, tables, monkeypatch):
    notebooks, runs = tables
    notebook_id, pointers = _new_runs(stack, tables, 2)
    real_transact, ended = notebooks.transact, []

    def ended_first(owner, actions, tally=None):
        if not ended and "Delete" in actions[0]:  # between delete's read and its write
            ended.append(runs.end(runs.get("run-0"), {"status": "succeeded"}))
        return real_transact(owner, actions, tally)

    monkeypatch.setattr(notebooks, "transact", ended_first)
    runs.delete(OWNER, pointers, notebook_id)
    assert ended == [True]
    assert runs.get_many(["run-0", "run-1"]) == {}
    assert notebooks.all_run_pointers(OWNER, notebook_id) == []
    assert notebooks.counts(OWNER)["runs_active"] == 0  # the ended run counted off once, by its end
    assert notebooks.get(OWNER, notebook_id)["runs_kept"] == 0


def test_run_delete_gives_up_with_conflict_after_every_attempt(stack, tables, monkeypatch):
    notebooks, runs = tables
    notebook_id, pointers = _new_runs(stack, tables, 1)
    attempts = []
    monkeypatch.setattr(notebooks, "transact", lambda *args: attempts.append(args) or ["ConditionalCheckFailed"])
    with pytest.raises(metadata.Conflict):
        runs.delete(OWNER, pointers, notebook_id)
    assert len(attempts) == metadata._CONFLICT_ATTEMPTS
    assert runs.get("run-0")["status"] == "queued"


def test_set_schedules_gives_up_with_conflict_after_every_attempt(stack, tables, monkeypatch):
    notebooks, _ = tables
    items = list(notebooks.get_many(OWNER, seed_notebooks(stack.settings, OWNER, 2)).values())
    schedule = {"until_ms": 1_800_000_000_000, "expression": "rate(1 hour)"}
    attempts, committed = [], []
    refused = ["ConditionalCheckFailed", "None", "None"]  # a notebook's condition, not the quota
    monkeypatch.setattr(notebooks, "transact", lambda *args: attempts.append(args) or refused)
    with pytest.raises(metadata.Conflict):
        notebooks.set_schedules(OWNER, [(item, schedule, {}) for item in items], committed=committed)
    assert len(attempts) == metadata._CONFLICT_ATTEMPTS and committed == []


def test_delete_many_deletes_ended_runs_side_by_side_and_the_rest_with_their_counts(stack, tables, monkeypatch):
    """110 runs: ended ones go in transactions of 49 on several threads with no counter;
    active ones, one with no record, and one deleted between the read and the write go
    through `delete`, which counts the active ones off."""
    notebooks, runs = tables
    _, pointers = _new_runs(stack, tables, 110)
    for index in range(101):
        assert runs.end(runs.get(f"run-{index}"), {"status": "succeeded"})
    runs._table.delete_item(Key={"run_id": "run-100"})  # a pointer whose record is gone
    assert notebooks.counts(OWNER)["runs_active"] == 9
    real_transact, transactions, raced = notebooks.transact, [], []

    def recorded(owner, actions, tally=None):
        if not raced:  # the first ended chunk: one of its runs is deleted after the read
            raced.append(actions[0]["Delete"]["Key"]["run_id"])
            runs._table.delete_item(Key={"run_id": raced[0]})
        transactions.append((len(actions), tally))
        return real_transact(owner, actions, tally)

    monkeypatch.setattr(notebooks, "transact", recorded)
    real_read, reads = runs.get_many, []
    monkeypatch.setattr(runs, "get_many", lambda run_ids: reads.append(list(run_ids)) or real_read(reads[-1]))
    runs.delete_many(OWNER, pointers, workers=4)
    # 110 runs read 100 per call; then only the raced chunk read again, not the 10 others.
    assert sorted(len(read) for read in reads) == sorted([100, 10] + [len(reads[-1])]) and len(reads[-1]) in (2, 49)
    assert runs.get_many(pointer["run_id"] for pointer in pointers) == {}
    assert notebooks.all_run_pointers(OWNER, pointers[0]["notebook_id"]) == []
    assert notebooks.counts(OWNER)["runs_active"] == 0
    # Ended runs: 100 in chunks of 49, 49, 2 without a counter, side by side; the chunk
    # that raced failed and went to `delete` with the other 10, which counted 9 off.
    assert sorted(count for count, tally in transactions if tally is None) == [4, 98, 98]
    assert sum(-tally.runs_active for _, tally in transactions if tally is not None) == 9


def test_schedules_with_large_parameters_are_written_within_a_transactions_4_mb(stack, tables, monkeypatch):
    """DynamoDB refuses a transaction of more than 4 MB of items: schedules carrying 60 KB
    of parameters each go fewer to a transaction, all of them written."""
    notebooks, _ = tables
    items = list(notebooks.get_many(OWNER, seed_notebooks(stack.settings, OWNER, 120)).values())
    schedule = {"until_ms": 4_102_444_800_000, "expression": "cron(0 6 * * ? *)", "parameters": "x" * 60_000}
    sizes, transact = [], notebooks.transact
    monkeypatch.setattr(
        notebooks,
        "transact",
        lambda owner, actions, tally=None: sizes.append(len(repr(actions))) or transact(owner, actions, tally),
    )
    notebooks.set_schedules(OWNER, [(item, schedule, {"updated_by": OWNER}) for item in items])
    assert len(sizes) > 1 and max(sizes) < 4 * 1024 * 1024 - 16 * 1024 * metadata.TRANSACTION_ACTIONS, sizes
    stored = notebooks.get_many(OWNER, [item["notebook_id"] for item in items])
    assert all(item["schedule"]["parameters"] == schedule["parameters"] for item in stored.values())
    sizes.clear()
    small = {**schedule, "parameters": "{}"}
    notebooks.set_schedules(OWNER, [(item, small, {"updated_by": OWNER}) for item in stored.values()])
    assert len(sizes) == 2  # 98 and 22: as many a transaction as its actions allow
