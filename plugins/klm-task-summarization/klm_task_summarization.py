"""Summarization: write a short summary of a Danish news article.

The prompt is the article's beginning and a cue:

    <article, cut to its first part>
    Resumé:

News puts the essentials first (the lead), so a long article is cut from the *right*,
keeping its start, at a word, to at most half the context; the other half is left for the
summary, so the first ``block_size // 2`` summary tokens see the whole prompt.

- ``chrf++``: the model's greedy summary (at most ``SUMMARY_TOKENS`` tokens, up to the end
  of the line) against the reference, corpus-level chrF++ (sacrebleu, character 6-grams
  and word bigrams). Its chance level is the chrF++ of a fluent but unrelated summary: each
  reference scored against the reference of the next article.
- ``bpb``: bits per UTF-8 byte of the reference summary after the prompt (the number that
  moves for small models); long summaries are scored in further windows, each token seeing
  at most ``block_size`` tokens before it. Chance 8 (every byte equally likely).
"""

from __future__ import annotations

import math

import numpy as np
from sacrebleu.metrics import CHRF

from kennethlm_core import hookimpl
from kennethlm_core.components import Metric, Task, TaskResult
from kennethlm_core.evaluate import load_rows, sample_rows
from kennethlm_core.metric import bootstrap_ratio, bootstrap_stat

HUB_ID = "EuroEval/nordjylland-news-mini"
COLUMNS = ["text", "target_text"]
SUMMARY_TOKENS = 128
CUE = "\nResumé:"


def prompt_of(lm, article: str) -> str:
    room = lm.block_size // 2 - 1 - lm.n_tokens(CUE)
    return lm.fit(article.strip(), room, keep="start") + CUE


def chrf_metric(hyps: list[str], refs: list[str]) -> Metric:
    """Corpus chrF++ with an interval from resampling articles; chance: shifted references."""
    chrf = CHRF(word_order=2)
    stats = np.array(chrf._extract_corpus_statistics(hyps, [refs]))

    def score(idx):
        return chrf._compute_score_from_stats(stats[idx].sum(0).tolist()).score

    chance = chrf.corpus_score(refs[1:] + refs[:1], [refs]).score if len(refs) > 1 else None
    n = len(hyps)
    return Metric(score(np.arange(n)), bootstrap_stat(score, n, iters=300), chance, n=n)


class SummarizationTask(Task):
    name = "summarization"
    data_dir = "summarization"
    default_limit = 20

    def measure(self, lm, *, data=None, limit=None) -> TaskResult:
        rows = load_rows(data, HUB_ID, "test", COLUMNS)
        rows = sample_rows(rows, limit, key="id" if "id" in rows[0] else "text")
        prompts = [prompt_of(lm, r["text"]) for r in rows]
        refs = [" ".join(r["target_text"].split()) for r in rows]
        nats = lm.score_many([(p, " " + ref) for p, ref in zip(prompts, refs, strict=True)])
        bits = -np.array(nats) / math.log(2)
        nbytes = np.array([len((" " + ref).encode("utf-8")) for ref in refs], dtype=np.float64)
        hyps = [lm.generate(p, SUMMARY_TOKENS, stop="\n").strip() for p in prompts]
        metrics = {
            "chrf++": chrf_metric(hyps, refs),
            "bpb": Metric(
                float(bits.sum() / nbytes.sum()),
                bootstrap_ratio(bits, nbytes),
                chance=8.0,
                higher_is_better=False,
            ),
        }
        lead = np.mean([len(p) - len(CUE) for p in prompts])
        notes = (
            f"{len(rows)} articles, each cut to its first {lead:.0f} characters on average "
            f"(half of the {lm.block_size}-token context); greedy summaries of at most "
            f"{SUMMARY_TOKENS} tokens"
        )
        return TaskResult(metrics, n=len(rows), notes=notes, extra={"example": hyps[0]})


@hookimpl
def klm_register_task(register):
    register(
        "summarization",
        lambda cfg: SummarizationTask(),
        "news summaries: chrF++ of greedy summaries, BPB of the reference",
    )
