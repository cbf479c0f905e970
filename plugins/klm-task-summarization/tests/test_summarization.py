"""Summarization: the lead kept, and fixture models whose scores are known."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from klm_task_summarization import SummarizationTask, chrf_metric, prompt_of

from kennethlm_core.fixtures import ScriptedModel, per_byte

DATA = Path(__file__).resolve().parents[3].parent / "shared/data/eval/summarization"


@pytest.fixture(scope="module")
def rows():
    return [json.loads(line) for line in (DATA / "danewsroom.jsonl").open(encoding="utf-8")]


def test_the_prompt_is_the_lead_in_half_the_context():
    lm = ScriptedModel(block_size=64)
    article = "Regeringen fremlagde i dag sin plan for de nye cykelstier. " * 10
    prompt = prompt_of(lm, article)
    assert prompt.startswith("Regeringen fremlagde") and prompt.endswith(" i\nResumé:")
    assert lm.n_tokens(prompt) <= 31


def test_chrf_is_100_for_the_reference_and_chance_is_an_unrelated_one():
    refs = ["Regeringen vil bygge flere cykelstier.", "Vejret bliver koldt i weekenden."]
    m = chrf_metric(refs, refs)
    assert m.value == pytest.approx(100.0) and m.chance < 30
    assert chrf_metric(["", ""], refs).value == 0.0


def test_an_oracle_scores_perfectly(rows, tmp_path):
    short = [r for r in rows if len(r["target_text"].encode()) < 120]  # within the length cap
    (tmp_path / "s.jsonl").write_text("\n".join(json.dumps(r) for r in short))
    lm0 = ScriptedModel(block_size=64)
    ref_of = {prompt_of(lm0, r["text"]): " ".join(r["target_text"].split()) for r in short}
    oracle = ScriptedModel(
        lambda ctx, cont: 0.0 if cont.strip() == ref_of[ctx] else -99.0,
        lambda prompt: " " + ref_of[prompt] + "\nmere tekst",
        block_size=64,
    )
    res = SummarizationTask().evaluate(oracle, data=str(tmp_path), limit=10)
    assert res.n == 10
    assert res.metrics["chrf++"].value == pytest.approx(100.0)
    assert res.metrics["bpb"].value == 0.0


def test_a_uniform_model_scores_chance():
    lm = ScriptedModel(per_byte, block_size=64)
    res = SummarizationTask().evaluate(lm, data=str(DATA / "danewsroom.jsonl"), limit=10)
    assert res.metrics["bpb"].value == pytest.approx(8.0) == res.metrics["bpb"].chance
    assert res.metrics["chrf++"].value == 0.0 and res.metrics["chrf++"].ci is not None
