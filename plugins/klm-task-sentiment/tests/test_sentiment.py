"""Sentiment: prompts that fit the context, and fixture models whose scores are known."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from klm_task_sentiment import WORDS, SentimentTask, build_prompt, label_index

from kennethlm_core.errors import DataError
from kennethlm_core.fixtures import ScriptedModel, per_byte

DATA = Path(__file__).resolve().parents[3].parent / "shared/data/eval/sentiment"


@pytest.fixture(scope="module")
def gold_of():
    rows = [json.loads(line) for line in (DATA / "sentiment-da.jsonl").open(encoding="utf-8")]
    return {r["text"]: WORDS[label_index(r["label"])] for r in rows}


def oracle(gold_of):
    """Finds the text being classified (the last one in the prompt) and prefers its label."""

    def judge(context, continuation):
        text = context[context.rindex("Tekst: ") + len("Tekst: ") : context.rindex("\nStemning:")]
        return 0.0 if gold_of.get(text) == continuation.strip() else -20.0

    return ScriptedModel(judge, block_size=100_000)


def test_labels_read_in_english_or_danish():
    assert [label_index(x) for x in ("Positive", "neutral", "negativ")] == [0, 1, 2]
    with pytest.raises(DataError, match="one of positive, neutral, negative"):
        label_index("mixed")


def test_prompts_fit_the_context_and_keep_the_end_of_the_text():
    lm = ScriptedModel(block_size=64)
    text = "Det var en lang og meget kedelig dag, men aftenen blev helt fantastisk god."
    shots = [("Godt.", 0), ("Skidt.", 2)]
    prompt, used = build_prompt(lm, text, shots)
    assert used == 0 and prompt.endswith("helt fantastisk god.\nStemning:")
    assert lm.n_tokens(prompt + " negativ") <= 63  # room for the document token
    roomy = ScriptedModel(block_size=1000)
    prompt, used = build_prompt(roomy, text, shots)
    assert used == 2 and prompt.startswith("Her er tekster")
    assert prompt.index("Godt.") < prompt.index("Skidt.") < prompt.index(text)


def test_an_oracle_scores_perfectly(gold_of):
    res = SentimentTask().evaluate(oracle(gold_of), data=str(DATA), limit=60)
    assert res.n == 60
    for name in ("mcc", "macro_f1", "mcc_calibrated"):
        assert res.metrics[name].value == pytest.approx(1.0), name
    assert res.metrics["p_gold"].value > 0.99


@pytest.mark.parametrize("judge", [lambda c, x: 0.0, per_byte], ids=["indifferent", "uniform"])
def test_a_model_without_preferences_scores_chance(judge):
    lm = ScriptedModel(judge, block_size=64)
    res = SentimentTask().evaluate(lm, data=str(DATA / "sentiment-da.jsonl"), limit=60)
    assert res.metrics["mcc"].value == 0.0 and res.metrics["mcc_calibrated"].value == 0.0
    assert res.metrics["p_gold"].value == pytest.approx(1 / 3)
    for m in res.metrics.values():
        assert m.ci is not None and m.chance is not None
    assert all(lm.n_tokens(c + x) <= 63 for c, x in lm.seen)  # every prompt fit
    assert "0.0 of 6 examples fit" in res.notes


def test_examples_are_never_evaluated(gold_of):
    lm = oracle(gold_of)
    SentimentTask().evaluate(lm, data=str(DATA), limit=2000)
    asked = {c[c.rindex("Tekst: ") :] for c, _ in lm.seen}
    shots = {c.split("\nStemning:")[0] for c, _ in lm.seen[:1]}
    assert len(asked) > 1000
    for shot in shots:
        assert sum(shot in a for a in asked) <= 1
