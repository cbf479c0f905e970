"""The baseline components, registered through the same hooks as any plugin."""

from kennethlm_core.builtin import corpora
from kennethlm_core.builtin.layers import (
    MLP,
    LearnedPositions,
    NaiveAttention,
    layernorm,
    no_mlp,
    no_norm,
)
from kennethlm_core.builtin.optim import adamw, constant, cosine
from kennethlm_core.builtin.tasks import BPBTask
from kennethlm_core.builtin.tokenizers import byte_tokenizer, char_tokenizer
from kennethlm_core.components import PositionalEmbedding
from kennethlm_core.hookspecs import hookimpl
from kennethlm_core.model import GPT, Bigram


@hookimpl
def klm_register_model(register):
    register("gpt", GPT, "GPT assembled from the attention, posemb, norm and mlp slots")
    register("bigram", Bigram, "next-token logits from the current token alone", uses=())


@hookimpl
def klm_register_attention(register):
    register(
        "naive",
        NaiveAttention,
        "explicit masked softmax(QK^T/sqrt(d) + bias) V",
        provides={"score_bias"},
    )


@hookimpl
def klm_register_posemb(register):
    register("learned", LearnedPositions, "a trained vector per position, added (GPT-2)")
    register("none", lambda cfg: PositionalEmbedding(), "no positional information (NoPE)")


@hookimpl
def klm_register_norm(register):
    register("layernorm", layernorm, "LayerNorm, bias when --set bias=true")
    register("none", no_norm, "identity: no normalisation")


@hookimpl
def klm_register_mlp(register):
    register(
        "gelu",
        MLP,
        "Linear, GELU, Linear (hidden = mlp_ratio * n_embd)",
        options={"mlp_ratio": 4.0},
    )
    register("none", no_mlp, "no feed-forward sublayer")


@hookimpl
def klm_register_optimizer(register):
    register("adamw", adamw, "AdamW; weight decay on matrices, none on biases and gains")


@hookimpl
def klm_register_schedule(register):
    register("cosine", cosine, "linear warmup, cosine decay to min_lr_ratio over the budget")
    register("constant", constant, "linear warmup, then constant")


@hookimpl
def klm_register_tokenizer(register):
    register("char", char_tokenizer, "characters seen in training, UTF-8 byte fallback")
    register("byte", byte_tokenizer, "UTF-8 bytes, 256 tokens + document token")


@hookimpl
def klm_register_corpus(register):
    register(
        "path", corpora.path_corpus, "local .jsonl/.jsonl.gz/.parquet/.txt file, folder or glob"
    )
    register("sample", corpora.sample_corpus, "embedded Danish sample, 5 domains, ~72 KB")
    hub = {"hub_max_bytes": 0, "hub_sources": "", "hub_path": ""}
    register("dagw", corpora.dagw, "Danish Gigaword, HF hub, a domain per row", options=hub)
    register(
        "dynaword",
        corpora.dynaword,
        "Danish Dynaword, HF hub, sources mapped to domains",
        options=hub,
    )
    columns = {"text_column": "text", "domain_column": ""}
    register(
        "hf",
        corpora.hf,
        "any HF hub dataset with a text column: --corpus hf:OWNER/NAME[:CONFIG]",
        options={k: v for k, v in hub.items() if k != "hub_sources"} | columns,
    )


@hookimpl
def klm_register_task(register):
    register("bpb", lambda cfg: BPBTask(), "bits per byte on validation text, per domain")
