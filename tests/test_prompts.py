"""The prompt templates' filler: the same text as string.Template's safe_substitute."""

from __future__ import annotations

import re
from string import Template

from hypothesis import given
from hypothesis import strategies as st

from compound.prompts import NAMES, Filler, _source

_NAMES = st.sampled_from(["a", "b", "request", "x_1", "_y"])
_BITS = st.one_of(
    st.text(alphabet="ab {}$_1\n<>é", max_size=6),
    _NAMES.map(lambda n: f"${n}"), _NAMES.map(lambda n: f"${{{n}}}"),
    st.sampled_from(["$$", "$", "${", "${a", "$1", "$ ", "$$a", "${}"]),
)


@given(st.lists(_BITS, max_size=12).map("".join),
       st.dictionaries(_NAMES, st.text(alphabet="ab$ {}\\\\", max_size=5), max_size=4))
def test_the_filler_fills_as_safe_substitute_does(text: str, values: dict[str, str]) -> None:
    assert Filler(text).fill(values) == Template(text).safe_substitute(values)


def test_every_prompt_fills_as_safe_substitute_does() -> None:
    values = {"request": "$request and ${context} <b>", "context": "", "max_subtasks": "7", "subtask": "$$"}
    for name in NAMES:
        for part in re.split(r"^---[a-z ]+---$", _source(name).decode("utf-8"), flags=re.M):
            assert Filler(part).fill(values) == Template(part).safe_substitute(values)
