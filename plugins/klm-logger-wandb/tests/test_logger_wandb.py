"""wandb, offline: the conformance kit; a tiny run's offline W&B run, read back from its .wandb
file, holds the run's config, every row of metrics.jsonl, the training loss and the summary;
a comparison's runs share a group with the arm as job type and the arm and seed as tags; a
W&B that cannot start (online, no API key) costs one warning line in a real klm process."""

import glob
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from wandb.proto import wandb_internal_pb2

from kennethlm_core.config import build_config, resolve
from kennethlm_core.loggers import flatten
from kennethlm_core.plugins import get_registry
from kennethlm_core.testing import TINY, conformance
from kennethlm_core.train import read_metrics, train

SMALL = dict(
    steps=20,
    eval_every=10,
    log_every=5,
    eval_bytes=2048,
    final_eval_bytes=4096,
    threads=1,
    dtype="float32",  # not the bf16 probe, whose answer can differ between two runs
)


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """W&B offline, its own settings and caches in the test's folder, never the user's."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


TestWandB = conformance("callback", "wandb")


# -- reading an offline run: the records of its .wandb file, parsed by wandb's own protobufs --


def records(path: Path) -> list:
    """The records of a .wandb file: a 7-byte header (":W&B", magic, version), then LevelDB
    log blocks of 32 KiB, each record a 7-byte header (CRC32, length, kind) and its bytes,
    split into first/middle/last pieces where it crosses a block."""
    data = path.read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), "not a .wandb file"
    block, pos, pieces, found = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # too little room left for a header: padding
            pos += block - pos % block
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:  # zeros to the end of the block
            pos += block - pos % block
            continue
        body = data[pos + 7 : pos + 7 + length]
        assert zlib.crc32(body, zlib.crc32(bytes([kind]))) == crc, "a damaged record"
        pos += 7 + length
        pieces += body
        if kind in (1, 4):  # full, or the last piece
            found.append(wandb_internal_pb2.Record.FromString(pieces))
            pieces = b""
    return found


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def offline_run(folder: Path) -> dict:
    """What the offline W&B run in ``folder`` (a klm run folder) holds."""
    (path,) = glob.glob(str(folder / "wandb" / "offline-run-*" / "run-*.wandb"))
    run, config, history, summary = None, {}, [], {}
    for record in records(Path(path)):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            config.update({_key(u): json.loads(u.value_json) for u in run.config.update})
        elif kind == "config":
            config.update({_key(u): json.loads(u.value_json) for u in record.config.update})
        elif kind == "history":
            history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            summary.update({_key(u): json.loads(u.value_json) for u in record.summary.update})
    config.pop("_wandb", None)
    kinds = [r.WhichOneof("record_type") for r in records(Path(path))]
    assert run is not None, f"no run record in {path} ({Path(path).stat().st_size} bytes): {kinds}"
    return {"run": run, "config": config, "history": history, "summary": summary}


def tiny(**overrides):
    registry = get_registry()
    cfg = build_config(overrides={**TINY, **SMALL, "logger": "wandb", **overrides})
    return registry, resolve(cfg, registry)


def test_the_offline_run_holds_config_metrics_and_summary(tmp_path):
    registry, cfg = tiny()
    summary = train(cfg, tmp_path / "run", registry=registry)
    got = offline_run(tmp_path / "run")
    assert got["run"].display_name == "run" and got["run"].run_group == ""
    assert list(got["run"].tags) == [f"seed-{cfg.seed}"]
    assert got["config"] == json.loads((tmp_path / "run" / "config.json").read_text())

    steps = {row["_step"]: row for row in got["history"]}
    for row in read_metrics(tmp_path / "run"):  # every row, each figure at its step
        for key, value in row.items():
            if key != "step" and value is not None:
                assert steps[row["step"]][f"eval/{key}"] == pytest.approx(value, rel=1e-12)
    loss = {s: r["train/loss"] for s, r in steps.items() if "train/loss" in r}
    assert sorted(loss) == [5, 10, 15, 20]
    assert all(steps[s]["train/tokens_per_s"] > 0 and "train/lr" in steps[s] for s in loss)
    row = {r["step"]: r for r in read_metrics(tmp_path / "run")}[20]
    assert (loss[15] + loss[20]) / 2 == pytest.approx(row["train_loss"], rel=1e-6)

    expected = flatten(json.loads(json.dumps(summary)))
    assert expected == flatten(json.loads((tmp_path / "run" / "summary.json").read_text()))
    for key, value in expected.items():
        assert got["summary"][key] == value, key
    assert {"val_bpb", "val_bpb_by_domain/news", "tokens_per_s", "device"} <= set(expected)


def test_a_comparison_is_one_group_with_arm_and_seed(tmp_path, capsys):
    from kennethlm_core.cli import main

    exp = tmp_path / "exp"
    tiny_flags = [f"--set={k}={v}" for k, v in {**TINY, **SMALL}.items() if k != "steps"]
    args = ["compare", "--baseline", "baseline", "--candidate", "--posemb none", "--seeds", "2"]
    args += ["--steps", "10", *tiny_flags, "--logger", "wandb", "--out", str(exp), "-q"]
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 0, capsys.readouterr().err
    seen = []
    for arm in ("baseline", "candidate"):
        for seed in (1, 2):
            run = offline_run(exp / arm / f"seed-{seed}")["run"]
            seen.append((run.run_group, run.job_type, list(run.tags), run.display_name))
    assert seen == [
        ("exp", arm, [arm, f"seed-{seed}"], f"{arm} seed {seed}")
        for arm in ("baseline", "candidate")
        for seed in (1, 2)
    ]
    before = json.loads((exp / "summary.json").read_text())
    with pytest.raises(SystemExit) as stop:  # the loggers are not part of what a run is:
        main([a for a in args if a not in ("--logger", "wandb")])  # the runs are reused
    assert stop.value.code == 0
    after = json.loads((exp / "summary.json").read_text())
    assert after["arms"] == before["arms"] and after["candidate_settings"] == {"posemb": "none"}


def test_a_wandb_that_cannot_start_costs_one_warning_and_the_run_goes_on(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"}
    env.update(WANDB_MODE="online", HOME=str(tmp_path / "home"), KLM_DTYPE_PROBE="float32")
    flags = [f"--set={k}={v}" for k, v in {**TINY, **SMALL}.items() if k != "steps"]
    proc = subprocess.run(
        [sys.executable, "-m", "kennethlm_core", "run", "--steps", "10", *flags]
        + ["--logger", "wandb", "--out", str(tmp_path / "run"), "-q"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line.lower()]
    assert len(warnings) == 1, proc.stderr
    assert warnings[0].startswith("klm: warning: logger 'wandb' could not start (UsageError: ")
    assert warnings[0].endswith("; the run goes on without it")
    assert "wandb:" not in proc.stderr and "Traceback" not in proc.stderr
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [0, 10]
    assert (tmp_path / "run" / "summary.json").exists()
