"""The conformance kit itself: the built-in components pass it, and components that break a
rule fail the check for that rule (a kit that passes everything would prove nothing)."""

from __future__ import annotations

import inspect
import json
import random
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kennethlm_core import hookimpl
from kennethlm_core.builtin.corpora import SAMPLE
from kennethlm_core.builtin.layers import NaiveAttention
from kennethlm_core.builtin.tokenizers import ByteTokenizer
from kennethlm_core.components import PositionalEmbedding
from kennethlm_core.errors import UnknownComponent
from kennethlm_core.plugins import BUILTIN, Registry, get_registry
from kennethlm_core.testing import conformance

# -- every built-in component through the kit ----------------------------------------------

pytestmark = pytest.mark.usefixtures("one_thread")

NOT_HERE = {
    ("corpus", "dagw"): "needs the Hugging Face hub",
    ("corpus", "dynaword"): "needs the Hugging Face hub",
    ("corpus", "hf"): "needs a hub dataset; tests/test_hf_corpus.py runs the kit on a local copy",
    ("mlp", "none"): "builds no sublayer; tests/test_combinations.py trains a GPT without it",
}
SETTINGS = {("corpus", "path"): {"corpus": str(SAMPLE)}}

for _c in get_registry().all():
    if _c.distribution == BUILTIN and (_c.slot, _c.name) not in NOT_HERE:
        _kit = conformance(_c.slot, _c.name, **SETTINGS.get((_c.slot, _c.name), {}))
        globals()[f"TestBuiltin_{_c.slot}_{_c.name}"] = _kit


def test_an_unknown_component_fails_at_collection():
    with pytest.raises(UnknownComponent, match="unknown attention 'flsh'"):
        conformance("attention", "flsh")
    with pytest.raises(UnknownComponent, match="did you mean 'attention'"):
        conformance("atention", "naive")


# -- components that break one rule each ---------------------------------------------------


class Peeking(NaiveAttention):
    """Softmax attention without the causal mask: it sees the future."""

    def forward(self, q, k, v, bias=None):
        return F.softmax(q @ k.transpose(-2, -1) / q.size(-1) ** 0.5, dim=-1) @ v


class IgnoresBias(NaiveAttention):
    def forward(self, q, k, v, bias=None):
        return super().forward(q, k, v, None)


class Noisy(NaiveAttention):
    """Draws from Python's random module, which a torch seed does not fix."""

    def forward(self, q, k, v, bias=None):
        return super().forward(q, k, v, bias) + random.random()


class DropsInEval(NaiveAttention):
    def forward(self, q, k, v, bias=None):
        return F.dropout(super().forward(q, k, v, bias), p=self.dropout.p, training=True)


class LengthDependent(PositionalEmbedding):
    """Adds position / length: the first positions change when the sequence grows."""

    def embed(self, x):
        T = x.size(1)
        return x + torch.arange(T, dtype=x.dtype).view(1, T, 1) / T


class PeekingEmbedding(PositionalEmbedding):
    """Adds the mean over the whole sequence: each position sees those after it."""

    def embed(self, x):
        return x + x.mean(dim=1, keepdim=True)


class LengthDependentBias(PositionalEmbedding):
    """A score bias of 1 / length: the first rows change when the sequence grows."""

    def score_bias(self, T, device):
        return torch.full((1, T, T), 1.0 / T, device=device)


class MisshapenBias(PositionalEmbedding):
    def score_bias(self, T, device):
        return torch.zeros(T + 1, T, device=device)


class RandomBias(PositionalEmbedding):
    """A score bias drawn from Python's random module, which a torch seed does not fix."""

    def __init__(self):
        super().__init__()
        self.register_buffer("bias", torch.full((1, 1, 1), random.random()), persistent=False)

    def score_bias(self, T, device):
        return self.bias.expand(1, T, T).to(device)


class OverTime(nn.Module):
    """Normalises over positions: every position sees the whole sequence."""

    def forward(self, x):
        return x - x.mean(dim=1, keepdim=True)


class OverBatch(nn.Module):
    def forward(self, x):
        return x - x.mean(dim=0, keepdim=True)


class RandomInit(nn.Module):
    """A scale drawn from Python's random module, which a torch seed does not fix."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.full((1,), 1.0 + random.random()))

    def forward(self, x):
        return self.weight * x


class Ascii(ByteTokenizer):
    def encode(self, text):
        return list(text.encode("ascii", errors="ignore"))

    def to_json(self):
        return json.dumps({"type": "byte"})


@hookimpl
def klm_register_attention(register):
    register("peeking", Peeking, provides={"score_bias"})
    register("ignores-bias", IgnoresBias, provides={"score_bias"})
    register("swallows-bias", IgnoresBias)  # takes a bias silently without declaring it
    register("noisy", Noisy, provides={"score_bias"})
    register("drops-in-eval", DropsInEval, provides={"score_bias"})


@hookimpl
def klm_register_posemb(register):
    register("length-dependent", lambda cfg: LengthDependent())
    register("peeking-embed", lambda cfg: PeekingEmbedding())
    register("length-dependent-bias", lambda cfg: LengthDependentBias())
    register("misshapen-bias", lambda cfg: MisshapenBias())
    register("random-bias", lambda cfg: RandomBias())


@hookimpl
def klm_register_norm(register):
    register("over-time", lambda cfg, dim: OverTime())
    register("over-batch", lambda cfg, dim: OverBatch())
    register("random-init", lambda cfg, dim: RandomInit())


@hookimpl
def klm_register_optimizer(register):
    register("frozen", lambda cfg, model: torch.optim.SGD(model.parameters(), lr=0.0))


@hookimpl
def klm_register_schedule(register):
    register("overshoot", lambda cfg: lambda step, progress: 2.0)
    register("stateful", lambda cfg: _counting())


def _counting():
    """A schedule that counts its calls: a resumed run would get other multipliers."""
    calls = []

    def multiplier(step, progress):
        calls.append(step)
        return min(1.0, len(calls) / 100)

    return multiplier


@hookimpl
def klm_register_tokenizer(register):
    register("ascii", lambda cfg: Ascii())


@pytest.fixture(scope="module")
def bad():
    registry = Registry(entry_points=False)
    module = types.ModuleType("bad_components")
    for name, value in globals().items():
        if name.startswith("klm_register_"):
            setattr(module, name, value)
    registry.add_plugin(module, "bad", "klm-bad-components")
    return registry


BROKEN = [
    ("attention", "peeking", "test_causal", "not causal"),
    ("attention", "ignores-bias", "test_score_bias", "score bias is not applied"),
    ("attention", "swallows-bias", "test_score_bias", "DID NOT RAISE"),
    ("attention", "noisy", "test_deterministic_under_a_seed", "same seed gave different"),
    ("attention", "drops-in-eval", "test_dropout_only_in_training", "eval mode"),
    ("posemb", "length-dependent", "test_causal", "depends on what follows"),
    ("posemb", "peeking-embed", "test_causal", "not causal"),
    ("posemb", "length-dependent-bias", "test_causal", "differs from the first"),
    ("posemb", "misshapen-bias", "test_score_bias", "not broadcastable"),
    ("posemb", "random-bias", "test_score_bias_is_reproducible", "same seed gives another"),
    ("norm", "over-time", "test_causal", "not causal"),
    ("norm", "over-batch", "test_sequences_are_independent", "another sequence"),
    ("norm", "random-init", "test_deterministic_under_a_seed", "gave a different weight"),
    ("optimizer", "frozen", "test_lowers_the_loss", "took the loss from"),
    ("schedule", "overshoot", "test_multiplier_in_range", r"outside \[0, 1.0\]"),
    ("schedule", "stateful", "test_pure_function_of_step_and_progress", "call order"),
    ("tokenizer", "ascii", "test_round_trip_of_danish_text", "came back as"),
]


@pytest.mark.parametrize("slot, name, check, message", BROKEN, ids=[b[1] for b in BROKEN])
def test_a_broken_component_fails_its_check(bad, tmp_path, slot, name, check, message):
    kit = conformance(slot, name, registry=bad)()
    method = getattr(kit, check)
    args = [tmp_path] if "tmp_path" in inspect.signature(method).parameters else []
    with pytest.raises((AssertionError, pytest.fail.Exception), match=message):
        method(*args)
