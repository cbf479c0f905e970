"""The built-in task: bits per byte of a split or of any text (``klm eval RUN --task bpb``)."""

from __future__ import annotations

from typing import Any

from kennethlm_core.components import Metric, TaskResult
from kennethlm_core.config import resolve
from kennethlm_core.data import SPLITS, prepare_data, prepare_text
from kennethlm_core.errors import ConfigError, DataError
from kennethlm_core.metric import bits_per_byte, bootstrap_ratio


class BPBTask:
    """Bits per byte, overall and per domain, of one of three texts:

    - a split of the run's own corpus (``split``: validation, the default, or test), or of
      another corpus (``corpus``: its split of that name);
    - or all of the text at ``data`` (a file, folder or glob, an exported split, or a corpus
      name such as dagw), every document whole, in file order.

    ``limit`` is in bytes: the first chunks holding at least that much text (default: the
    run's ``final_eval_bytes`` of a split, all of ``data``). ``stride`` overrides the run's
    ``eval_stride`` (``stride = block_size`` gives non-overlapping windows).
    """

    name = "bpb"

    def __init__(self, split: str = "validation", corpus: str | None = None, stride: int = 0):
        self.split, self.corpus, self.stride = split, corpus, stride

    def evaluate(self, lm: Any, *, data: str | None = None, limit: int | None = None):
        if self.split not in SPLITS[1:]:
            raise ConfigError(f"unknown split '{self.split}'; score validation or test")
        if data is not None and self.corpus is not None:
            raise ConfigError("give --data (all of its text) or --corpus (its split), not both")
        cfg = lm.config
        if data is not None:
            text = prepare_text(data, cfg, lm.registry, lm.tokenizer)
            what = f"of all the text at {data}"
        else:
            if self.corpus is not None:
                cfg = resolve(cfg.replace(corpus=self.corpus), lm.registry)
            text = prepare_data(cfg, lm.registry, tokenizer=lm.tokenizer).split(self.split)
            limit = limit or cfg.final_eval_bytes
            what = f"of the {self.split} split of {cfg.corpus}"
        if text.n_bytes == 0:
            raise DataError(f"{data or cfg.corpus}: no text to score")
        part = text.head(limit, every_domain=data is None) if limit else text
        res = bits_per_byte(
            lm.model,
            part,
            lm.block_size,
            lm.tokenizer.doc_id,
            lm.device,
            autocast=lm.autocast,
            stride=self.stride or lm.config.eval_stride,
        )
        metrics = {"bpb": Metric(res.bpb, res.ci(), chance=8.0, higher_is_better=False)}
        for name, value in res.by_domain.items():
            sel = res.doc_domain == part.domains.index(name)
            ci = bootstrap_ratio(res.doc_bits[sel], res.doc_bytes[sel])
            metrics[f"bpb/{name}"] = Metric(
                value, ci, chance=8.0, higher_is_better=False, n=int(sel.sum())
            )
        notes = f"{part.n_bytes:,} bytes {what}, {len(res.doc_bytes):,} documents"
        return TaskResult(metrics, n=len(res.doc_bytes), notes=notes)
