"""ngram: the conformance kit; the counts give what a plain-Python interpolated absolute
discounting model gives, every distribution sums to one, the dense bigram table equals the
sparse path, the mix is the stated one in evaluation and absent in training, counts survive
saving and loading, and a real run counts once, before its first step, and scores the mix."""

from collections import Counter

import numpy as np
import pytest
import torch
from klm_tweak_ngram import NgramMix, context_keys

from kennethlm_core.checkpoint import CHECKPOINT, WEIGHTS, load_weights, save_weights
from kennethlm_core.config import build_config, resolve
from kennethlm_core.errors import ConfigError
from kennethlm_core.evaluate import LoadedRun
from kennethlm_core.model import build_model
from kennethlm_core.plugins import get_registry
from kennethlm_core.testing import TINY, conformance, tiny_gpt
from kennethlm_core.train import train

TestNgram = conformance("tweak", "ngram")

V = 7
RNG = np.random.default_rng(3)
# a stream with structure (repeated phrases) and noise, so that every order has work
PHRASES = [[1, 2, 3, 4], [1, 2, 5], [6, 0]]
TOKENS = np.concatenate([PHRASES[i] for i in RNG.integers(0, 3, 300)])
TOKENS = np.where(RNG.random(len(TOKENS)) < 0.1, RNG.integers(0, V, len(TOKENS)), TOKENS)


def reference(tokens, order, D, context):
    """p_order(. | context) by the formula in the module's docstring, with Python counters."""
    tokens = list(tokens)
    p = np.array([tokens.count(w) + 1 for w in range(V)], float) / (len(tokens) + V)
    for n in range(2, order + 1):
        if len(context) < n - 1:
            break
        h = tuple(context[len(context) - n + 1 :])
        after = Counter(
            tokens[i + n - 1]
            for i in range(len(tokens) - n + 1)
            if tuple(tokens[i : i + n - 1]) == h
        )
        total = sum(after.values())
        if total:
            mass = np.array([max(after[w] - D, 0) for w in range(V)]) / total
            p = mass + D * len(after) / total * p
    return p


def counted(order=4, D=0.75, weight=0.5, tokens=TOKENS):
    mix = NgramMix(V, order, D, weight)
    mix.count(tokens)
    return mix


@pytest.mark.parametrize("order", [1, 2, 4])
def test_the_counts_give_the_reference_models_distribution(order):
    mix = counted(order, D=0.6)
    idx = torch.tensor([[1, 2, 3, 4, 1, 2], [6, 0, 6, 5, 5, 5]])
    p = mix.probs(idx)
    for b in range(2):
        for t in range(idx.size(1)):
            want = reference(TOKENS, order, 0.6, idx[b, : t + 1].tolist())
            np.testing.assert_allclose(p[b, t].double().numpy(), want, rtol=1e-5, atol=1e-7)


def test_every_distribution_sums_to_one_also_after_unseen_contexts():
    mix = counted(5)
    idx = torch.randint(0, V, (16, 12), generator=torch.Generator().manual_seed(0))
    p = mix.probs(idx)
    torch.testing.assert_close(p.sum(-1), torch.ones(16, 12))
    assert (p > 0).all()


def test_the_dense_bigram_table_gives_what_the_sparse_path_gives():
    mix = counted(5)
    idx = torch.randint(0, V, (4, 10), generator=torch.Generator().manual_seed(1))
    assert mix.bigram() is not None
    torch.testing.assert_close(mix.probs(idx), mix.probs(idx, table=False))


def test_keys_are_the_context_in_an_odd_base_above_the_vocabulary():
    idx = torch.tensor([[3, 0, 6, 2]])  # V = 7: base 9 (8 is even)
    assert context_keys(idx, 3, V).tolist() == [[4 * 9 + 1, 1 * 9 + 7, 7 * 9 + 3]]
    assert context_keys(idx, 2, V).tolist() == [[4, 1, 7, 3]]
    assert context_keys(idx, 3, 8).tolist() == [[4 * 9 + 1, 1 * 9 + 7, 7 * 9 + 3]]


def test_evaluation_returns_the_log_of_the_mix_and_training_the_networks_logits():
    mix = counted(3, weight=0.3)
    idx = torch.randint(0, V, (2, 8), generator=torch.Generator().manual_seed(2))
    logits = torch.randn(2, 8, V)
    assert mix.train()(idx, logits) is logits
    got = mix.eval()(idx, logits).exp()
    torch.testing.assert_close(got, 0.7 * logits.softmax(-1) + 0.3 * mix.probs(idx))


def test_the_counts_are_saved_with_the_weights_and_load_into_a_fresh_model(tmp_path):
    model = tiny_gpt("ngram", ngram_order=3)  # vocabulary 50
    tokens = np.random.default_rng(0).integers(0, 50, 5000)
    model.output_mix.count(tokens)
    save_weights(model, tmp_path / "m.safetensors")
    fresh = tiny_gpt("ngram", ngram_order=3)
    assert fresh.output_mix.keys3.numel() == 0  # built empty
    load_weights(fresh, tmp_path / "m.safetensors")
    for name, buf in model.output_mix.named_buffers():
        assert torch.equal(buf, getattr(fresh.output_mix, name)), name
    idx = torch.from_numpy(tokens[:32].reshape(2, 16))
    torch.testing.assert_close(fresh(idx)[0], model(idx)[0])


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("ngram_order", 0, "ngram_order must be at least 1"),
        ("ngram_discount", 1.0, "ngram_discount must lie between 0 and 1"),
        ("ngram_weight", 1.5, "ngram_weight must lie between 0 and 1"),
    ],
)
def test_options_out_of_range_are_refused(option, value, message):
    with pytest.raises(ConfigError, match=message):
        tiny_gpt("ngram", **{option: value})


def test_a_run_counts_its_training_split_once_and_scores_the_mix(tmp_path):
    registry = get_registry()
    base = dict(TINY, steps=6, eval_every=6, eval_bytes=2048, final_eval_bytes=4096)
    cfg = resolve(build_config(overrides={**base, "tweak": "ngram", "ngram_order": 3}), registry)
    logs = []
    summary = train(cfg, tmp_path / "run", registry=registry, log=logs.append)
    counts = [line for line in logs if line.startswith("counted ")]
    assert len(counts) == 1 and "into output_mix" in counts[0], logs
    assert summary["train_time_s"] > float(counts[0].rsplit("(", 1)[1].rstrip("s)"))
    plain = resolve(build_config(overrides=base), registry)
    alone = train(plain, tmp_path / "plain", registry=registry)
    # six steps teach a GPT little; the counts of the whole split know the sample's text
    assert summary["val_bpb"] < alone["val_bpb"] - 0.2
    # what the run saved scores what it reported, counts and all
    loaded = LoadedRun(tmp_path / "run")
    assert loaded.model.output_mix.keys3.numel() > 0
    torch.manual_seed(0)
    fresh = build_model(cfg, summary["vocab_size"], registry)
    load_weights(fresh, tmp_path / "run" / WEIGHTS)
    for name, buf in fresh.output_mix.named_buffers():
        assert torch.equal(buf, getattr(loaded.model.output_mix, name)), name
    # resumed from its checkpoint, it does not count again
    logs.clear()
    longer = cfg.replace(steps=8)
    train(longer, tmp_path / "run", registry=registry, resume=True, log=logs.append)
    assert (tmp_path / "run" / CHECKPOINT).exists()
    assert not [line for line in logs if line.startswith("counted ")], logs
