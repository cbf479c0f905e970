"""tensorboard: the conformance kit; a tiny run's event files, read back with TensorBoard's
EventAccumulator, hold every row of metrics.jsonl, the training loss, lr and tokens/s, the
config and the summary; a stopped and resumed run shows the trajectory of an uninterrupted
one; a writer that cannot start costs one warning line in a real klm process."""

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from kennethlm_core.config import build_config, resolve
from kennethlm_core.loggers import flatten
from kennethlm_core.plugins import get_registry
from kennethlm_core.testing import TINY, conformance
from kennethlm_core.train import Interrupted, read_metrics, train

TestTensorBoard = conformance("callback", "tensorboard")

SMALL = dict(
    steps=20,
    eval_every=10,
    log_every=5,
    eval_bytes=2048,
    final_eval_bytes=4096,
    threads=1,
    dtype="float32",  # not the bf16 probe, whose answer can differ between two runs
)


def tiny(**overrides):
    registry = get_registry()
    cfg = build_config(overrides={**TINY, **SMALL, "logger": "tensorboard", **overrides})
    return registry, resolve(cfg, registry)


def events(run: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    return acc


def points(acc: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    registry, cfg = tiny()
    run = tmp_path_factory.mktemp("tb") / "run"
    summary = train(cfg, run, registry=registry)
    return run, summary, events(run)


def test_every_row_of_the_metrics_file_is_logged(logged):
    run, _, acc = logged
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [0, 10, 20]
    tags = {t for t in acc.Tags()["scalars"] if t.startswith("eval/")}
    assert tags == {f"eval/{key}" for key in rows[0] if key != "step"}
    for tag in sorted(tags):
        key = tag.removeprefix("eval/")
        expected = [(r["step"], r[key]) for r in rows if r[key] is not None]
        got = points(acc, tag)
        assert [s for s, _ in got] == [s for s, _ in expected], tag
        for (_, value), (_, want) in zip(got, expected, strict=True):
            assert value == pytest.approx(want, rel=1e-6), tag  # event files keep float32


def test_training_loss_lr_and_tokens_per_second_every_log_every_steps(logged):
    run, _, acc = logged
    rows = {r["step"]: r for r in read_metrics(run)}
    loss = dict(points(acc, "train/loss"))
    assert sorted(loss) == [5, 10, 15, 20]
    for step in (10, 20):  # two points of 5 steps each average to the row's 10 steps
        mean = (loss[step - 5] + loss[step]) / 2
        assert mean == pytest.approx(rows[step]["train_loss"], rel=1e-5)
    lr = dict(points(acc, "train/lr"))
    for step in (10, 20):
        assert lr[step] == pytest.approx(rows[step]["lr"], rel=1e-6)
    assert lr[5] > lr[20]  # the cosine schedule decays
    speed = points(acc, "train/tokens_per_s")
    assert [s for s, _ in speed] == [5, 10, 15, 20]
    assert all(math.isfinite(v) and v > 0 for _, v in speed)


def test_the_summary_and_config_are_logged(logged):
    run, summary, acc = logged
    assert json.loads(json.dumps(summary)) == json.loads((run / "summary.json").read_text())
    flat = flatten(summary)
    numbers = {k: v for k, v in flat.items() if isinstance(v, int | float)}
    numbers = {k: v for k, v in numbers.items() if not isinstance(v, bool)}
    assert {"val_bpb", "val_bpb_by_domain/news", "val_bpb_ci/0", "tokens_per_s"} <= set(numbers)
    for key, value in numbers.items():
        assert points(acc, f"summary/{key}") == [(20, pytest.approx(value, rel=1e-6))], key
    text = acc.Tensors("summary/text_summary")[0].tensor_proto.string_val[0].decode()
    assert json.loads(text.strip("`\n")) == json.loads(json.dumps(flat))

    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    config = json.loads((run / "config.json").read_text())
    assert set(hparams) == set(config) | {"arm", "group"}
    for key, value in config.items():
        field = hparams[key].WhichOneof("kind")
        got = getattr(hparams[key], field)
        want = json.dumps(value) if isinstance(value, list | dict) else value
        if field == "number_value":  # numbers and bools
            assert got == pytest.approx(float(want)), key
        else:
            assert got == want, key


def test_a_resumed_run_shows_the_trajectory_of_an_uninterrupted_one(tmp_path):
    registry, cfg = tiny(eval_every=5, log_every=3)
    train(cfg, tmp_path / "straight", registry=registry)

    def stop(clock, *rest):  # Ctrl-C after step 10: the checkpoint is at step 10
        if clock.step == 10:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted):
        train(cfg, tmp_path / "stopped", registry=registry, progress=stop)
    train(cfg, tmp_path / "stopped", registry=registry, resume=True)
    straight, resumed = events(tmp_path / "straight"), events(tmp_path / "stopped")
    assert len(os.listdir(tmp_path / "stopped" / "tensorboard")) == 2  # one file a process
    for tag in ("train/loss", "train/lr", "eval/val_bpb", "eval/train_loss", "summary/val_bpb"):
        assert points(resumed, tag) == points(straight, tag), tag
    assert [s for s, _ in points(resumed, "train/loss")] == [3, 6, 9, 12, 15, 18]


def test_a_writer_that_cannot_start_costs_one_warning_and_the_run_goes_on(tmp_path):
    registry, cfg = tiny(logger="", steps=10)
    run = tmp_path / "run"
    train(cfg, run, registry=registry)
    (run / "tensorboard").write_text("a file where the event folder would go\n")
    proc = subprocess.run(
        [sys.executable, "-m", "kennethlm_core", "run", "--resume", str(run), "--steps", "20"]
        + ["--logger", "tensorboard", "-q"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "KLM_DTYPE_PROBE": "float32"},
    )
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line.lower()]
    assert len(warnings) == 1, proc.stderr
    assert warnings[0].startswith("klm: warning: logger 'tensorboard' could not start (")
    assert warnings[0].endswith("; the run goes on without it")
    assert "Traceback" not in proc.stderr
    assert [r["step"] for r in read_metrics(run)] == [0, 10, 20]
    assert (run / "tensorboard").read_text().startswith("a file")  # the user's file is kept
