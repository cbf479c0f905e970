"""Reading comprehension: answer a question about a Danish text with a span of it.

The prompt is

    Tekst: <context or part of it>
    Spørgsmål: <question>
    Svar: <answer>

Two scores, both from that prompt:

- ``rank_accuracy``: the gold answer against other spans of the text with as many words
  (up to ``N_CANDIDATES`` in all, drawn with a seeded generator, each at most twice as many
  tokens as the gold answer and at most half the context unless the gold is longer),
  ranked by log-likelihood after the prompt; ties count 1/k.
  Chance is the mean of 1/candidates. Raw log-likelihood favours frequent words, and gold
  answers are often rare ones (names, numbers), so ``rank_accuracy_pmi`` ranks by how much
  the question raises each span's log-likelihood: the score after the prompt minus the score
  after the same prompt without the question (pointwise mutual information, as in Holtzman
  et al., 2021). This is the number that moves for small models.
- ``f1`` and ``exact_match``: greedy generation (up to the end of the line, and at most as
  many tokens as the longest candidate may have) scored SQuAD-style against every gold
  answer: lower case, no punctuation, no articles (en, et, den, det, de), no extra spaces;
  F1 over words. Their chance level is what
  answering with a random candidate span would score.

Fitting the context. The prompt and the longest candidate must fit in ``block_size`` tokens,
so every answer token sees the whole prompt. In order of preference:

1. *open book*: the whole text and the whole question fit;
2. *window*: the question (cut from the left to at most half the room) and a window of the
   text holding the gold answer, at a position drawn by the seeded generator; the
   distractors come from the same window, so being in the window says nothing about which
   span is right. Used when the window is at least four times the answer;
3. *closed book*: only the question (cut from the left) fits; the distractors come from the
   whole text. A 64-token character model is here: it is judged on whether the question
   makes the right span more likely (a number after "Hvor mange", a name after "Hvem").

The notes give how many examples were scored in each way. Rows whose answer is not in their
text are skipped (a machine-translated set such as XQuAD-da has many) and counted.
"""

from __future__ import annotations

import random
import string
from collections import Counter

import numpy as np

from kennethlm_core import hookimpl
from kennethlm_core.components import Task, TaskResult
from kennethlm_core.errors import DataError
from kennethlm_core.evaluate import choose, load_rows, mean_metric, sample_rows

HUB_ID = "EuroEval/scandiqa-da-mini"
COLUMNS = ["context", "question", "answers"]
SEED = 0
N_CANDIDATES = 10
ARTICLES = {"en", "et", "den", "det", "de"}


def normalize(text: str) -> list[str]:
    text = "".join(c for c in text.lower() if c not in string.punctuation + "«»“”„–—")
    return [w for w in text.split() if w not in ARTICLES]


def f1(pred: str, gold: str) -> float:
    p, g = normalize(pred), normalize(gold)
    same = sum((Counter(p) & Counter(g)).values())
    if not p or not g:
        return float(p == g)
    return 0.0 if same == 0 else 2 * same / (len(p) + len(g))


def exact(pred: str, gold: str) -> float:
    return float(normalize(pred) == normalize(gold))


def spans(text: str, n_words: int) -> list[str]:
    """Every run of ``n_words`` words in ``text``, punctuation at the edges stripped."""
    words = text.split()
    out = (" ".join(words[i : i + n_words]) for i in range(len(words) - n_words + 1))
    return list(dict.fromkeys(s.strip(string.punctuation + "«»“”") for s in out))


def prompt_of(excerpt: str | None, question: str) -> str:
    head = f"Tekst: {excerpt}\n" if excerpt is not None else ""
    return f"{head}Spørgsmål: {question}\nSvar:"


def fit_example(lm, context: str, question: str, gold: str, at: int, room: int, rng):
    """(prompt, text the distractors come from, way): the prompt fits in ``room`` tokens.
    ``at`` is where the gold answer starts in the context."""
    full = prompt_of(context, question)
    if lm.n_tokens(full) <= room:
        return full, context, "open book"
    q = lm.fit(question, room // 2 - lm.n_tokens(prompt_of(None, "")))
    left = room - lm.n_tokens(prompt_of("", q))
    if left >= 4 * lm.n_tokens(gold):
        width = len(lm.fit(context[at:], left, keep="start"))  # characters a window holds
        a = rng.randint(max(0, at + len(gold) - width), at)
        a = context.rfind(" ", 0, a) + 1  # start at a word
        for start in (a, at):
            excerpt = lm.fit(context[start:], left, keep="start")
            if gold in excerpt:
                return prompt_of(excerpt, q), excerpt, "window"
    q = lm.fit(question, room - lm.n_tokens(prompt_of(None, "")))
    return prompt_of(None, q), context, "closed book"


def best(metric, answer: str, golds: list[str]) -> float:
    return max(metric(answer, g) for g in golds)


class ReadingComprehensionTask(Task):
    name = "reading-comprehension"
    data_dir = "qa"
    default_limit = 100

    def measure(self, lm, *, data=None, limit=None) -> TaskResult:
        rows = load_rows(data, HUB_ID, "test", COLUMNS)
        rows = sample_rows(rows, None, key="id" if "id" in rows[0] else "question")
        usable = [r for r in rows if any(a and a in r["context"] for a in r["answers"]["text"])]
        if not usable:
            raise DataError("reading comprehension: no row has its answer in its context")
        examples, caps, ways = [], [], Counter()  # (prompt, candidates, gold first; golds)
        for r in usable[:limit]:
            prompt, cands, golds, cap, way = self._example(lm, r)
            examples.append((prompt, cands, golds))
            caps.append(cap)
            ways[way] += 1
        # each candidate after the prompt, and after the prompt without its question
        pairs = []
        for prompt, cands, _ in examples:
            free = prompt[: prompt.rindex("Spørgsmål: ")] + prompt_of(None, "")
            pairs += [(q, " " + c) for q in (prompt, free) for c in cands]
        flat = iter(lm.score_many(pairs))
        scores, gains = [], []
        for _, cands, _ in examples:
            asked, unasked = ([next(flat) for _ in cands] for _ in range(2))
            scores.append(asked)
            gains.append(np.subtract(asked, unasked))
        credit, _ = choose(scores, [0] * len(examples))
        credit_pmi, _ = choose(gains, [0] * len(examples))
        answers = [
            lm.generate(p, cap, stop="\n").strip()
            for (p, _, _), cap in zip(examples, caps, strict=True)
        ]

        def by_chance(metric):  # answering with a random candidate span
            return float(
                np.mean([np.mean([best(metric, c, g) for c in cs]) for _, cs, g in examples])
            )

        golds = [g for _, _, g in examples]
        n_cands = np.array([len(cands) for _, cands, _ in examples])
        metrics = {
            "rank_accuracy": mean_metric(credit, float(np.mean(1 / n_cands))),
            "rank_accuracy_pmi": mean_metric(credit_pmi, float(np.mean(1 / n_cands))),
            "f1": mean_metric(
                [best(f1, a, g) for a, g in zip(answers, golds, strict=True)], by_chance(f1)
            ),
            "exact_match": mean_metric(
                [best(exact, a, g) for a, g in zip(answers, golds, strict=True)], by_chance(exact)
            ),
        }
        how = ", ".join(f"{n} {way}" for way, n in ways.most_common())
        notes = (
            f"{len(examples)} questions ({how}) in a {lm.block_size}-token context "
            f"({len(rows) - len(usable)} of {len(rows)} skipped: answer not in the text); "
            f"gold answer against up to {N_CANDIDATES - 1} spans of the text; "
            "greedy answers up to twice the gold's tokens"
        )
        return TaskResult(metrics, n=len(examples), notes=notes)

    def _example(self, lm, r):
        """(prompt, candidates with the gold answer first, gold answers, longest answer in
        tokens, how the prompt was fitted)."""
        golds = [a for a in r["answers"]["text"] if a.strip()]
        gold = next(a for a in golds if a in r["context"])
        starts = [s for s in r["answers"].get("answer_start") or [] if s >= 0]
        at = next((s for s in starts if r["context"][s:].startswith(gold)), None)
        at = r["context"].index(gold) if at is None else at
        rng = random.Random(f"{SEED}:{r.get('id', r['question'])}")
        g = lm.n_tokens(" " + gold)
        cap = min(2 * g, max(g, (lm.block_size - 1) // 2))  # the longest candidate, in tokens
        room = lm.block_size - 1 - cap
        prompt, source, way = fit_example(lm, r["context"], r["question"], gold, at, room, rng)
        known = {tuple(normalize(g)) for g in golds}
        others = [
            s
            for s in spans(source, len(gold.split()))
            if tuple(normalize(s)) not in known and lm.n_tokens(" " + s) <= cap
        ]
        cands = [gold, *rng.sample(others, min(len(others), N_CANDIDATES - 1))]
        return prompt, cands, golds, cap, way


@hookimpl
def klm_register_task(register):
    register(
        "reading-comprehension",
        lambda cfg: ReadingComprehensionTask(),
        "answer spans: gold vs. other spans by log-likelihood; greedy answers, F1/EM",
    )
