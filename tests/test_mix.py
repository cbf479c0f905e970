"""--mix temperature=ALPHA, and domains a mix leaves out: still scored on validation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kennethlm_core.config import mix_temperature
from kennethlm_core.data import TokenSplit, format_mix, mix_weights, prepare_data
from kennethlm_core.errors import ConfigError

from .conftest import assert_one_line_error, tiny_config


def three_domains(sizes=(1000, 3000, 500, 10)) -> TokenSplit:
    """Domains a, b, c, d of ``sizes`` tokens (d too small for a window of 16)."""
    tokens = np.zeros(sum(sizes), dtype=np.uint16)
    starts = np.cumsum([0, *sizes[:-1]])
    rows = [[s, s + n, d, n, d, s] for d, (s, n) in enumerate(zip(starts, sizes, strict=True))]
    return TokenSplit(tokens, np.array(rows, dtype=np.int64), ["a", "b", "c", "d"])


def test_temperature_weights_are_the_natural_shares_to_the_power_alpha():
    split = three_domains()
    half = mix_weights("temperature=0.5", split, 16)
    # by hand: sqrt(1000), sqrt(3000), sqrt(500) = 31.6228, 54.7723, 22.3607 (sum 108.7557);
    # d has 10 tokens, no room for one window of 17, so it gets none
    assert half == pytest.approx({"a": 0.290769, "b": 0.503626, "c": 0.205605, "d": 0})
    assert mix_weights("temperature=0", split, 16) == pytest.approx(
        {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3, "d": 0}
    )
    assert mix_weights("temperature=1", split, 16) == pytest.approx(mix_weights("", split, 16))
    # alpha above 1 sharpens: b's share 3000/4500 = 0.667 becomes 9/14 = 0.643 of squares
    two = mix_weights("temperature=2", split, 16)
    assert two["b"] == pytest.approx(3000**2 / (1000**2 + 3000**2 + 500**2))
    # the weights a run records in config.json give themselves back
    assert mix_weights(format_mix(half), split, 16) == half


def test_temperature_on_a_real_corpus_flattens_the_shares(registry):
    data = prepare_data(tiny_config(registry, tokenizer="byte"), registry)
    share = data.train.domain_tokens() / data.train.domain_tokens().sum()
    got = np.array(list(mix_weights("temperature=0.3", data.train, 16).values()))
    want = share**0.3 / (share**0.3).sum()
    assert got == pytest.approx(want, abs=1e-6)
    assert got.max() - got.min() < share.max() - share.min()  # closer to uniform


@pytest.mark.parametrize(
    "text", ["temperature=-1", "temperature=x", "temperature=", "temperature=0.5,news=1"]
)
def test_a_bad_temperature_is_refused(registry, text):
    with pytest.raises(ConfigError, match="--mix temperature=ALPHA takes one number >= 0"):
        tiny_config(registry, mix=text)


def test_temperature_is_only_the_whole_mix():
    assert mix_temperature("temperature=0.7") == 0.7
    assert mix_temperature("news=1,legal=1") is None and mix_temperature("") is None


def test_a_run_that_leaves_domains_out_still_scores_them(tmp_path, klm, one_thread):
    out = tmp_path / "run"
    args = ["run", "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--block-size", "16"]
    args += ["--batch-size", "4", "--steps", "4", "--eval-every", "2", "--tokenizer", "byte"]
    args += ["--set", "final_eval_bytes=4096", "--set", "warmup_steps=1", "-q"]
    code, stdout, err = klm(*args, "--mix", "news=1,legal=0", "--out", out)
    assert code == 0, err
    mix = json.loads((out / "config.json").read_text())["mix"]
    assert mix == "news=1,conversation=0,legal=0,encyclopedic=0,fiction=0"
    summary = json.loads((out / "summary.json").read_text())
    by_domain = summary["val_bpb_by_domain"]
    assert sorted(by_domain) == ["conversation", "encyclopedic", "fiction", "legal", "news"]
    assert all(np.isfinite(v) and v > 0 for v in by_domain.values())
    for domain in by_domain:  # the printed per-domain table too
        assert domain in stdout


def test_a_bad_temperature_on_the_command_line_is_one_line(klm):
    code, out, err = klm("run", "--mix", "temperature=-0.5")
    assert_one_line_error(code, err, "--mix temperature=ALPHA takes one number >= 0", "-0.5")
