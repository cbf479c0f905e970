"""--dtype auto: bf16 where the CPU has bf16 units and the probe finds it faster; both paths."""

from __future__ import annotations

import json
import os
import signal
import warnings

import pytest
import torch

from kennethlm_core import precision
from kennethlm_core.errors import ConfigError, Interrupted
from kennethlm_core.model import build_model
from kennethlm_core.rundir import read_metrics
from kennethlm_core.train import train

from .conftest import tiny_config

CPU = torch.device("cpu")


@pytest.fixture
def probe(monkeypatch):
    """A CPU with bf16 units whose probe is not forced (the suite forces float32)."""
    monkeypatch.delenv(precision.FORCE, raising=False)
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: ["amx_bf16"])
    return monkeypatch


def timings(monkeypatch, fp32: float, bf16: float) -> None:
    speeds = {"float32": fp32, "bfloat16": bf16}
    monkeypatch.setattr(precision, "time_step", lambda *args: speeds[args[4]])


def test_an_asked_precision_is_taken_as_it_is(probe):
    assert precision.choose(CPU, "float32").dtype == "float32"
    assert precision.choose(CPU, "bfloat16").reason == "asked for"


def test_a_cpu_without_bf16_units_is_not_even_probed(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: [])
    monkeypatch.setattr(precision, "time_step", lambda *a: pytest.fail("probed"))
    chosen = precision.choose(CPU, "auto", torch.nn.Linear(2, 2))
    assert chosen.dtype == "float32" and "no bf16 matrix instructions" in chosen.reason


def test_the_probe_chooses_bf16_only_when_it_is_clearly_faster(probe, registry):
    model = build_model(tiny_config(registry), 64, registry)
    timings(probe, fp32=0.30, bf16=0.10)
    fast = precision.choose(CPU, "auto", model, (4, 16), 64)
    assert fast.dtype == "bfloat16" and "3.00x faster" in fast.reason and "amx_bf16" in fast.reason
    speedup = pytest.approx(3.0)
    assert fast.probe == {"float32_s": 0.30, "bfloat16_s": 0.10, "speedup": speedup, "rows": 4}
    timings(probe, fp32=0.105, bf16=0.10)  # 5% faster: within the margin, not worth it
    slow = precision.choose(CPU, "auto", model, (4, 16), 64)
    assert slow.dtype == "float32" and "1.05x" in slow.reason


def test_the_probe_times_the_runs_context_on_at_most_probe_tokens_tokens(probe, registry):
    model = build_model(tiny_config(registry), 64, registry)
    shapes = []
    probe.setattr(precision, "time_step", lambda m, shape, *a: shapes.append(shape) or 0.1)
    chosen = precision.choose(CPU, "auto", model, (96, 64), 64)  # 6,144 tokens: cut to 2,048
    assert shapes == [(32, 64), (32, 64)] and chosen.probe["rows"] == 32
    precision.choose(CPU, "auto", model, (8, 64), 64)  # a small batch is timed whole
    precision.choose(CPU, "auto", model, (4, 4096), 64)  # a context past the budget: one row
    precision.choose(CPU, "auto", model, (96, 100), 64)  # never past the budget: 20 rows
    assert shapes[2:] == [(8, 64), (8, 64), (1, 4096), (1, 4096), (20, 100), (20, 100)]


def test_the_probes_answer_can_be_forced(probe):
    for dtype in ("bfloat16", "float32"):
        probe.setenv(precision.FORCE, dtype)
        chosen = precision.choose(CPU, "auto", torch.nn.Linear(2, 2))
        assert chosen.dtype == dtype and chosen.probe is None and "forced" in chosen.reason
    probe.setenv(precision.FORCE, "fp8")
    with pytest.raises(ConfigError, match="bfloat16 or float32"):
        precision.choose(CPU, "auto", torch.nn.Linear(2, 2))


def test_the_probe_leaves_weights_gradients_and_random_state_alone(registry):
    torch.manual_seed(0)
    model = build_model(tiny_config(registry, dropout=0.1), 64, registry)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    seconds = precision.time_step(model, (2, 16), 64, CPU, "bfloat16")
    assert seconds > 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(rng, torch.get_rng_state())


def test_a_cuda_gpu_without_bf16_is_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Old GPU")
    with pytest.raises(ConfigError, match="Old GPU has no bf16"):
        precision.check(torch.device("cuda"), "bfloat16")
    assert precision.choose(torch.device("cuda"), "auto").dtype == "float32"


def test_bf16_asked_for_on_a_cpu_without_bf16_units_warns_that_it_is_emulated(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: [])
    with pytest.warns(UserWarning, match="bf16 is emulated, many times slower"):
        precision.check(CPU, "bfloat16")
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: ["avx512_bf16"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        precision.check(CPU, "bfloat16")  # units: no word


def test_bf16_where_torch_cannot_autocast_to_it_is_refused(monkeypatch):
    monkeypatch.setattr(precision, "autocasts_to", lambda device, dtype: False)
    with pytest.raises(ConfigError, match="cannot autocast to bf16 on mps"):
        precision.check(torch.device("mps"), "bfloat16")


def test_a_bf16_run_records_its_choice_resumes_in_it_and_evaluates_in_it(probe, registry, tmp_path):
    """The choice goes into summary.json; a run resumed where the probe would now say float32
    keeps bf16 and ends exactly as an uninterrupted one; klm eval scores it in bf16."""
    from kennethlm_core.evaluate import run_tasks

    cfg = tiny_config(registry, steps=30)
    probe.setenv(precision.FORCE, "bfloat16")
    straight = train(cfg, tmp_path / "straight", registry=registry)
    assert straight["dtype"] == "bfloat16" and "forced" in straight["precision"]["reason"]
    fp32 = train(tiny_config(registry, steps=30, dtype="float32"), tmp_path / "fp32")
    assert fp32["val_bpb"] != straight["val_bpb"]  # bf16 really was used

    def interrupt_at_10(clock, *rest):
        if clock.step == 10:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted):
        train(cfg, tmp_path / "resumed", registry=registry, progress=interrupt_at_10)
    probe.setenv(precision.FORCE, "float32")  # another answer now: the run keeps its own
    resumed = train(cfg, tmp_path / "resumed", registry=registry, resume=True)
    assert resumed["dtype"] == "bfloat16"
    assert [r["val_bpb"] for r in read_metrics(tmp_path / "resumed")] == [
        r["val_bpb"] for r in read_metrics(tmp_path / "straight")
    ]
    assert resumed["val_bpb"] == straight["val_bpb"]
    scored = run_tasks(tmp_path / "straight", ["bpb"], registry=registry)["bpb"]
    assert scored["metrics"]["bpb"]["value"] == pytest.approx(straight["val_bpb"], rel=1e-9)
    saved = json.loads((tmp_path / "straight" / "summary.json").read_text())
    assert saved["precision"]["dtype"] == "bfloat16"


def test_a_comparison_takes_one_answer_for_all_its_runs(probe, registry):
    """one_answer probes once and hands the answer to every run (and subprocess) in its block."""
    calls = []
    speeds = {"float32": 0.3, "bfloat16": 0.1}
    probe.setattr(precision, "time_step", lambda *a: calls.append(a[4]) or speeds[a[4]])
    cfg = tiny_config(registry)
    with precision.one_answer(cfg, registry, 64):
        assert os.environ[precision.FORCE] == "bfloat16"
        for _ in range(3):  # every run in the block: the same answer, no new timing
            assert precision.choose(CPU, "auto", torch.nn.Linear(2, 2)).dtype == "bfloat16"
    assert calls == ["float32", "bfloat16"]
    assert precision.FORCE not in os.environ  # restored
