"""store/statements.py: every statement the ops modules name, compiled for both databases."""

from __future__ import annotations

import inspect
import re

import pytest

from compound.store import ops, ops_calls, ops_reads, ops_tools, statements


def named_in_ops() -> set[str]:
    source = "".join(inspect.getsource(m) for m in (ops, ops_calls, ops_reads, ops_tools))
    return set(re.findall(r'"(?:one|all|many|exec)", "([A-Z_]+)"', source))


@pytest.mark.parametrize("flavor", [statements.SQLITE, statements.POSTGRES], ids=lambda f: f.name)
def test_every_statement_ops_names_is_compiled_with_only_its_parameters(flavor: statements.Flavor) -> None:
    sql = statements.compiled(flavor)
    assert named_in_ops() <= set(sql)
    style = r":(\w+)" if flavor is statements.SQLITE else r"%\((\w+)\)s"
    # a parameter the statement would carry itself (an anonymous constant) would be
    # missing from what ops.py passes
    for name, text in sql.items():
        assert all(not re.fullmatch(r"\w+_\d+", p) for p in re.findall(style, text)), name


@pytest.mark.parametrize(("flavor", "allowed"), [
    (statements.SQLITE, "instr(',' || :from || ',', ',' || task.status || ',') > 0"),
    (statements.POSTGRES, "task.status = ANY (string_to_array(%(from)s, ','))"),
])
def test_a_status_write_applies_only_from_the_statuses_it_is_given(flavor: statements.Flavor, allowed: str) -> None:
    assert allowed in statements.compiled(flavor)["SET_STATUS_IF"]


def test_a_row_lock_is_postgres_only() -> None:
    assert statements.compiled(statements.POSTGRES)["LOCK_TASK"].endswith("FOR UPDATE")
    assert "FOR UPDATE" not in statements.compiled(statements.SQLITE)["LOCK_TASK"]


ROWS = [  # subtask rows as SUB_COLS reads them: every field the event shows, set and unset
    (3, "look up", 1, 2, '["m"]', "[0]", "running", "claude-x", None, None, 1, 0.00123456, 10, 20, "llm", "[]",
     None, None, None, "[]", None, 0, None),
    (0, "write", 2, None, "[]", "[]", "completed", None, "the answer", "was slow", 0, 0.0, 0, 0, "tool", "[]",
     "demo.lookup", '{"topic":"x"}', "the turn limit", None, "t_1", 1, "completed"),
]


@pytest.mark.parametrize("row", ROWS)
def test_a_transition_event_read_straight_from_its_row_is_the_subtask_event(row: tuple[object, ...]) -> None:
    from compound.store.sqlite import D
    assert ops.row_event(row) == ops.sub_event(ops.sub_state(D, row))


def test_sqlite_json_reads_give_fresh_values() -> None:
    from compound.store.sqlite import D
    a, b = D.loads("[]"), D.loads("[]")
    a.append(1)
    assert b == [] and D.loads("{}") == {} and D.loads("null") is None and D.loads('{"k":[1]}') == {"k": [1]}
    assert D.loads(b'[2]') == [2] and D.loads(None) is None
