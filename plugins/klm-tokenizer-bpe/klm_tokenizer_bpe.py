"""Byte-level BPE (GPT-2's tokenizer family), trained with the Hugging Face tokenizers library.

Training starts from the 256 bytes and repeatedly merges the most frequent adjacent pair into a
new token until the vocabulary has ``--vocab-size`` tokens. Encoding replays the merges, so a
frequent Danish word is one token and a rare one is spelled in pieces, down to single bytes.
"""

from tokenizers import models, trainers

from kennethlm_core import hookimpl
from kennethlm_core.components import HFTokenizer


class BPETokenizer(HFTokenizer):
    name = "bpe"

    def model(self):
        return models.BPE()

    def trainer(self, **settings):
        return trainers.BpeTrainer(**settings)


@hookimpl
def klm_register_tokenizer(register):
    register(
        "bpe",
        lambda cfg: BPETokenizer(cfg.vocab_size),
        "byte-level BPE (tokenizers library), --vocab-size tokens, default 4096",
    )
