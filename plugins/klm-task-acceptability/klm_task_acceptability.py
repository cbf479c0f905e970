"""Linguistic acceptability as minimal pairs: a sentence against a corrupted copy of itself.

Sentences come from a Universal Dependencies treebank (CoNLL-U; the Danish DDT by default) or
from a table in EuroEval's ScaLA columns (``text``, ``label`` = correct / incorrect). Like
ScaLA, each sentence gets one corruption: two adjacent words swapped, or one word deleted. The
kind and the place are drawn by a generator seeded with ``SEED`` and the sentence's id, so a
sentence gets the same corruption every time, whatever else is in the file.

A corruption that would likely leave the sentence grammatical is not made. Never:

- swap or delete punctuation or a symbol (that is a punctuation slip, not word order);
- swap two identical words (nothing changes), or two parts of one written word (no space
  between them, as in "5-dobbelt");
- swap two adjectives, adverbs, numbers or proper nouns (adjective and adverb order is often
  free; "Susan Mackensie" and "Mackensie Susan" are both names);
- delete an adjective, adverb, determiner or interjection (optional words: "indhentet de
  oplysninger" stands without "de");
- delete the first word when a verb follows it (verb-first Danish is a question, a command
  or a condition: "Hvad er det?" becomes "Er det?");
- delete one of two identical neighbours, or one part of a multi-word name (PROPN next to
  PROPN: "Mackensie" alone is still a name);
- touch a sentence of fewer than three words.

When the first word moves or goes, the new first word gets a capital and the old one loses
it (unless it is a proper noun), so capitals do not give the corruption away. Without UD tags
(a ScaLA table) only the rules that need no tags apply, and the first word is never touched.

Scores (every sentence scored whole, from a document start; sentences longer than the
context are scored in further windows, as ``LanguageModel.logprobs`` does):

- ``accuracy``: the share of pairs where the sentence has the higher total log-probability
  (ties count half; chance 0.5), and the same for swaps and deletions alone. A deletion makes
  the text shorter, which total log-probability rewards, so deletions are the harder half;
  ``accuracy_per_byte`` compares log-probability per UTF-8 byte instead.
- ``mcc``, the field's framing (ScaLA is a classification task): every sentence alone, the
  originals labelled correct and the corruptions incorrect (for a ScaLA table: its rows as
  labelled), is called correct when its log-probability per byte is at least the median of
  the set; the classes are balanced, so half are called correct. Chance 0.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from kennethlm_core import hookimpl
from kennethlm_core.components import Task, TaskResult
from kennethlm_core.errors import DataError
from kennethlm_core.evaluate import (
    choose,
    data_files,
    load_rows,
    mcc,
    mean_metric,
    paired_metric,
    sample_rows,
)

SEED = 0
HUB_ID = "EuroEval/scala-da"
PUNCT = {"PUNCT", "SYM"}
FREE_ORDER = {"ADJ", "ADV", "NUM", "PROPN"}  # two of these swapped: often still grammatical
OPTIONAL = {"ADJ", "ADV", "DET", "INTJ"}  # deleting one: usually still grammatical
VERBS = {"VERB", "AUX"}
WORD = re.compile(r"\w+(?:[-'’.]\w+)*|[^\w\s]")


@dataclass(frozen=True)
class Token:
    form: str
    upos: str  # "" when the source has no tags
    space_after: bool = True

    @property
    def punct(self) -> bool:
        return self.upos in PUNCT or not any(c.isalnum() for c in self.form)


@dataclass(frozen=True)
class Sentence:
    id: str
    tokens: tuple[Token, ...]

    @property
    def first_word(self) -> int:
        return next((i for i, t in enumerate(self.tokens) if not t.punct), 0)

    @property
    def text(self) -> str:
        return "".join(t.form + (" " if t.space_after else "") for t in self.tokens).strip()


# -- reading ---------------------------------------------------------------------------------


def read_conllu(path: Path) -> list[Sentence]:
    """Sentences of a CoNLL-U file: word forms, UPOS tags and SpaceAfter=No. A multi-word
    token stands for its words with its surface form; empty nodes are skipped."""
    sentences = []
    for n, block in enumerate(path.read_text(encoding="utf-8").split("\n\n")):
        sid, tokens, covered = f"{path.name}:{n}", [], 0
        for line in block.splitlines():
            if line.startswith("# sent_id"):
                sid = line.split("=", 1)[1].strip()
            if not line or line.startswith("#"):
                continue
            cols = line.split("\t")
            if len(cols) != 10:
                raise DataError(f"{path}: not CoNLL-U (a token line without 10 columns)")
            if "." in cols[0] or ("-" not in cols[0] and int(cols[0]) <= covered):
                continue
            if "-" in cols[0]:
                covered = int(cols[0].split("-")[1])
            upos = "X" if "-" in cols[0] else cols[3]
            tokens.append(Token(cols[1], upos, "SpaceAfter=No" not in cols[9]))
        if tokens:
            sentences.append(Sentence(sid, tuple(tokens)))
    return sentences


def split_words(text: str) -> tuple[Token, ...]:
    """Untagged tokens of a sentence: words (with inner hyphens and apostrophes) and single
    punctuation marks, each remembering whether a space followed it."""
    return tuple(
        Token(m.group(), "", m.end() < len(text) and text[m.end()].isspace())
        for m in WORD.finditer(text)
    )


# -- corrupting ------------------------------------------------------------------------------


def swaps(s: Sentence) -> list[int]:
    """Positions i where swapping words i and i+1 is a real corruption."""
    t, tagged = s.tokens, all(tok.upos for tok in s.tokens)
    out = []
    for i in range(len(t) - 1):
        a, b = t[i], t[i + 1]
        if not tagged and i == s.first_word:
            continue
        if a.punct or b.punct or a.form.lower() == b.form.lower() or not a.space_after:
            continue
        if a.upos == b.upos and a.upos in FREE_ORDER:
            continue
        out.append(i)
    return out


def deletions(s: Sentence) -> list[int]:
    """Positions i where deleting word i is a real corruption."""
    t, tagged = s.tokens, all(tok.upos for tok in s.tokens)
    out = []
    for i in range(len(t)):
        w = t[i]
        if w.punct or w.upos in OPTIONAL or (not tagged and i == s.first_word):
            continue
        near = [t[j] for j in (i - 1, i + 1) if 0 <= j < len(t)]
        if any(n.form.lower() == w.form.lower() for n in near):
            continue
        if w.upos == "PROPN" and any(n.upos == "PROPN" for n in near):
            continue
        if i == s.first_word and i + 1 < len(t) and t[i + 1].upos in VERBS:
            continue
        out.append(i)
    return out


def corrupt(s: Sentence, seed: int = SEED) -> tuple[str, str] | None:
    """(kind, corrupted text) for a sentence, or None when no corruption is allowed."""
    if sum(not t.punct for t in s.tokens) < 3:
        return None
    rng = random.Random(f"{seed}:{s.id}")
    kinds = ["swap", "delete"]
    rng.shuffle(kinds)
    for kind in kinds:
        places = swaps(s) if kind == "swap" else deletions(s)
        if places:
            i = rng.choice(places)
            return kind, Sentence(s.id, _apply(s.tokens, kind, i, s.first_word)).text
    return None


def _apply(t: tuple[Token, ...], kind: str, i: int, first: int) -> tuple[Token, ...]:
    t = list(t)
    if kind == "swap":  # the words trade places; the spacing stays where it was
        t[i], t[i + 1] = (
            replace(t[i + 1], space_after=t[i].space_after),
            replace(t[i], space_after=t[i + 1].space_after),
        )
    else:
        if i > 0:
            t[i - 1] = replace(t[i - 1], space_after=t[i].space_after)
        del t[i]
    if i == first:  # the first word changed: the capital stays with the sentence start
        if kind == "swap" and t[i + 1].upos != "PROPN":
            t[i + 1] = replace(t[i + 1], form=t[i + 1].form[:1].lower() + t[i + 1].form[1:])
        if i < len(t):
            t[i] = replace(t[i], form=t[i].form[:1].upper() + t[i].form[1:])
    return tuple(t)


# -- the task --------------------------------------------------------------------------------


class AcceptabilityTask(Task):
    """Minimal pairs from UD sentences: P(sentence) > P(corrupted), and MCC."""

    name = "acceptability"
    data_dir = "acceptability"
    default_limit = 500

    def measure(self, lm, *, data=None, limit=None) -> TaskResult:
        sentences, labelled, source = self._load(data)
        chosen = sample_rows([{"id": s.id, "s": s} for s in sentences], None, key="id")
        pairs = []  # (kind, sentence, corrupted)
        for row in chosen:
            made = corrupt(row["s"])
            if made is not None:
                pairs.append((made[0], row["s"].text, made[1]))
            if len(pairs) == limit:
                break
        if not pairs:
            raise DataError(f"{source}: no sentence could be corrupted (need 3+ words)")
        texts = [text for _, a, b in pairs for text in (a, b)]
        if labelled is None:  # the pairs are the classification set too
            scored, labelled = texts, [(text, i % 2 == 0) for i, text in enumerate(texts)]
        else:
            labelled = [(r["text"], r["ok"]) for r in sample_rows(labelled, 2 * limit, key="text")]
            scored = texts + [text for text, _ in labelled]
        lp = dict(zip(scored, lm.score_many([("", t) for t in scored]), strict=True))
        pair_lp = np.array([lp[t] for t in texts]).reshape(-1, 2)
        nbytes = np.array([len(t.encode("utf-8")) for t in texts]).reshape(-1, 2)
        kinds = np.array([k for k, _, _ in pairs])
        credit, _ = choose(pair_lp, [0] * len(pairs))
        credit_pb, _ = choose(pair_lp / nbytes, [0] * len(pairs))

        per_byte = np.array([lp[t] / len(t.encode("utf-8")) for t, _ in labelled])
        said_ok = per_byte >= np.median(per_byte)
        is_ok = np.array([ok for _, ok in labelled])
        metrics = {"accuracy": mean_metric(credit, 0.5)}
        for kind in ("swap", "delete"):
            if (kinds == kind).any():
                metrics[f"accuracy/{kind}"] = mean_metric(credit[kinds == kind], 0.5)
        metrics["accuracy_per_byte"] = mean_metric(credit_pb, 0.5)
        metrics["mcc"] = paired_metric(mcc, is_ok, said_ok, 0.0)
        n_swap = int((kinds == "swap").sum())
        notes = (
            f"{len(pairs)} minimal pairs ({n_swap} swaps, {len(pairs) - n_swap} deletions) "
            f"from {source}, seed {SEED}; sentences scored whole from a document start "
            f"(windows of {lm.block_size} tokens); mcc: {len(labelled)} sentences alone, "
            "called correct at or above the median log-probability per byte"
        )
        return TaskResult(metrics, n=len(pairs), notes=notes)

    def _load(self, data):
        """(sentences, labelled rows or None, where from)."""
        if data is not None:
            conllu = [
                f for f in data_files(data, (".conllu", ".jsonl", ".json", ".parquet", ".csv"))
            ]
            if all(f.name.endswith(".conllu") for f in conllu):
                return [s for f in conllu for s in read_conllu(f)], None, data
        rows = load_rows(data, HUB_ID, "test", ["text", "label"])
        labelled = []
        for r in rows:
            label = str(r["label"]).lower()
            if label not in ("correct", "incorrect"):
                raise DataError(f"acceptability label must be correct or incorrect, got {label!r}")
            labelled.append({"text": r["text"], "ok": label == "correct"})
        sentences = [Sentence(r["text"], split_words(r["text"])) for r in labelled if r["ok"]]
        return sentences, labelled, data or HUB_ID


@hookimpl
def klm_register_task(register):
    register(
        "acceptability",
        lambda cfg: AcceptabilityTask(),
        "minimal pairs from UD sentences (swap / delete a word): accuracy and MCC",
    )
