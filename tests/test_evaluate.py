"""What tasks rely on: batched scoring against a one-request-at-a-time reference, greedy
generation, cutting text to a token budget, choice and classification metrics, data lookup."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kennethlm_core.errors import ConfigError, DataError
from kennethlm_core.evaluate import (
    LoadedRun,
    answer_text,
    choose,
    load_rows,
    macro_f1,
    mcc,
    sample_rows,
    task_data,
)
from kennethlm_core.fixtures import ScriptedModel

from .conftest import tiny_config


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    from kennethlm_core.plugins import get_registry
    from kennethlm_core.train import train

    registry = get_registry()
    out = tmp_path_factory.mktemp("eval") / "run"
    train(tiny_config(registry, steps=5), out, registry=registry)
    return LoadedRun(out, registry=registry)


def reference_logprob(lm, ids, start):
    """log P(ids[start:] | ids[:start]), one window at a time, the way logprobs documents it."""
    T, total = lm.block_size, 0.0
    for a in range(start, len(ids), T):
        b = min(len(ids), a + T)
        s = max(0, b - 1 - T)
        logits, _ = lm.model(torch.tensor([ids[s : b - 1]]))
        logp = torch.log_softmax(logits[0].double(), -1)
        for pos in range(a, b):
            total += logp[pos - 1 - s, ids[pos]].item()
    return total


def test_batched_logprobs_match_a_window_by_window_reference(lm):
    rng = np.random.default_rng(0)
    V, T = lm.tokenizer.vocab_size, lm.block_size
    requests = [
        (rng.integers(0, V, n).tolist(), s)
        for n, s in [(5, 1), (T + 1, 3), (3 * T + 5, 2 * T), (2, 1), (40, 39), (T, 0)]
    ]
    got = lm.logprobs(requests, batch_tokens=3 * T)  # several batches of mixed widths
    want = [reference_logprob(lm, ids, max(1, s)) for ids, s in requests]
    assert got == pytest.approx(want, rel=1e-4, abs=1e-4)


def test_score_conditions_on_a_document_start(lm):
    ids = [lm.tokenizer.doc_id, *lm.encode("Der var engang")]
    want = reference_logprob(lm, ids + lm.encode(" en konge"), len(ids))
    assert lm.score("Der var engang", " en konge") == pytest.approx(want, rel=1e-4)
    assert lm.score_many([("a", "b"), ("Der var engang", " en konge")])[1] == pytest.approx(want)


def test_generate_is_greedy_and_stops_at_the_stop_string(lm):
    text = lm.generate("Der var engang", 40)
    assert text == lm.generate("Der var engang", 40) and len(text) <= 40
    ids = [lm.tokenizer.doc_id, *lm.encode("Der var engang")]
    logits, _ = lm.model(torch.tensor([ids]))
    assert lm.encode(text)[0] == int(logits[0, -1].argmax())
    word = text.split()[0]
    assert lm.generate("Der var engang", 40, stop=word[-1]) == text.lstrip().split(word[-1])[0]


def test_an_answer_starts_after_leading_whitespace_and_ends_at_the_stop():
    assert answer_text("\n\n  Politiet rykkede ud.\nMere", "\n") == ("Politiet rykkede ud.", True)
    assert answer_text("\n\nendnu ikke slut", "\n") == ("endnu ikke slut", False)
    assert answer_text("\n\n", "\n") == ("", False)
    assert answer_text(" ingen stop ", None) == (" ingen stop ", False)


def test_fit_keeps_the_end_or_the_start_at_a_word():
    lm = ScriptedModel()
    text = "Der var engang en konge som havde tre døtre"
    assert lm.fit(text, 100) == text
    assert lm.fit(text, 17) == "havde tre døtre" and lm.n_tokens("som havde tre døtre") > 17
    assert lm.fit(text, 14, keep="start") == "Der var engang"
    assert lm.fit("æøå", 3) == "å" and lm.fit("æøå", 1) == ""  # characters never split


def test_ties_share_the_credit_so_indifference_is_chance():
    credit, pred = choose([[0, 0, 0], [1, 2, 2], [3, 1, 0]], [2, 1, 0])
    assert credit.tolist() == pytest.approx([1 / 3, 1 / 2, 1]) and pred.tolist() == [0, 1, 0]


def test_mcc_and_macro_f1_on_hand_checked_cases():
    assert mcc([0, 1, 0, 1], [0, 1, 0, 1]) == pytest.approx(1.0)
    assert mcc([0, 1, 0, 1], [1, 0, 1, 0]) == pytest.approx(-1.0)
    assert mcc([0, 1, 2, 0], [0, 0, 0, 0]) == 0.0  # a constant guess
    tp, tn, fp, fn = 3, 4, 1, 2  # the binary formula
    gold, pred = [1] * 3 + [0] * 4 + [0] * 1 + [1] * 2, [1] * 3 + [0] * 4 + [1] * 1 + [0] * 2
    want = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert mcc(gold, pred) == pytest.approx(want)
    assert macro_f1([0, 1, 2], [0, 1, 1], range(3)) == pytest.approx((1 + 2 / 3 + 0) / 3)


def test_sample_rows_is_stable_and_nested():
    rows = [{"text": f"række {i}"} for i in range(50)]
    assert sample_rows(rows, 10, key="text") == sample_rows(rows[::-1], 10, key="text")
    assert sample_rows(rows, 20, key="text")[:10] == sample_rows(rows, 10, key="text")


class Named:
    data_dir = "qa"


def test_one_data_folder_serves_every_task(tmp_path):
    (tmp_path / "qa").mkdir()
    (tmp_path / "f.jsonl").write_text("{}")
    assert task_data(Named(), str(tmp_path), several=True) == str(tmp_path / "qa")
    assert task_data(object(), str(tmp_path), several=True) is None  # bpb: its own split
    assert task_data(Named(), str(tmp_path / "f.jsonl"), several=False).endswith("f.jsonl")
    with pytest.raises(ConfigError, match="one file, but several tasks"):
        task_data(Named(), str(tmp_path / "f.jsonl"), several=True)
    with pytest.raises(DataError, match="no such file"):
        task_data(Named(), str(tmp_path / "nope"), several=False)


def test_local_rows_need_their_columns(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"text": "Godt.", "label": "positive"}\n')
    assert load_rows(str(path), "x/y", "test", ["text", "label"]) == [
        {"text": "Godt.", "label": "positive"}
    ]
    with pytest.raises(DataError, match="needs columns text, answers"):
        load_rows(str(path), "x/y", "test", ["text", "answers"])


def test_the_hub_offline_is_one_line_pointing_to_data(monkeypatch):
    import huggingface_hub

    def unreachable(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", unreachable)
    with pytest.raises(DataError) as e:
        load_rows(None, "EuroEval/angry-tweets-mini", "test", ["text", "label"])
    msg = str(e.value)
    assert "EuroEval/angry-tweets-mini" in msg and "--data PATH" in msg and "\n" not in msg
