"""The two tokenizers that need no training library: bytes, and characters with byte fallback."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from kennethlm_core.components import Tokenizer
from kennethlm_core.errors import ConfigError


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes are the tokens: ids 0-255; id 256 marks a document start."""

    name = "byte"

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    @property
    def vocab_size(self) -> int:
        return 257

    @property
    def doc_id(self) -> int:
        return 256

    def to_json(self) -> str:
        return json.dumps({"type": "byte"})

    def restore(self, state: str) -> None:
        if json.loads(state).get("type") != "byte":
            raise ValueError("not a byte tokenizer")


class CharTokenizer(Tokenizer):
    """One token per character seen in training; anything else falls back to its UTF-8 bytes.

    Ids: the characters (0..n-1, in code-point order), then 256 byte tokens, then the document
    token. Every text round-trips exactly, and unseen characters still cost their real bits.
    ``vocab_size`` (if set) caps the total; the rarest characters are left to the bytes.
    """

    name = "char"

    def __init__(self, vocab_size: int = 0):
        if vocab_size and vocab_size <= 257:
            raise ConfigError(
                f"char vocab_size must exceed 257 (256 byte tokens + document token), "
                f"got {vocab_size}; use 0 for every character seen"
            )
        self.max_vocab = vocab_size
        self._set_chars([])

    def _set_chars(self, chars: list[str]) -> None:
        self.chars = sorted(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        codes = np.array([ord(c) for c in self.chars], dtype=np.int64)
        self._lut = np.full(max(codes.max(initial=0) + 1, 128), -1, dtype=np.int64)
        self._lut[codes] = np.arange(len(codes))

    def train(self, texts: Iterable[str]) -> None:
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(text)
        keep = len(counts)
        if self.max_vocab:
            keep = min(keep, self.max_vocab - 257)
        self._set_chars(
            [c for c, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))][:keep]
        )

    def encode(self, text: str) -> list[int]:
        codes = np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype=np.uint32)
        ids = np.where(codes < len(self._lut), self._lut[np.minimum(codes, len(self._lut) - 1)], -1)
        if (ids >= 0).all():
            return ids.tolist()
        out: list[int] = []  # slow path: spell unknown characters in bytes
        base = len(self.chars)
        for ch, i in zip(text, ids.tolist(), strict=True):
            if i >= 0:
                out.append(i)
            else:
                out.extend(base + b for b in ch.encode("utf-8", errors="surrogatepass"))
        return out

    def decode(self, ids: Sequence[int]) -> str:
        n = len(self.chars)
        buf = bytearray()
        for i in ids:
            if i < n:
                buf += self.chars[i].encode("utf-8")
            elif i < n + 256:
                buf.append(i - n)
        return buf.decode("utf-8", errors="replace")

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + 257

    @property
    def doc_id(self) -> int:
        return len(self.chars) + 256

    def to_json(self) -> str:
        return json.dumps({"type": "char", "chars": "".join(self.chars)}, ensure_ascii=False)

    def restore(self, state: str) -> None:
        data = json.loads(state)
        if data.get("type") != "char" or not isinstance(data.get("chars"), str):
            raise ValueError("not a char tokenizer")
        self._set_chars(list(data["chars"]))


def byte_tokenizer(cfg) -> ByteTokenizer:
    if cfg.vocab_size not in (0, 257):
        raise ConfigError(f"the byte tokenizer has 257 tokens; drop --vocab-size {cfg.vocab_size}")
    return ByteTokenizer()


def char_tokenizer(cfg) -> CharTokenizer:
    return CharTokenizer(cfg.vocab_size)
