import json

from kennethlm_core import hookimpl
from kennethlm_core.components import Tokenizer
from kennethlm_core.errors import ConfigError


class Starter(Tokenizer):
    """Ids 0-255 are bytes; 256 starts a document. Nothing to learn, every text round-trips."""

    name = "$name"

    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids):
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    @property
    def vocab_size(self):
        return 257

    @property
    def doc_id(self):
        return 256

    def to_json(self):
        return json.dumps({"type": "$name"})

    def restore(self, state):
        if json.loads(state).get("type") != "$name":
            raise ValueError("not a $name tokenizer")


def make(cfg):
    if cfg.vocab_size not in (0, 257):
        raise ConfigError(f"this tokenizer has 257 tokens, not {cfg.vocab_size}; drop --vocab-size")
    return Starter()


@hookimpl
def klm_register_tokenizer(register):
    register(
        "$name",
        make,
        "$summary",
    )
