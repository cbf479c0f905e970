"""Knowledge multiple choice: both layouts, prompts that fit, fixture models with known scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from klm_task_knowledge import KnowledgeTask, parse

from kennethlm_core.fixtures import ScriptedModel, per_byte

DATA = Path(__file__).resolve().parents[3].parent / "shared/data/eval/knowledge"


@pytest.fixture(scope="module")
def rows():
    return [json.loads(line) for line in (DATA / "citizen-tests.jsonl").open(encoding="utf-8")]


def test_both_layouts_read_the_same():
    ours = {"question": "Hvad er Danmarks hovedstad?", "options": ["Aarhus", "København"]}
    ours["answer_index"] = 1
    euroeval = {
        "text": "Spørgsmål: Hvad er Danmarks hovedstad?\nSvarmuligheder:\na. Aarhus\nb. København",
        "label": "b",
    }
    assert parse(ours) == ("Hvad er Danmarks hovedstad?", ["Aarhus", "København"], 1)
    assert parse(euroeval) == ("Spørgsmål: Hvad er Danmarks hovedstad?", ["Aarhus", "København"], 1)


def test_an_oracle_scores_perfectly(rows, tmp_path):
    right = {}
    for r in rows:
        right.setdefault(r["question"], set()).add(r["options"][r["answer_index"]])
    clear = [r for r in rows if len(right[r["question"]]) == 1]  # one asked twice, two answers
    (tmp_path / "k.jsonl").write_text("\n".join(json.dumps(r) for r in clear))

    def judge(context, option):
        question = context[len("Spørgsmål: ") : -len("\nSvar:")]
        return 0.0 if option.strip() in right.get(question, ()) else -20.0

    lm = ScriptedModel(judge, block_size=100_000)
    res = KnowledgeTask().evaluate(lm, data=str(tmp_path / "k.jsonl"))
    assert res.n == len(clear) > 200
    for name in ("accuracy", "accuracy_norm", "accuracy_pmi", "mcc", "mcc_norm"):
        assert res.metrics[name].value == pytest.approx(1.0), name
    assert 0.3 < res.metrics["accuracy"].chance < 0.4


@pytest.mark.parametrize("judge", [lambda c, x: 0.0, per_byte], ids=["indifferent", "uniform"])
def test_a_model_without_preferences_scores_chance(judge):
    lm = ScriptedModel(judge, block_size=64)
    res = KnowledgeTask().evaluate(lm, data=str(DATA / "citizen-tests.jsonl"), limit=100)
    for name in ("accuracy_norm", "accuracy_pmi"):
        assert res.metrics[name].value == pytest.approx(res.metrics[name].chance), name
    assert res.metrics["mcc_norm"].value == 0.0
    if judge is not per_byte:  # per byte uniform prefers short options in total
        assert res.metrics["accuracy"].value == pytest.approx(res.metrics["accuracy"].chance)
    asked = [(c, x) for c, x in lm.seen if lm.n_tokens(x) <= 32]
    assert all(lm.n_tokens(c + x) <= 63 for c, x in asked)  # prompts fit with their options
    assert all(c.endswith("\nSvar:") for c, _ in lm.seen)
