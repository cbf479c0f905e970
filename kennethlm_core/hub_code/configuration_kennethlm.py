"""The configuration of a KennethLM model exported for Hugging Face ``transformers``.

Written into the model folder by ``klm export``; loaded with ``trust_remote_code=True``.
``klm_config`` is the run's own config.json (every setting, plugin options included), and
``klm_distributions`` the Python distributions that build the network, with the versions
the run was trained with; ``klm_counted`` the shape and dtype of each buffer of a part trained
by counting (an n-gram model's counts), whose size the configuration does not fix.
"""

from transformers import PretrainedConfig


class KennethLMConfig(PretrainedConfig):
    model_type = "kennethlm"

    def __init__(
        self,
        klm_config=None,
        klm_distributions=None,
        klm_counted=None,
        vocab_size=257,
        tie_word_embeddings=True,
        **kwargs,
    ):
        self.klm_config = dict(klm_config or {})
        self.klm_distributions = dict(klm_distributions or {})
        self.klm_counted = dict(klm_counted or {})
        self.vocab_size = vocab_size
        # the usual names, for tools that read them
        self.max_position_embeddings = self.klm_config.get("block_size", 64)
        self.hidden_size = self.klm_config.get("n_embd", 128)
        self.num_hidden_layers = self.klm_config.get("n_layer", 4)
        self.num_attention_heads = self.klm_config.get("n_head", 4)
        kwargs.setdefault("use_cache", False)  # the network has no key/value cache
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
