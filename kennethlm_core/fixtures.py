"""Fixture language models with known answers, for testing evaluation tasks.

They implement ``evaluate.LanguageModel`` over UTF-8 bytes, with scores given by a Python
function of text instead of a network, so a task's test can say what a perfect model and a
model without preferences must score:

    oracle = ScriptedModel(judge=lambda context, continuation: 0.0 if right(...) else -10.0)
    indifferent = ScriptedModel()              # every continuation equally likely: chance
    uniform = ScriptedModel(judge=per_byte)    # every next byte equally likely
"""

from __future__ import annotations

import math
from collections.abc import Callable

from kennethlm_core.builtin.tokenizers import ByteTokenizer
from kennethlm_core.evaluate import LanguageModel, answer_text


def per_byte(context: str, continuation: str) -> float:
    """log P under a model that finds all 256 bytes equally likely at every position."""
    return -len(continuation.encode("utf-8")) * math.log(256)


class ScriptedModel(LanguageModel):
    """``judge(context, continuation) -> log-probability`` scores; ``writer(prompt) -> text``
    generates. ``context`` is the text after the document token, uncut: the fixture sees what
    the task asked for, whatever the block size. Every request is recorded in ``seen``."""

    def __init__(
        self,
        judge: Callable[[str, str], float] = lambda context, continuation: 0.0,
        writer: Callable[[str], str] = lambda prompt: "",
        block_size: int = 64,
    ):
        self.judge, self.writer = judge, writer
        self.tokenizer = ByteTokenizer()
        self.block_size = block_size
        self.seen: list[tuple[str, str]] = []

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids)

    def logprobs(self, requests):
        out = []
        for ids, start in requests:
            context, continuation = self.decode(ids[:start]), self.decode(ids[start:])
            self.seen.append((context, continuation))
            out.append(float(self.judge(context, continuation)))
        return out

    def generate(self, prompt: str, max_new_tokens: int = 100, stop: str | None = None) -> str:
        return answer_text(self.writer(prompt)[:max_new_tokens], stop)[0]
