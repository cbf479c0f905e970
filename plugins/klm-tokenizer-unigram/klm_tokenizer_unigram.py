"""Unigram language-model tokenizer (SentencePiece's algorithm), over bytes.

Training starts from many candidate pieces and prunes, with EM, those whose removal costs the
least likelihood, until ``--vocab-size`` remain. Encoding picks the most probable split of each
word into pieces (Viterbi), so unlike BPE the same word may split at morpheme-like places. The
ByteLevel pre-tokenizer (see components.HFTokenizer) keeps every byte in the vocabulary: any
text round-trips and nothing is unknown.
"""

import json

from tokenizers import models, trainers

from kennethlm_core import hookimpl
from kennethlm_core.components import HFTokenizer


class UnigramTokenizer(HFTokenizer):
    name = "unigram"

    def model(self):
        return models.Unigram()

    def trainer(self, **settings):
        return trainers.UnigramTrainer(**settings)

    def train(self, texts):
        super().train(texts)
        vocab = json.loads(self.lib.to_str())["model"]["vocab"]
        self.lib.model = models.Unigram(canonical(vocab), None, False)
        self._ready()


def canonical(vocab: list) -> list[tuple[str, float]]:
    """The trained pieces in an order that does not depend on hashing, so training is repeatable.

    The trainer scores characters it has to add (bytes the pruned model lost) as
    min + k * 1e-4, with k in hash-set order, and sorts ties in hash-map order. Here those
    characters get their scores in character order, scores are rounded to 1e-6, and pieces are
    sorted by score, then text. The document token stays first.
    """
    special, pieces = vocab[0], [(p, round(s, 6)) for p, s in vocab[1:]]
    low = min(s for _, s in pieces)

    def added(s: float) -> bool:
        k = (s - low) / 1e-4
        return abs(k - round(k)) < 1e-2

    band = sorted(p for p, s in pieces if len(p) == 1 and added(s))
    in_band = set(band)
    values = sorted((s for p, s in pieces if p in in_band), reverse=True)
    scores = dict(zip(band, values, strict=True))
    pieces = [(p, scores.get(p, s)) for p, s in pieces]
    pieces.sort(key=lambda ps: (-ps[1], ps[0]))
    return [tuple(special), *pieces]


@hookimpl
def klm_register_tokenizer(register):
    register(
        "unigram",
        lambda cfg: UnigramTokenizer(cfg.vocab_size),
        "byte-level Unigram LM (tokenizers library), --vocab-size tokens, default 4096",
    )
