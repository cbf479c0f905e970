"""The tweak slot: tweaks change a built GPT through its seams, in the order given; a GPT with
no tweaks is the plain GPT; runs made before the slot existed still count as the same run."""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn

from kennethlm_core import hookimpl
from kennethlm_core.config import RunConfig, build_config, component_names, resolve, same_config
from kennethlm_core.errors import ConfigError, UnknownComponent
from kennethlm_core.model import build_model
from kennethlm_core.plugins import Registry

from .conftest import TINY


class Double(nn.Module):
    def forward(self, logits):
        return 2 * logits


class SwapQK(nn.Module):
    def forward(self, q, k):
        return k, q


def hand_registry(calls: list[str]) -> Registry:
    """Three tweaks registered by hand, one per seam; each notes when it ran."""

    def double_logits(model, cfg):
        calls.append("double")
        model.logits_transform = Double()

    def swap_qk(model, cfg):
        calls.append("swap")
        for block in model.blocks:
            block.attn.qk_transform = SwapQK()

    def zero_head(model, cfg):
        calls.append(f"zero {cfg.get('keep')}")
        model.lm_head.weight = nn.Parameter(torch.zeros_like(model.lm_head.weight))

    plugin = types.ModuleType("hand_tweaks")

    @hookimpl
    def klm_register_tweak(register):
        register("double", double_logits, "logits times two")
        register("swap", swap_qk, "queries and keys trade places")
        register("zero-head", zero_head, "an untied zero head", options={"keep": 1})

    plugin.klm_register_tweak = klm_register_tweak
    reg = Registry(entry_points=False)
    reg.add_plugin(plugin, "hand-tweaks", "test")
    return reg


def model(reg, seed=0, **overrides):
    cfg = resolve(build_config(overrides={**TINY, **overrides}), reg)
    torch.manual_seed(seed)
    return build_model(cfg, 40, reg).eval()


IDX = torch.randint(0, 40, (2, 16), generator=torch.Generator().manual_seed(0))


def test_no_tweaks_is_the_plain_gpt():
    reg = hand_registry([])
    plain = model(reg)
    assert plain.logits_transform is None
    assert all(block.attn.qk_transform is None for block in plain.blocks)
    assert plain.lm_head.weight is plain.wte.weight
    assert "logits_transform" not in str(plain) and "qk_transform" not in str(plain)


def test_each_seam_changes_the_model():
    reg = hand_registry([])
    plain = model(reg)(IDX)[0]
    torch.testing.assert_close(model(reg, tweak="double")(IDX)[0], 2 * plain)
    assert not torch.allclose(model(reg, tweak="swap")(IDX)[0], plain)
    zero = model(reg, tweak="zero-head")
    assert zero.lm_head.weight is not zero.wte.weight and not zero(IDX)[0].any()


def test_tweaks_run_in_the_order_given_with_their_options():
    calls: list[str] = []
    reg = hand_registry(calls)
    model(reg, tweak="swap, zero-head,double", keep=7)
    assert calls == ["swap", "zero 7", "double"]


def test_tweak_names_and_their_errors():
    assert component_names("") == [] and component_names(" a ,b,") == ["a", "b"]
    with pytest.raises(ConfigError, match="listed twice"):
        component_names("a,b,a")
    reg = hand_registry([])
    with pytest.raises(UnknownComponent, match="unknown tweak 'dubble'; did you mean 'double'"):
        resolve(build_config(overrides={**TINY, "tweak": "dubble"}), reg)
    with pytest.raises(ConfigError, match="keep"):  # an option of a tweak that is not chosen
        resolve(build_config(overrides={**TINY, "keep": 3}), reg)


def test_a_run_from_before_the_tweak_slot_is_the_same_run():
    cfg = RunConfig()
    old = cfg.to_dict()
    del old["tweak"]
    assert same_config(old, cfg)
    assert not same_config(old, cfg.replace(tweak="qk-norm"))


def test_tweak_flag_is_repeatable(klm, tmp_path):
    from kennethlm_core.cli import parse_run_args

    assert parse_run_args(["--tweak", "a", "--tweak", "b"])[1] == {"tweak": "a,b"}
    assert "tweak" not in parse_run_args(["--norm", "rmsnorm"])[1]
    code, out, err = klm("run", "--tweak", "no-such-tweak", "--steps", "1", "--out", tmp_path)
    assert code == 2 and "unknown tweak 'no-such-tweak'" in err
