"""Every installed combination, found through the registry (no list of names here):

- every attention x posemb x tokenizer, with the defaults elsewhere;
- every other model, norm, mlp, optimizer and schedule, one at a time, with the defaults
  elsewhere;
- every tweak on its own, and all tweaks together (but one tweak per model seam).

For each, a tiny GPT on the embedded sample does forward and backward with finite values, is
causal, lowers its held-out loss over a few dozen steps, and gives identical logits after a
checkpoint round trip. Pairs the core refuses (config.check_pairs) are skipped with the
refusal as the reason. A plugin installed later is picked up with no edit here.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest
import torch

from kennethlm_core.checkpoint import load_checkpoint, save_checkpoint
from kennethlm_core.config import (
    RunConfig,
    build_config,
    check_pairs,
    resolve,
    selected_components,
)
from kennethlm_core.data import Batches, prepare_data
from kennethlm_core.errors import ConfigError
from kennethlm_core.model import build_model
from kennethlm_core.plugins import get_registry

from .conftest import PYTHON, REPO, assert_one_line_error
from .test_plugins import make_dist

pytestmark = pytest.mark.usefixtures("one_thread")

REGISTRY = get_registry()
TINY = dict(
    n_layer=2,
    n_head=2,
    n_embd=32,
    block_size=16,
    batch_size=8,
    lr=3e-3,
    warmup_steps=5,
    steps=40,
    dropout=0.0,
)
DEFAULTS = RunConfig()


def combinations() -> list[dict[str, str]]:
    grid = [
        dict(zip(("attention", "posemb", "tokenizer"), names, strict=True))
        for names in itertools.product(
            *(REGISTRY.names(s) for s in ("attention", "posemb", "tokenizer"))
        )
    ]
    for slot in ("model", "norm", "mlp", "optimizer", "schedule"):
        grid += [{slot: name} for name in REGISTRY.names(slot) if name != getattr(DEFAULTS, slot)]
    tweaks = REGISTRY.names("tweak")
    grid += [{"tweak": name} for name in tweaks]
    together, held = [], set()  # a tweak holding a seam already held cannot join
    for name in tweaks:
        seams = set(REGISTRY.get("tweak", name).extra.get("seams", ()))
        if not seams & held:
            together.append(name)
            held |= seams
    if len(together) > 1:
        grid.append({"tweak": ",".join(together)})
    return grid


COMBINATIONS = combinations()


@pytest.fixture(scope="module")
def prepared():
    """Tokenized sample data, prepared once per tokenizer for the whole module."""
    cache = {}

    def get(cfg):
        if cfg.tokenizer not in cache:
            cache[cfg.tokenizer] = prepare_data(cfg, REGISTRY)
        return cache[cfg.tokenizer]

    return get


def held_out(split, cfg):
    """A fixed batch of validation windows: the same text before and after training."""
    tokens = torch.from_numpy(split.tokens[: cfg.batch_size * cfg.block_size + 1].astype("int64"))
    n = (len(tokens) - 1) // cfg.block_size * cfg.block_size
    return tokens[:n].view(-1, cfg.block_size), tokens[1 : n + 1].view(-1, cfg.block_size)


def setup(cfg, vocab_size, seed):
    torch.manual_seed(seed)
    model = build_model(cfg, vocab_size, REGISTRY)
    optimizer = REGISTRY.get("optimizer", cfg.optimizer).factory(cfg, model)
    for group in optimizer.param_groups:
        group.setdefault("base_lr", group["lr"])
    return model, optimizer


def assert_finite_step(model, loss, what):
    assert torch.isfinite(loss), f"{what}: loss {loss.item()}"
    for name, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), f"{what}: gradient of {name}"


def label(choice: dict[str, str]) -> str:
    """flash-rope-char for a grid point, norm-none for a single variant."""
    return "-".join(choice.values() if len(choice) > 1 else next(iter(choice.items())))


@pytest.mark.parametrize("choice", COMBINATIONS, ids=[label(c) for c in COMBINATIONS])
def test_combination(choice, prepared, tmp_path):
    cfg = build_config(overrides={**TINY, **choice})
    try:  # only the capability rules may refuse a pair; any other refusal is a failure
        check_pairs(selected_components(cfg, REGISTRY), REGISTRY)
    except ConfigError as e:
        pytest.skip(f"refused: {e}")
    cfg = resolve(cfg, REGISTRY)
    what = ", ".join(f"{k} {v}" for k, v in choice.items())
    data = prepared(cfg)
    model, optimizer = setup(cfg, data.tokenizer.vocab_size, cfg.seed)
    schedule = REGISTRY.get("schedule", cfg.schedule).factory(cfg)
    batches = Batches(data.train, cfg.block_size, cfg.batch_size, cfg.seed, torch.device("cpu"))
    x_val, y_val = held_out(data.val, cfg)

    # causal: changing later tokens never changes earlier logits
    model.eval()
    t = cfg.block_size // 2
    changed = x_val.clone()
    changed[:, t + 1 :] = x_val.flip(0)[:, t + 1 :]
    with torch.no_grad():
        before, loss_before = model(x_val, y_val)
        assert torch.allclose(before[:, : t + 1], model(changed)[0][:, : t + 1], atol=1e-5), (
            f"{what}: not causal"
        )

    # a few dozen steps lower the held-out loss; every step is finite
    model.train()
    for step in range(cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * schedule(step, step / cfg.steps)
        _, loss = model(*batches.next())
        loss.backward()
        if step in (0, cfg.steps - 1):
            assert_finite_step(model, loss, what)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():
        logits, loss_after = model(x_val, y_val)
    assert loss_after < loss_before, (
        f"{what}: held-out loss {loss_before.item():.4f} -> {loss_after.item():.4f}"
    )

    # a checkpoint round trip gives identical logits (into a model built from another seed)
    save_checkpoint(tmp_path / "checkpoint.safetensors", model, optimizer, {}, {"step": cfg.steps})
    copy, copy_optimizer = setup(cfg, data.tokenizer.vocab_size, cfg.seed + 1)
    load_checkpoint(tmp_path / "checkpoint.safetensors", copy, copy_optimizer)
    with torch.no_grad():
        assert torch.equal(copy.eval()(x_val)[0], logits), f"{what}: logits differ after loading"


def test_a_plugin_installed_later_joins_the_suite(tmp_path):
    """Install a new attention (a dist-info on PYTHONPATH) and collect this file again."""
    source = """
        from kennethlm_core import hookimpl

        @hookimpl
        def klm_register_attention(register):
            from kennethlm_core.builtin.layers import NaiveAttention
            register("copycat", NaiveAttention, "naive under another name", provides={"score_bias"})
    """
    make_dist(
        tmp_path, "klm-attention-copycat", {"klm_copycat": source}, {"copycat": "klm_copycat"}
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    proc = subprocess.run(
        [PYTHON, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", __file__],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for posemb in REGISTRY.names("posemb"):
        for tokenizer in REGISTRY.names("tokenizer"):
            assert f"test_combination[copycat-{posemb}-{tokenizer}]" in proc.stdout


def test_linear_attention_with_alibi_is_refused_before_training(klm, tmp_path):
    out = tmp_path / "run"
    code, _, err = klm("run", "--attention", "linear", "--posemb", "alibi", "--out", out)
    assert_one_line_error(
        code, err, "posemb 'alibi'", "attention 'linear'", "score_bias", "attentions that do"
    )
    assert not out.exists()  # refused before anything was written
