"""The dataset readers on small hand-made files in each benchmark's format, the own
dataset's shape, and clear errors for files that are not what they claim."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from compound.core.errors import UserInputError
from compound.evals.datasets import load, parse_worfbench_answer
from compound.evals.graph import Graph

FIX = Path(__file__).parent / "fixtures" / "evals"
ROOT = Path(__file__).parent.parent


def test_worfbench_reader() -> None:
    items = load(FIX / "worfbench_graph_eval.json", "worfbench")
    assert [i.id for i in items] == ["wikihow_1", "toolbench_7"]
    assert items[0].request.startswith("Task: How to Clean a Jade Roller")
    assert items[0].gold == Graph(["Rub the jade piece with a dry cloth.", "Place the roller on a soft towel to dry."],
                                  [(0, 1)])
    assert items[1].gold is not None and items[1].gold.edges == [(0, 2), (1, 2)]
    assert items[1].shape == "toolbench"


@pytest.mark.parametrize(("text", "nodes", "edges"), [
    ("Node:\n1: a\n2: b\nEdge: (START,1) (1,2) (2,END)", ["a", "b"], [(0, 1)]),
    ("Node:\n1. a\n2. b\n3. c\nEdges:\n(START,1)\n(START,2)\n(1,3)\n(2,3)\n(3,END)", ["a", "b", "c"], [(0, 2), (1, 2)]),
    ("Node:\n1: Open Microsoft Edge\nEdge: (START,1) (1,END)", ["Open Microsoft Edge"], []),
    ("Node:\n1: a\nEdge: (1,1) (1,9) (START,END)", ["a"], []),  # self and dangling edges dropped
    ("no plan here", [], []),
])
def test_worfbench_answer_table(text: str, nodes: list[str], edges: list[tuple[int, int]]) -> None:
    assert parse_worfbench_answer(text) == Graph(nodes, edges)


def test_teval_reader() -> None:
    items = load(FIX / "teval_plan.json", "teval")
    assert [i.id for i in items] == ["12", "13"]
    assert items[0].request == "Find the films now playing and then show the details of the first one."
    assert items[0].gold == Graph(["FilmDouban.now_playing_out_filter Beijing",
                                   "FilmDouban.fetch_film_details <first film>", "FinishAction"], [(0, 1), (1, 2)])
    assert items[1].gold is not None and items[1].gold.edges == [(0, 2), (1, 2)]  # ground_truth given as JSON text


def test_taskbench_reader() -> None:
    items = load(FIX / "taskbench_data.json", "taskbench")
    assert [i.id for i in items] == ["10017", "10018"]
    assert items[0].gold == Graph(["Image-to-Text example.jpg", "Text-to-Speech <node-0>"], [(0, 1)])
    assert items[1].gold == Graph(["Translation hello fr"], [])
    assert items[0].shape == "chain"


def test_the_own_dataset() -> None:
    items = load(ROOT / "evals" / "datasets" / "own.jsonl", "own")
    assert len(items) >= 60
    assert len({i.id for i in items}) == len(items)
    shapes = Counter(i.shape for i in items)
    assert set(shapes) == {"single", "chain", "parallel", "fan-in", "fan-out-join", "long", "ambiguous",
                           "non-english", "injection"}
    assert min(shapes.values()) >= 6
    for item in items:
        assert item.expect is not None
        lo, hi = item.expect.subtasks
        assert 1 <= lo <= hi <= 20 and item.expect.min_width <= hi, item.id
    assert sum(bool(i.expect and i.expect.orderings) for i in items) >= 25
    assert sum(bool(i.expect and i.expect.tiers) for i in items) >= 5
    # the first nine are one of each shape, so a --limit 9 slice covers them all
    assert len({i.shape for i in items[:9]}) == 9
    # the packaged copy is the same file
    from importlib.resources import files

    packaged = Path(str(files("compound.evals") / "datasets" / "own.jsonl"))
    assert packaged.read_bytes() == (ROOT / "evals" / "datasets" / "own.jsonl").read_bytes()


@pytest.mark.parametrize(("content", "fmt", "message"), [
    ("{not json", "worfbench", "neither JSON nor JSON lines"),
    ("[]", "worfbench", "has no items"),
    (json.dumps([{"conversations": "x"}]), "worfbench", "not in the worfbench format"),
    (json.dumps({"a": {"origin_prompt": []}}), "teval", "not in the teval format"),
    (json.dumps({"id": 1}), "taskbench", "not in the taskbench format"),
    (json.dumps({"id": 1}), "own", "not in the own format"),
    ("[]", "xml", "unknown format 'xml'"),
])
def test_bad_files_are_named(tmp_path: Path, content: str, fmt: str, message: str) -> None:
    path = tmp_path / "d.json"
    path.write_text(content)
    with pytest.raises(UserInputError, match=message):
        load(path, fmt)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="cannot read the dataset"):
        load(tmp_path / "nope.json", "own")
