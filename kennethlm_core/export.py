"""Export a run as a Hugging Face model folder (``klm export RUN --to DIR``).

The folder loads with ``transformers`` alone, ``AutoModelForCausalLM.from_pretrained(DIR)``
and ``AutoTokenizer.from_pretrained(DIR)``, and computes what ``klm`` computes:

- a GPT built from the baseline components (naive or flash attention, learned positions,
  LayerNorm, the GELU MLP, tied embeddings, no tweak) becomes a stock ``GPT2LMHeadModel``:
  the same network, its weights renamed and the linear layers transposed (GPT-2's Conv1D
  keeps its weights as (in, out)); a run without biases gets zero biases;
- any other model becomes remote code: ``configuration_kennethlm.py`` and
  ``modeling_kennethlm.py`` (kennethlm_core/hub_code) are copied into DIR, and ``config.json``
  carries the run's configuration, the plugin distributions (and versions) that build the
  network, and an ``auto_map``; loading needs ``trust_remote_code=True`` and those
  distributions installed;
- the tokenizer becomes a ``PreTrainedTokenizerFast`` (tokenizer.json) that gives klm's ids:
  bpe and unigram are already ``tokenizers`` JSON; byte is a ByteLevel model of 256 tokens in
  byte order; char is a BPE without merges whose unknown characters fall back to byte tokens
  (``<0xC3>``), which is exactly klm's char tokenizer. (Decoding differs only for fallback
  bytes that are not UTF-8: transformers gives a U+FFFD for each byte of such a run.) The
  document token
  ``<|doc|>`` is the beginning-of-sequence token (``tokenizer(text)`` starts with it, as klm's
  documents and ``klm sample`` do), the end of a generation and the padding;
- README.md is the model card (modelcard.py): recipe, components, parameters, data, val and
  test bits per byte. Its YAML marks the folder as an export (``klm_export``), so ``--force``
  replaces an earlier export and nothing else (the checks of publish.py, shared with ``klm
  data export``).

Before anything is written the exported model is checked against the run: its logits on a
probe text (to 1e-4) and the tokenizer's ids on Danish text with æøå, emoji and tabs.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from kennethlm_core import logs, provenance
from kennethlm_core.builtin.tokenizers import ByteTokenizer, CharTokenizer
from kennethlm_core.components import Counted, HFTokenizer
from kennethlm_core.config import selected_components
from kennethlm_core.errors import CheckpointError, KLMError
from kennethlm_core.evaluate import LoadedRun
from kennethlm_core.hub_code.configuration_kennethlm import KennethLMConfig
from kennethlm_core.hub_code.modeling_kennethlm import KennethLMForCausalLM
from kennethlm_core.modelcard import model_card
from kennethlm_core.publish import _replace as replace_folder
from kennethlm_core.publish import check_out, upload

DOC = "<|doc|>"  # the document token's text in the exported tokenizer (HFTokenizer.DOC)
STOCK = {"model": {"gpt"}, "attention": {"naive", "flash"}, "posemb": {"learned"}}
STOCK |= {"norm": {"layernorm"}, "mlp": {"gelu"}}
TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
WRITTEN = {"README.md", "config.json", "generation_config.json", "model.safetensors"}
WRITTEN |= TOKENIZER_FILES | {"configuration_kennethlm.py", "modeling_kennethlm.py"}
PROBE = "Hej Åse! Æbler og øl koster 12,50 kr.\tSå er det 🙂 sagt.\n<|doc|> «Tak» – René"


@dataclass
class ModelExport:
    """What ``export_run`` wrote."""

    out: Path
    kind: str  # "gpt2" (stock transformers) or "remote code"
    files: list[str]
    params: int
    bytes: int  # on disk, every file
    max_logit_diff: float  # against the run's own model, on PROBE
    why_remote: list[str]  # the non-stock parts ("posemb rope"), empty for gpt2


def foreign(folder: Path) -> list[str]:
    """What in ``folder`` a model export does not write (the ``--force`` check)."""
    return sorted(p.name for p in folder.iterdir() if p.name not in WRITTEN or not p.is_file())


def check_run(run: Path) -> None:
    """Refuse a folder that is not a finished run before anything is loaded."""
    if not run.is_dir():
        raise CheckpointError(f"{run} is not a folder; give a run folder made by klm run")
    for name, what in (("config.json", "configuration"), ("model.safetensors", "weights")):
        if not (run / name).is_file():
            raise CheckpointError(
                f"{run} is not a complete run: it has no {name} (its {what}); export a run "
                "that has finished, or finish this one with klm run --resume"
            )
    if not (run / "tokenizer" / "tokenizer.json").is_file():
        raise CheckpointError(f"{run} is not a complete run: it has no tokenizer/tokenizer.json")


def not_stock(cfg: Any) -> list[str]:
    """The parts of the run that a stock GPT-2 does not have ("posemb rope", "tweak qk-norm")."""
    parts = [
        f"{slot} {getattr(cfg, slot)}" for slot in STOCK if getattr(cfg, slot) not in STOCK[slot]
    ]
    parts += [f"tweak {name}" for name in cfg.tweak.split(",") if name.strip()]
    if not cfg.residual:
        parts.append("residual false")
    return parts


def export_run(
    run: str | Path,
    out: str | Path,
    *,
    force: bool = False,
    registry: Any = None,
    log: Any = lambda message: None,
) -> ModelExport:
    """Write the run folder ``run`` as a Hugging Face model folder ``out`` (see the module)."""
    logs.quiet("transformers")
    run, out = Path(run), Path(out)
    check_out(out, force, flag="--to", command="klm export", foreign=foreign)
    check_run(run)
    lm = LoadedRun(run, device="cpu", registry=registry)
    lm.model.float()
    why = not_stock(lm.config)
    hf = gpt2_model(lm) if not why else remote_model(lm, run)
    if why:
        log(f"exporting as remote code (trust_remote_code=True): {', '.join(why)}")
    hf.eval()
    diff = max_logit_diff(lm, hf)
    if not diff <= 1e-4:
        raise KLMError(f"the exported model's logits differ from the run's by {diff:.2g}")
    tokenizer = hf_tokenizer(lm.tokenizer, lm.block_size)
    check_tokenizer(tokenizer, lm.tokenizer)

    out = out.absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    transformers.utils.logging.disable_progress_bar()  # "Writing model shards" for one file
    try:
        hf.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        saved = json.loads((tmp / "tokenizer_config.json").read_text(encoding="utf-8"))
        saved["tokenizer_class"] = "PreTrainedTokenizerFast"  # (transformers 5 writes its alias)
        (tmp / "tokenizer_config.json").write_text(json.dumps(saved, indent=2) + "\n")
        kind = "remote code" if why else "gpt2"
        card = model_card(run, lm, kind, why, hf.config, diff)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        check_out(out, force, flag="--to", command="klm export", foreign=foreign)  # again
        replace_folder(out, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        transformers.utils.logging.enable_progress_bar()
    files = sorted(p.name for p in out.iterdir())
    size = sum(p.stat().st_size for p in out.iterdir())
    params = sum(p.numel() for p in lm.model.parameters())
    return ModelExport(out, kind, files, params, size, diff, why)


# -- the model -------------------------------------------------------------------------------


def gpt2_model(lm: Any) -> Any:
    """The run's GPT as a stock GPT2LMHeadModel with the same weights."""
    cfg, gpt = lm.config, lm.model
    doc = lm.tokenizer.doc_id
    config = GPT2Config(
        vocab_size=lm.tokenizer.vocab_size,
        n_positions=cfg.block_size,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_inner=gpt.blocks[0].mlp.c_fc.out_features,
        activation_function="gelu",  # nn.GELU(): the exact erf form, not GPT-2's tanh one
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        layer_norm_epsilon=gpt.ln_f.eps,
        bos_token_id=doc,
        eos_token_id=doc,
        pad_token_id=doc,
        tie_word_embeddings=True,
    )
    model = GPT2LMHeadModel(config)
    ours = gpt.state_dict()

    def linear(name: str) -> dict[str, torch.Tensor]:  # nn.Linear (out, in) -> Conv1D (in, out)
        w = ours[f"{name}.weight"]
        b = ours.get(f"{name}.bias", torch.zeros(w.shape[0]))
        return {"weight": w.t().contiguous(), "bias": b}

    def norm(name: str) -> dict[str, torch.Tensor]:
        w = ours[f"{name}.weight"]
        return {"weight": w, "bias": ours.get(f"{name}.bias", torch.zeros_like(w))}

    state = {"transformer.wte.weight": ours["wte.weight"]}
    state["transformer.wpe.weight"] = ours["posemb.wpe.weight"]
    for i in range(cfg.n_layer):
        parts = {
            "ln_1": norm(f"blocks.{i}.ln_1"),
            "attn.c_attn": linear(f"blocks.{i}.attn.c_attn"),
            "attn.c_proj": linear(f"blocks.{i}.attn.c_proj"),
            "ln_2": norm(f"blocks.{i}.ln_2"),
            "mlp.c_fc": linear(f"blocks.{i}.mlp.c_fc"),
            "mlp.c_proj": linear(f"blocks.{i}.mlp.c_proj"),
        }
        for part, tensors in parts.items():
            for kind, t in tensors.items():
                state[f"transformer.h.{i}.{part}.{kind}"] = t
    state |= {f"transformer.ln_f.{k}": t for k, t in norm("ln_f").items()}
    expected = {k for k in model.state_dict() if k != "lm_head.weight"}
    missing, extra = expected - set(state), set(state) - expected
    if missing or extra:  # a GPT-2 of another transformers version: say so, never guess
        raise KLMError(
            f"GPT-2 of this transformers version has other weights (missing {sorted(missing)[:3]},"
            f" unexpected {sorted(extra)[:3]}); update kennethlm_core/export.py"
        )
    model.load_state_dict(state, strict=False)
    model.tie_weights()
    return model


def distributions(run: Path, lm: Any) -> dict[str, str]:
    """The distributions whose code builds the run's network, with the versions the run used
    (provenance.json; for a run made before it existed, those installed now)."""
    chosen = selected_components(lm.config, lm.registry)
    building = [c for key, c in chosen.items() if key in STOCK or key.startswith("tweak ")]
    recorded = ((provenance.load(run) or {}).get("code") or {}).get("plugins") or {}
    needed = {"kennethlm": provenance._version("kennethlm")}
    for comp in building:
        if comp.distribution != "kennethlm":
            needed[comp.distribution] = recorded.get(comp.distribution, {}).get(
                "version", comp.version
            )
    return needed


def remote_model(lm: Any, run: Path) -> Any:
    """The run's model wrapped as KennethLMForCausalLM, whose code goes with it."""
    doc = lm.tokenizer.doc_id
    head = getattr(lm.model, "lm_head", None)
    tied = head is not None and head.weight is getattr(lm.model, "wte", head).weight
    config = KennethLMConfig(
        klm_config=lm.config.to_dict(),
        klm_distributions=distributions(run, lm),
        klm_counted=counted_shapes(lm.model),
        vocab_size=lm.tokenizer.vocab_size,
        tie_word_embeddings=tied,
        bos_token_id=doc,
        eos_token_id=doc,
        pad_token_id=doc,
    )
    KennethLMConfig.register_for_auto_class()
    KennethLMForCausalLM.register_for_auto_class("AutoModelForCausalLM")
    torch.manual_seed(0)
    model = KennethLMForCausalLM(config)
    model.model.load_state_dict(lm.model.state_dict())
    return model


def counted_shapes(model: Any) -> dict[str, tuple[list[int], str]]:
    """Name -> (shape, dtype) of each saved buffer of a part trained by counting
    (components.Counted), which the configuration alone does not size."""
    shapes = {}
    for prefix, part in model.named_modules():
        if isinstance(part, Counted):
            for name, t in part.named_buffers(recurse=False):
                if name not in part._non_persistent_buffers_set:
                    shapes[f"{prefix}.{name}"] = (
                        list(t.shape),
                        str(t.dtype).removeprefix("torch."),
                    )
    return shapes


@torch.no_grad()
def max_logit_diff(lm: Any, hf: Any) -> float:
    ids = [lm.tokenizer.doc_id, *lm.encode(PROBE * 4)][: lm.block_size]
    x = torch.tensor([ids])
    ours, _ = lm.model(x)
    return float((hf(input_ids=x).logits - ours).abs().max())


# -- the tokenizer ---------------------------------------------------------------------------


def hf_tokenizer(tok: Any, block_size: int) -> Any:
    """klm's tokenizer as a PreTrainedTokenizerFast with the same ids."""
    if isinstance(tok, HFTokenizer):
        lib = Tokenizer.from_str(tok.to_json())
    elif isinstance(tok, ByteTokenizer):  # each byte one token, in byte order
        alphabet = sorted(pre_tokenizers.ByteLevel.alphabet(), key=byte_of)
        lib = Tokenizer(models.BPE(vocab={c: byte_of(c) for c in alphabet}, merges=[]))
        lib.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        lib.decoder = decoders.ByteLevel()  # the bytes decoded at once, as klm does
        lib.add_special_tokens([DOC])
    elif isinstance(tok, CharTokenizer):
        vocab = {c: i for i, c in enumerate(tok.chars)}
        vocab |= {f"<0x{b:02X}>": len(tok.chars) + b for b in range(256)}
        vocab[DOC] = len(tok.chars) + 256
        lib = Tokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True))
        lib.add_special_tokens([DOC])
        lib.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    else:
        raise KLMError(
            f"tokenizer '{tok.name}' has no Hugging Face form in klm export (char, byte and "
            "tokenizers built on components.HFTokenizer do)"
        )
    doc = lib.token_to_id(DOC)
    if doc != tok.doc_id:
        raise KLMError(f"the exported tokenizer puts {DOC} at {doc}, klm at {tok.doc_id}")
    lib.post_processor = processors.TemplateProcessing(
        single=f"{DOC} $A", pair=f"{DOC} $A {DOC} $B", special_tokens=[(DOC, doc)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=lib,
        bos_token=DOC,
        eos_token=DOC,
        pad_token=DOC,
        split_special_tokens=True,  # the text "<|doc|>" is spelled, as klm does
        clean_up_tokenization_spaces=False,  # decoding gives the text back exactly
        model_max_length=block_size,
    )


def byte_of(char: str) -> int:
    """The byte that the ByteLevel alphabet's ``char`` stands for (GPT-2's printable
    stand-ins: bytes that print as themselves, the others moved up from U+0100)."""
    code = ord(char)
    if code >= 256:
        return sorted(set(range(256)) - set(PRINTABLE))[code - 256]
    return code


PRINTABLE = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]


def check_tokenizer(hf: Any, tok: Any) -> None:
    for text in (PROBE, PROBE[::-1], "  dobbelt  mellemrum\r\n"):
        ids = hf(text, add_special_tokens=False, verbose=False)["input_ids"]
        if ids != tok.encode(text) or hf.decode(ids) != text:
            raise KLMError(f"the exported tokenizer does not give klm's ids for {text!r}")


def push(out: Path, repo: str) -> str:
    """Upload the model folder ``out`` to the hub model repository ``repo``."""
    later = f"the model folder {out} is written; push it later with: hf upload {repo} {out} ."
    upload(out, repo, repo_type="model", message=f"klm export: {out.name}", later=later)
    return f"https://huggingface.co/{repo}"
