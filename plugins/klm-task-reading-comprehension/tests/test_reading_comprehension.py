"""Reading comprehension: prompts that fit, SQuAD-style scoring, known fixture answers."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from klm_task_reading_comprehension import (
    ReadingComprehensionTask,
    exact,
    f1,
    fit_example,
    spans,
)

from kennethlm_core.fixtures import ScriptedModel, per_byte

DATA = Path(__file__).resolve().parents[3].parent / "shared/data/eval/qa"
CONTEXT = (
    "Byen fik sin første jernbane i 1875. Stationen blev tegnet af en lokal arkitekt, "
    "og den blev revet ned i 1972, da en ny og større station stod færdig ved havnen."
)


@pytest.fixture(scope="module")
def rows():
    return [json.loads(line) for line in (DATA / "xquad-da.jsonl").open(encoding="utf-8")]


def test_squad_style_scores():
    assert exact("Den røde bil.", "rød bil") == 0.0 and exact("den røde bil!", "Røde  bil") == 1.0
    assert f1("i 1875", "1875") == pytest.approx(2 / 3)
    assert f1("", "1875") == 0.0 and f1("nej", "1875") == 0.0
    assert spans("Han kom, og så gik han.", 2)[:3] == ["Han kom", "kom, og", "og så"]


WAYS = [
    (1000, "1972", "open book"),
    (110, "1972", "window"),
    (64, "1972", "window"),  # and the question cut to "ned?": the window is four answers
    (64, "en ny og større station", "closed book"),
]


@pytest.mark.parametrize("block_size, gold, way", WAYS)
def test_prompts_fit_the_context(block_size, gold, way):
    lm = ScriptedModel(block_size=block_size)
    question = "Hvornår blev den første station revet ned?"
    g = lm.n_tokens(" " + gold)
    room = block_size - 1 - min(2 * g, max(g, (block_size - 1) // 2))
    prompt, source, got = fit_example(
        lm, CONTEXT, question, gold, CONTEXT.index(gold), room, random.Random(0)
    )
    assert got == way and lm.n_tokens(prompt) <= room
    assert prompt.endswith(" ned?\nSvar:")
    if way == "window":
        assert gold in source and source in prompt and source in CONTEXT
    else:
        assert source == CONTEXT


def oracle(rows):
    answer = {r["question"]: r["answers"]["text"][0] for r in rows}

    def question_of(prompt):
        return prompt[prompt.rindex("Spørgsmål: ") + len("Spørgsmål: ") : prompt.rindex("\nSvar:")]

    return ScriptedModel(
        lambda ctx, cont: 0.0 if cont.strip() == answer.get(question_of(ctx)) else -20.0,
        lambda prompt: " " + answer[question_of(prompt)] + "\nSpørgsmål: mere",
        block_size=100_000,
    )


def test_an_oracle_scores_perfectly(rows):
    res = ReadingComprehensionTask().evaluate(oracle(rows), data=str(DATA), limit=40)
    assert res.n == 40 and "40 open book" in res.notes
    for name in ("rank_accuracy", "rank_accuracy_pmi", "f1", "exact_match"):
        assert res.metrics[name].value == 1.0, name
        assert res.metrics[name].chance < 0.3


@pytest.mark.parametrize("judge", [lambda c, x: 0.0, per_byte], ids=["indifferent", "uniform"])
def test_a_model_without_preferences_ranks_at_chance(judge):
    lm = ScriptedModel(judge, block_size=64)
    res = ReadingComprehensionTask().evaluate(lm, data=str(DATA / "xquad-da.jsonl"), limit=40)
    m = res.metrics["rank_accuracy"]
    if judge is not per_byte:  # a per-byte uniform model prefers short spans, as totals do
        assert m.value == pytest.approx(m.chance)
    pmi = res.metrics["rank_accuracy_pmi"]  # the question changes nothing: chance
    assert pmi.value == pytest.approx(pmi.chance)
    assert res.metrics["f1"].value == 0.0 and "closed book" in res.notes
    short = [(c, x) for c, x in lm.seen if lm.n_tokens(x) <= 16]
    assert len(short) > 100 and all(lm.n_tokens(c + x) <= 63 for c, x in short)
