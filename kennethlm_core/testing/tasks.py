"""The kit for tasks: a task evaluated on a tiny untrained run, saved as ``klm run`` saves one."""

from __future__ import annotations

import json
import math

import torch

from kennethlm_core.atomic import atomic_write_json
from kennethlm_core.checkpoint import save_weights
from kennethlm_core.components import Metric, TaskResult
from kennethlm_core.evaluate import LoadedRun
from kennethlm_core.model import build_model
from kennethlm_core.testing.base import SEED, Conformance


class TaskChecks(Conformance):
    """``factory(cfg) -> components.Task``, evaluated on a tiny untrained run."""

    slot = "task"
    data: str | None = None  # passed to evaluate(data=...)
    limit: int | None = 8  # passed to evaluate(limit=...)

    def loaded_run(self, directory):
        cfg = self.config(tokenizer="char")
        tok = self.reg.get("tokenizer", cfg.tokenizer).factory(cfg)
        tok.train(self.sample_texts())
        tok.save(directory / "tokenizer")
        torch.manual_seed(SEED)
        save_weights(build_model(cfg, tok.vocab_size, self.reg), directory / "model.safetensors")
        atomic_write_json(directory / "config.json", cfg.to_dict())
        return LoadedRun(directory, device="cpu", registry=self.reg)

    def evaluate(self, lm) -> TaskResult:
        task = self.component.factory(lm.config)
        return task.evaluate(lm, data=self.data, limit=self.limit)

    def test_result_of_finite_metrics(self, tmp_path):
        result = self.evaluate(self.loaded_run(tmp_path))
        assert isinstance(result, TaskResult), f"{self.what}: evaluate must return a TaskResult"
        assert result.metrics, f"{self.what} reports no metrics"
        for key, m in result.metrics.items():
            assert isinstance(m, Metric) and math.isfinite(m.value), (
                f"{self.what}: metric {key} is {m!r}, not a finite Metric"
            )
            assert m.ci is None or m.ci[0] <= m.ci[1], f"{self.what}: {key} interval reversed"
        json.dumps(result.to_json())  # eval.json must be able to hold it

    def test_deterministic(self, tmp_path):
        lm = self.loaded_run(tmp_path)
        assert self.evaluate(lm).to_json() == self.evaluate(lm).to_json(), (
            f"{self.what}: two evaluations of the same run differ"
        )
