from torch import nn

from kennethlm_core import hookimpl
from kennethlm_core.model import init_weights, lm_loss


class Starter(nn.Module):
    """A bigram model through an n_embd bottleneck: no context beyond the current token."""

    def __init__(self, cfg, vocab_size, parts):
        super().__init__()
        self.block_size = cfg.block_size
        self.embed = nn.Embedding(vocab_size, cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, vocab_size, bias=False)
        self.apply(init_weights)

    def forward(self, idx, targets=None):
        logits = self.head(self.embed(idx))  # (B, T, vocab)
        return logits, lm_loss(logits, targets)


@hookimpl
def klm_register_model(register):
    register(
        "$name",
        Starter,
        "$summary",
        uses=(),  # the slots whose components it builds from `parts`: none
    )
