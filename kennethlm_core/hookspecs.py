"""The whole contract between KennethLM and its plugins.

A plugin is a module with functions marked ``@hookimpl``, listed under the ``kennethlm``
entry-point group of its distribution. For each slot there is one hook; the host calls it
with a ``register`` function bound to that slot:

    @hookimpl
    def klm_register_attention(register):
        register("flash", make_flash, summary="torch scaled_dot_product_attention",
                 provides={"score_bias"})

``register(name, factory, summary="", *, provides=(), requires=None, options=None, **extra)``

- ``factory`` builds the component; its signature depends on the slot (see components.py).
- ``provides``: features other components may need (an attention that takes a score bias
  provides ``"score_bias"``).
- ``requires``: ``{slot: features}`` this component needs from the component chosen in another
  slot (ALiBi requires ``{"attention": {"score_bias"}}``). Impossible pairs are refused
  before training.
- ``options``: settings the component reads from the run config, with defaults
  (``{"window": 64}``); users change them with ``--set window=32``.
- any other keyword is kept as a capability the core may read (e.g. ``uses`` on a model).
"""

import pluggy

PROJECT = "kennethlm"
SLOTS = (
    "model",
    "attention",
    "posemb",
    "norm",
    "mlp",
    "optimizer",
    "schedule",
    "tokenizer",
    "corpus",
    "task",
    "tweak",
    "callback",
)

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def klm_register_model(register):
    """Register models: ``factory(cfg, vocab_size, parts) -> nn.Module``.

    The module's ``forward(idx, targets=None)`` returns ``(logits, loss)``; ``parts`` builds the
    attention, posemb, norm and mlp components chosen for the run.
    """


@hookspec
def klm_register_attention(register):
    """Register attention kernels: ``factory(cfg) -> nn.Module``.

    Called as ``module(q, k, v, bias=None)`` with q, k, v of shape (B, H, T, D) and an optional
    additive score bias broadcastable to (B, H, T, T); returns (B, H, T, D). Must be causal.
    Declare ``provides={"score_bias"}`` when a bias is supported.
    """


@hookspec
def klm_register_posemb(register):
    """Register positional embeddings: ``factory(cfg) -> components.PositionalEmbedding``."""


@hookspec
def klm_register_norm(register):
    """Register normalisation layers: ``factory(cfg, dim) -> nn.Module``."""


@hookspec
def klm_register_mlp(register):
    """Register feed-forward blocks: ``factory(cfg) -> nn.Module`` mapping n_embd to n_embd.

    Name the output projection ``c_proj`` to get the scaled residual initialisation.
    """


@hookspec
def klm_register_optimizer(register):
    """Register optimizers: ``factory(cfg, model) -> torch.optim.Optimizer``.

    Each step the trainer sets every param group's lr to the lr it was built with times the
    schedule's multiplier, so a group may have its own base rate.
    """


@hookspec
def klm_register_schedule(register):
    """Register learning-rate schedules: ``factory(cfg) -> f(step, progress) -> multiplier``.

    ``progress`` runs from 0 to 1 over the run's budget (steps, tokens or time).
    """


@hookspec
def klm_register_tokenizer(register):
    """Register tokenizers: ``factory(cfg) -> components.Tokenizer``."""


@hookspec
def klm_register_corpus(register):
    """Register corpora: ``factory(cfg) -> components.Corpus``."""


@hookspec
def klm_register_task(register):
    """Register evaluation tasks: ``factory(cfg) -> components.Task``."""


@hookspec
def klm_register_tweak(register):
    """Register model tweaks: ``factory(model, cfg) -> None`` changes a built model in place.

    A run lists its tweaks with ``--tweak NAME`` (repeatable; in a recipe or ``--set``:
    ``tweak = "qk-norm,softcap"``). ``build_model`` builds the model as usual, weights
    initialised, then calls each tweak in the order given, before the optimizer sees the
    parameters; a checkpoint is loaded into a model built and tweaked the same way. A tweak
    works through the GPT's seams:

    - named parameters to re-initialise or replace (``blocks.N.attn.c_proj.weight``,
      ``blocks.N.mlp.c_proj.weight``; ``lm_head.weight``, tied to ``wte.weight`` until a tweak
      gives the head a parameter of its own);
    - ``block.attn.qk_transform``: a module ``(q, k) -> (q, k)`` on (B, H, T, D), applied
      before the posemb rotates them (QK-norm);
    - ``model.token_input``: a module ``(idx, x) -> x`` on the token embeddings (B, T, C),
      before positions and dropout (a hashed bigram embedding);
    - ``model.block_input``: the block wiring, a module ``(i, x, xs) -> x`` giving block i its
      input, where ``x`` is the stream so far and ``xs`` the list of the embedded input
      followed by the outputs of blocks 0 .. i-1, so ``x is xs[-1]`` (per-layer residual
      scalars, U-net skips);
    - ``model.value_input``: a module ``(i, idx) -> (B, T, C) or None``, added to the values of
      block i's attention before they are split into heads (value embeddings);
    - ``model.logits_transform``: a module ``logits -> logits`` (soft-capping);
    - ``model.output_mix``: a module ``(idx, logits) -> logits`` after it, mixing another
      model's next-token distribution into the GPT's (an n-gram model). A part trained by
      counting rather than by gradients subclasses ``components.Counted``: a new run counts
      the training split into it before the first step.

    Every seam is None in a plain GPT, which is then unchanged. A seam holds one tweak:
    declare the seams a tweak sets (``register(..., seams={"block_input"})``) and a run that
    lists two tweaks holding one seam is refused before training. ``model.hold_seam`` sets a
    seam, refusing a model without it or a seam already held. A tweak that does not
    find the seam it needs (a bigram model has none) raises ``errors.ConfigError``. It must be
    deterministic given the torch seed, and may declare ``options`` like any component.
    """


@hookspec
def klm_register_callback(register):
    """Register training-loop callbacks: ``factory(cfg) -> components.Callback``.

    A run lists its callbacks with ``--callback NAME`` (repeatable; in a recipe or ``--set``:
    ``callback = "ema"``). The trainer calls each, in the order given, at the points that
    ``components.Callback`` lists: after each step, around evaluations and the final scoring,
    after each logged row and at the end; what a callback returns from ``state_dict`` is kept
    in the checkpoint. An exponential moving average of the weights (evaluated in their place)
    or a logger for an experiment tracker is a callback; a change to the training itself is not.
    """


@hookspec
def klm_register_commands(cli):
    """Add commands to the ``klm`` click group (``cli.add_command(...)``)."""
