"""store/statements.py: every statement ops.py names, compiled for both databases."""

from __future__ import annotations

import inspect
import re

import pytest

from compound.store import ops, statements


def named_in_ops() -> set[str]:
    return set(re.findall(r'"(?:one|all|many|exec)", "([A-Z_]+)"', inspect.getsource(ops)))


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
