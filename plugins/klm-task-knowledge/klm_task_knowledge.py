"""Knowledge: multiple-choice questions about Denmark (citizenship tests), by log-likelihood.

Each option is scored as the continuation of

    Spørgsmål: <question>
    Svar: <option>

and the likeliest option is the model's answer (ties count 1/k). The prompt and the longest
option must fit the context: the question is cut from the left (keeping its end) when they
do not. The options are not listed in the prompt: a base model is scored on the answer text
itself, as in cloze-style evaluation, which also spares a small context the room a list
would take.

- ``accuracy`` and ``mcc``: by total log-likelihood (MCC over the chosen option's position,
  the way EuroEval scores its lettered options);
- ``accuracy_norm`` and ``mcc_norm``: by log-likelihood per UTF-8 byte of the option, so long
  options are not penalised for their length;
- ``accuracy_pmi``: by how much the question raises each option's log-likelihood (the score
  after the prompt minus the score after "Spørgsmål: \\nSvar:"), which removes the model's
  prior for the option's words. Chance for accuracies is the mean of 1/options.

Rows have ``question``, ``options`` and ``answer_index``; EuroEval's own layout (``text`` with
lettered options on lines "a. ...", and ``label`` a letter) is read too.
"""

from __future__ import annotations

import re

import numpy as np

from kennethlm_core import hookimpl
from kennethlm_core.components import Task, TaskResult
from kennethlm_core.errors import DataError
from kennethlm_core.evaluate import choose, load_rows, mcc, mean_metric, paired_metric, sample_rows

HUB_ID = "EuroEval/danish-citizen-tests-updated"
OPTION = re.compile(r"^\s*([a-h])[.)]\s+(.*\S)\s*$")


def prompt_of(question: str) -> str:
    return f"Spørgsmål: {question}\nSvar:"


def parse(row: dict) -> tuple[str, list[str], int]:
    """(question, options, index of the right one) from either layout."""
    if "options" in row:
        return row["question"], list(row["options"]), int(row["answer_index"])
    lines = str(row["text"]).splitlines()
    opts = [(m.group(1), m.group(2)) for m in map(OPTION.match, lines) if m]
    first = next(i for i, line in enumerate(lines) if OPTION.match(line)) if opts else 0
    question = " ".join(line for line in lines[:first] if line.strip() and not line.endswith(":"))
    letters = [letter for letter, _ in opts]
    if not opts or str(row["label"]).strip().lower() not in letters:
        raise DataError(f"knowledge: cannot read options and answer from {row['text'][:60]!r}")
    return question, [o for _, o in opts], letters.index(str(row["label"]).strip().lower())


class KnowledgeTask(Task):
    name = "knowledge"
    data_dir = "knowledge"
    default_limit = 300

    def measure(self, lm, *, data=None, limit=None) -> TaskResult:
        rows = load_rows(data, HUB_ID, "test", [])
        key = "id" if "id" in rows[0] else ("question" if "question" in rows[0] else "text")
        items = [parse(r) for r in sample_rows(rows, limit, key=key)]
        prompts = []
        for question, options, _ in items:
            room = lm.block_size - 1 - max(lm.n_tokens(" " + o) for o in options)
            prompts.append(prompt_of(lm.fit(question, room - lm.n_tokens(prompt_of("")))))
        free = prompt_of("")
        pairs = [(p, " " + o) for p, (_, opts, _) in zip(prompts, items, strict=True) for o in opts]
        pairs += [(free, " " + o) for _, opts, _ in items for o in opts]
        flat = np.array(lm.score_many(pairs))
        raw, prior = np.split(flat, 2)
        nbytes = np.array([len((" " + o).encode("utf-8")) for _, opts, _ in items for o in opts])
        cuts = np.cumsum([len(opts) for _, opts, _ in items])[:-1]
        gold = [g for _, _, g in items]

        def pick(scores):
            return choose(np.split(scores, cuts), gold)

        (acc, pred), (acc_n, pred_n), (acc_p, _) = pick(raw), pick(raw / nbytes), pick(raw - prior)
        chance = float(np.mean([1 / len(opts) for _, opts, _ in items]))
        metrics = {
            "accuracy": mean_metric(acc, chance),
            "accuracy_norm": mean_metric(acc_n, chance),
            "accuracy_pmi": mean_metric(acc_p, chance),
            "mcc": paired_metric(mcc, gold, pred, 0.0),
            "mcc_norm": paired_metric(mcc, gold, pred_n, 0.0),
        }
        cut = sum(p != prompt_of(q) for p, (q, _, _) in zip(prompts, items, strict=True))
        notes = (
            f"{len(items)} questions with {len(pairs) // 2} options; options scored after "
            f"the question ({cut} questions cut from the left to fit {lm.block_size} tokens)"
        )
        return TaskResult(metrics, n=len(items), notes=notes)


@hookimpl
def klm_register_task(register):
    register(
        "knowledge",
        lambda cfg: KnowledgeTask(),
        "multiple choice by log-likelihood (raw, per byte, PMI): accuracy and MCC",
    )
