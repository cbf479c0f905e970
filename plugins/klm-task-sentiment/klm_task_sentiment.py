"""Sentiment: is a Danish text positive, neutral or negative?

EuroEval's approach for base models: a few-shot prompt ending in the label cue, and the three
Danish label words (positiv, neutral, negativ) scored by log-likelihood; the likeliest is the
prediction. The prompt is

    Her er tekster og deres stemning: positiv, neutral eller negativ.

    Tekst: <example>
    Stemning: <label word>

    ...
    Tekst: <the text>
    Stemning: <label word scored here>

It must fit the context with the longest label word after it. The text to classify is kept
first (cut from the left, keeping its end, when even it alone is too long); then examples, one
per label in a fixed order and up to ``N_SHOTS``, are added in front while they fit; then the
header. A model with a 64-token context therefore sees the end of the text and no examples
(the notes say how many examples the prompts held on average).

Without examples a small model's label choice is mostly its prior for each word, so the task
also scores every label after a content-free prompt (the same prompt with an empty text) and
subtracts that, as in "calibrate before use" (Zhao et al., 2021). Metrics:

- ``mcc`` and ``macro_f1``: the field's numbers, from the raw label log-likelihoods;
- ``mcc_calibrated``: from the calibrated ones;
- ``p_gold``: the probability the calibrated scores give the gold label (a softmax over the
  three), averaged; chance 1/3. It moves before any prediction flips.

Shots come from the ``train`` split on the hub, or for local files from the rows not
evaluated (chosen by a hash of the text).
"""

from __future__ import annotations

import numpy as np

from kennethlm_core import hookimpl
from kennethlm_core.components import Task, TaskResult
from kennethlm_core.errors import DataError
from kennethlm_core.evaluate import (
    choose,
    load_rows,
    macro_f1,
    mcc,
    mean_metric,
    paired_metric,
    sample_rows,
)

HUB_ID = "EuroEval/angry-tweets-mini"
LABELS = ("positive", "neutral", "negative")
WORDS = ("positiv", "neutral", "negativ")  # the Danish label words, in LABELS order
N_SHOTS = 6
POOL = 30  # rows of a local file set aside as examples
COLUMNS = ["text", "label"]
HEADER = "Her er tekster og deres stemning: positiv, neutral eller negativ.\n\n"


def label_index(label) -> int:
    """positive/neutral/negative (or the Danish words), any case -> 0, 1, 2."""
    text = str(label).strip().lower()
    for i, names in enumerate(zip(LABELS, WORDS, strict=True)):
        if text in names:
            return i
    raise DataError(f"sentiment label must be one of {', '.join(LABELS)}, got {label!r}")


def example(text: str, label: int | None = None) -> str:
    return f"Tekst: {text}\nStemning:" + (f" {WORDS[label]}\n\n" if label is not None else "")


def build_prompt(lm, text: str, shots: list[tuple[str, int]]) -> tuple[str, int]:
    """(prompt, examples used): the text first, then examples and header while they fit."""
    budget = lm.block_size - 1 - max(lm.n_tokens(" " + w) for w in WORDS)
    prompt = example(text)
    if lm.n_tokens(prompt) > budget:
        prompt = example(lm.fit(text, budget - lm.n_tokens(example(""))))
    used = 0
    for shot in reversed(shots):
        longer = example(*shot) + prompt
        if lm.n_tokens(HEADER + longer) > budget and lm.n_tokens(longer) > budget:
            break
        prompt, used = longer, used + 1
    if lm.n_tokens(HEADER + prompt) <= budget:
        prompt = HEADER + prompt
    return prompt, used


class SentimentTask(Task):
    name = "sentiment"
    data_dir = "sentiment"
    default_limit = 300

    def measure(self, lm, *, data=None, limit=None) -> TaskResult:
        rows, shots = self._load(data, limit)
        gold = np.array([label_index(r["label"]) for r in rows])
        prompts, n_used = zip(*(build_prompt(lm, r["text"], shots) for r in rows), strict=True)
        # the content-free prompt of each: its text left empty (many are the same)
        free = [p[: p.rindex("Tekst: ")] + example("") for p in prompts]
        distinct = sorted(set(free))
        pairs = [(p, " " + w) for p in list(prompts) + distinct for w in WORDS]
        scores = np.array(lm.score_many(pairs)).reshape(-1, len(WORDS))
        raw, prior = scores[: len(rows)], dict(zip(distinct, scores[len(rows) :], strict=True))
        calibrated = raw - np.array([prior[f] for f in free])

        _, pred = choose(raw, gold)
        _, pred_cal = choose(calibrated, gold)
        p = np.exp(calibrated - calibrated.max(1, keepdims=True))
        p_gold = (p / p.sum(1, keepdims=True))[np.arange(len(rows)), gold]
        share = np.bincount(gold, minlength=3) / len(gold)
        f1_chance = float(np.mean(2 * share / 3 / (share + 1 / 3)))  # guessing uniformly
        metrics = {
            "mcc": paired_metric(mcc, gold, pred, 0.0),
            "macro_f1": paired_metric(lambda g, q: macro_f1(g, q, range(3)), gold, pred, f1_chance),
            "mcc_calibrated": paired_metric(mcc, gold, pred_cal, 0.0),
            "p_gold": mean_metric(p_gold, 1 / 3),
        }
        counts = ", ".join(
            f"{n} {label}" for n, label in zip(np.bincount(gold, minlength=3), LABELS, strict=True)
        )
        notes = (
            f"{len(rows)} texts ({counts}); label words {'/'.join(WORDS)} by log-likelihood; "
            f"{np.mean(n_used):.1f} of {len(shots)} examples fit the {lm.block_size}-token "
            "context on average (texts cut from the left to fit)"
        )
        return TaskResult(metrics, n=len(rows), notes=notes)

    def _load(self, data, limit):
        """(rows to evaluate, examples for the prompt: a label at a time, in turn)."""
        rows = sample_rows(load_rows(data, HUB_ID, "test", COLUMNS), None, key="text")
        if data is None:
            pool = sample_rows(load_rows(None, HUB_ID, "train", COLUMNS), None, key="text")
        else:  # the last rows in hash order give the examples and are not evaluated
            k = min(POOL, len(rows) // 2)
            pool, rows = rows[len(rows) - k :], rows[: len(rows) - k]
        queues = [[r["text"] for r in pool if label_index(r["label"]) == i] for i in range(3)]
        shots = [(queues[k % 3].pop(0), k % 3) for k in range(N_SHOTS) if queues[k % 3]]
        return rows[:limit], shots


@hookimpl
def klm_register_task(register):
    register(
        "sentiment",
        lambda cfg: SentimentTask(),
        "positive/neutral/negative by label-word log-likelihood: MCC, macro-F1",
    )
