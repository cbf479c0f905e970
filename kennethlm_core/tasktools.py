"""What the task plugins share, importable from ``kennethlm_core.evaluate`` (their public
module): the option a model picks among several (``choose``, ties shared fairly), metrics
with bootstrap intervals (``mean_metric``, ``paired_metric`` over ``mcc`` or ``macro_f1``), and
the rows of an evaluation set (``load_rows`` from local files or the hub, ``sample_rows``: the
same subset every time).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import huggingface_hub
import numpy as np

from kennethlm_core import logs
from kennethlm_core.components import Metric
from kennethlm_core.data import unit_hash
from kennethlm_core.errors import DataError, first_line
from kennethlm_core.metric import bootstrap_mean, bootstrap_stat


def choose(scores: Sequence[Sequence[float]], gold: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The highest-scoring option of each example: (credit, prediction).

    Credit is 1 when the gold option alone scores highest and 1/k when it ties with k-1 others
    (what a random tie-break earns on average), so a model without preferences scores exactly
    chance. The prediction is the first of the top options.
    """
    credit, pred = np.zeros(len(scores)), np.zeros(len(scores), dtype=np.int64)
    for i, (row, g) in enumerate(zip(scores, gold, strict=True)):
        row = np.asarray(row, dtype=np.float64)
        top = np.flatnonzero(row == row.max())
        credit[i] = 1.0 / len(top) if g in top else 0.0
        pred[i] = top[0]
    return credit, pred


def mcc(gold: Sequence, pred: Sequence) -> float:
    """Matthews correlation coefficient for any number of classes (Gorodkin's R_K): 1 perfect,
    0 no better than chance (also when either side uses a single class), -1 inverted."""
    labels, idx = np.unique(
        np.concatenate([np.asarray(gold), np.asarray(pred)]), return_inverse=True
    )
    k, n = len(labels), len(gold)
    conf = np.zeros((k, k))
    np.add.at(conf, (idx[:n], idx[n:]), 1)
    t, p, c, s = conf.sum(1), conf.sum(0), np.trace(conf), conf.sum()
    den = math.sqrt(s * s - p @ p) * math.sqrt(s * s - t @ t)
    return float((c * s - t @ p) / den) if den else 0.0


def macro_f1(gold: Sequence, pred: Sequence, labels: Sequence) -> float:
    """Mean F1 over ``labels``; a label nobody predicted and nothing is has F1 0."""
    gold, pred = np.asarray(gold), np.asarray(pred)
    f1 = []
    for label in labels:
        tp = np.sum((pred == label) & (gold == label))
        fp_fn = np.sum(pred == label) + np.sum(gold == label)
        f1.append(2 * tp / fp_fn if fp_fn else 0.0)
    return float(np.mean(f1))


def mean_metric(values: Sequence[float], chance: float | None = None, **kw) -> Metric:
    """The mean of per-example values, with its bootstrap interval."""
    values = np.asarray(values, dtype=np.float64)
    return Metric(float(values.mean()), bootstrap_mean(values), chance, n=len(values), **kw)


def paired_metric(stat: Callable, gold: Sequence, pred: Sequence, chance: float, **kw) -> Metric:
    """``stat(gold, pred)`` (mcc, macro F1 ...) with an interval from resampling examples."""
    gold, pred = np.asarray(gold), np.asarray(pred)
    ci = bootstrap_stat(lambda i: stat(gold[i], pred[i]), len(gold))
    return Metric(stat(gold, pred), ci, chance, n=len(gold), **kw)


TABLE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
EVAL_LAYOUT = "a folder like ../shared/data/eval (acceptability/, sentiment/, qa/, ...)"


def data_files(path: str | Path, suffixes: Sequence[str] = tuple(TABLE_BUILDERS)) -> list[Path]:
    """``path`` itself, or the files in folder ``path`` ending in one of ``suffixes``."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.name.endswith(tuple(suffixes)))
        if not files:
            raise DataError(f"no {', '.join(suffixes)} files in {path}")
        return files
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    return [path]


def load_rows(data: str | None, hub_id: str, split: str, columns: Sequence[str]) -> list[dict]:
    """The rows of an evaluation set with at least ``columns``: from local files (a .jsonl,
    .json, .parquet or .csv file, or a folder of them) when ``data`` is given, else from the
    Hugging Face hub (``datasets.load_dataset(hub_id, split=split)``)."""
    if data is None:
        datasets = logs.quiet_datasets()
        try:  # a quick look first: offline, load_dataset retries for about a minute
            if not huggingface_hub.constants.HF_HUB_OFFLINE:
                huggingface_hub.HfApi().dataset_info(hub_id, timeout=10)
            ds = datasets.load_dataset(hub_id, split=split)
        except Exception as e:
            raise DataError(
                f"cannot load '{hub_id}' from the Hugging Face hub ({first_line(e)}); "
                f"offline, pass --data PATH: a file with columns "
                f"{', '.join(columns) or 'as on the hub'}, or {EVAL_LAYOUT}"
            ) from None
        rows, where = ds.to_list(), hub_id
    else:
        rows, where = [], str(data)
        for f in data_files(data):
            rows += _read_table(f)
    missing = [c for c in columns if rows and c not in rows[0]]
    if missing or not rows:
        have = ", ".join(rows[0]) if rows else "no rows"
        raise DataError(f"{where}: needs columns {', '.join(columns)} (found: {have})")
    return rows


def _read_table(path: Path) -> list[dict]:
    """.jsonl directly (quick, no cache); .json, .parquet and .csv through ``datasets``."""

    builder = next((b for suf, b in TABLE_BUILDERS.items() if path.name.endswith(suf)), None)
    if builder is None:
        raise DataError(f"{path}: unsupported file type; use {', '.join(TABLE_BUILDERS)}")
    try:
        if path.name.endswith(".jsonl"):
            with path.open(encoding="utf-8") as f:
                return [json.loads(line) for line in f if line.strip()]
        ds = logs.quiet_datasets().load_dataset(builder, data_files=str(path), split="train")
        return ds.to_list()
    except Exception as e:
        raise DataError(f"{path}: cannot read it as {builder} ({first_line(e)})") from None


def sample_rows(rows: list[dict], limit: int | None, key: str | None = None) -> list[dict]:
    """At most ``limit`` rows, chosen by a hash of each row (of its ``key`` column when given):
    the same rows every time, whatever the file order, and a smaller limit picks a subset of a
    larger one."""

    def h(row):
        return unit_hash(str(row[key]) if key else json.dumps(row, sort_keys=True, default=str))

    return sorted(rows, key=h)[:limit] if limit is not None else sorted(rows, key=h)
