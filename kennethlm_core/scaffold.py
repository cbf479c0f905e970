"""`klm new-plugin NAME --slot SLOT`: a new plugin package that works from the first minute.

The package installs, registers a real (small) component for its slot, and its tests run the
conformance kit on it. Change the component into your idea; the tests keep you honest.

    plugins/klm-<slot>-<name>/
      pyproject.toml            the distribution, with its entry point in the `kennethlm` group
      klm_<slot>_<name>.py      the component and the hook that registers it
      tests/test_<name>.py      the conformance kit for the slot (add tests of your own here)
      README.md                 what it is and how to try it
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

from kennethlm_core.errors import ConfigError
from kennethlm_core.hookspecs import SLOTS

NAME = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")
MAX_NAME = 20

PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "$dist"
version = "0.1.0"
description = "KennethLM $slot '$name': $summary"
readme = "README.md"
requires-python = ">=3.11"
dependencies = ["kennethlm"]

[project.entry-points.kennethlm]
$slot-$name = "$module"

[tool.setuptools]
py-modules = ["$module"]
"""

DOCSTRING = '''\
"""$Summary.

KennethLM $slot '$name', made by `klm new-plugin`.
"""

'''

TESTS = '''\
"""The conformance kit checks $slot '$name' like every $slot.

Add tests of your own below: numbers against a reference, the property your idea is about,
the errors it raises.
"""

from kennethlm_core.testing import conformance

Test$Class = conformance("$slot", "$name")
'''

README = """\
# $dist

$Summary: the $slot '$name' for KennethLM, made by `klm new-plugin`.

Describe your idea here: what it changes, where it comes from (paper, post), what you measured.

```bash
.venv/bin/pip install --no-build-isolation -e plugins/$dist
.venv/bin/pytest plugins/$dist
klm list-plugins --slot $slot
$usage
```

`make test` installs every package under `plugins/` and runs its tests with the others.
"""


@dataclass(frozen=True)
class Starter:
    """What a new package of one slot starts with."""

    summary: str  # one line, also the component's summary in `klm list-plugins`
    module: str  # the component and its register hook
    usage: str  # how to try it, for the README


COMPARE = 'klm compare --baseline record --candidate "--$slot $name" --seeds 5 --steps 600'
MODULES: dict[str, Starter] = {}

MODULES["attention"] = Starter(
    "causal softmax attention, written out",
    '''\
import math

import torch
import torch.nn.functional as F
from torch import nn

from kennethlm_core import hookimpl


class $Class(nn.Module):
    """softmax(q k^T / sqrt(d) + bias) v with a causal mask: q, k, v are (B, H, T, D)."""

    def __init__(self, cfg):
        super().__init__()
        self.dropout = nn.Dropout(cfg.dropout)
        future = torch.ones(cfg.block_size, cfg.block_size, dtype=torch.bool).triu(1)
        self.register_buffer("future", future, persistent=False)  # cached, never saved

    def forward(self, q, k, v, bias=None):
        T = q.size(-2)
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, H, T, T)
        if bias is not None:  # e.g. ALiBi's distance penalty
            scores = scores + bias
        scores = scores.masked_fill(self.future[:T, :T], float("-inf"))
        return self.dropout(F.softmax(scores, dim=-1)) @ v


@hookimpl
def klm_register_attention(register):
    register(
        "$name",
        $Class,
        "$summary",
        provides={"score_bias"},  # it takes a score bias (ALiBi needs that)
    )
''',
    "klm run --attention $name\n" + COMPARE,
)

MODULES["posemb"] = Starter(
    "a learned offset per position, added to every channel",
    '''\
import torch
from torch import nn

from kennethlm_core import hookimpl
from kennethlm_core.components import PositionalEmbedding


class $Class(PositionalEmbedding):
    """A position can enter in three places; this one uses the first.

    embed(x)             add to the token embeddings (B, T, C)
    rotate(q, k)         transform queries and keys (B, H, T, D) in every block
    score_bias(T, dev)   an additive attention-score bias, broadcastable to (B, H, T, T)
    """

    def __init__(self, cfg):
        super().__init__()
        self.offset = nn.Parameter(torch.zeros(cfg.block_size, 1))

    def embed(self, x):
        return x + self.offset[: x.size(1)]


@hookimpl
def klm_register_posemb(register):
    register(
        "$name",
        $Class,
        "$summary",
    )
''',
    "klm run --posemb $name\n" + COMPARE,
)

MODULES["norm"] = Starter(
    "RMSNorm: scale to unit root-mean-square, then a learned gain",
    """\
import torch
from torch import nn

from kennethlm_core import hookimpl


class $Class(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):  # (B, T, dim), each position on its own
        return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps) * self.weight


def make(cfg, dim):
    return $Class(dim)


@hookimpl
def klm_register_norm(register):
    register(
        "$name",
        make,
        "$summary",
    )
""",
    "klm run --norm $name\n" + COMPARE,
)

MODULES["mlp"] = Starter(
    "Linear, ReLU, Linear, hidden width set by an option",
    """\
from torch import nn

from kennethlm_core import hookimpl
from kennethlm_core.errors import ConfigError


class $Class(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        hidden = int(cfg.get("${ident}_ratio") * cfg.n_embd)
        if hidden < 1:
            ratio = cfg.get("${ident}_ratio")
            raise ConfigError(f"${ident}_ratio {ratio} leaves no hidden units; try 4")
        self.c_fc = nn.Linear(cfg.n_embd, hidden, bias=cfg.bias)
        self.relu = nn.ReLU()
        self.c_proj = nn.Linear(hidden, cfg.n_embd, bias=cfg.bias)  # scaled init by this name
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):  # (B, T, n_embd) -> (B, T, n_embd)
        return self.dropout(self.c_proj(self.relu(self.c_fc(x))))


@hookimpl
def klm_register_mlp(register):
    register(
        "$name",
        $Class,
        "$summary",
        # a setting of its own, with its default: --set ${ident}_ratio=2
        options={"${ident}_ratio": 4.0},
    )
""",
    "klm run --mlp $name\n" + COMPARE,
)

MODULES["model"] = Starter(
    "next-token logits from the current token through a narrow embedding",
    '''\
from torch import nn

from kennethlm_core import hookimpl
from kennethlm_core.model import init_weights, lm_loss


class $Class(nn.Module):
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
        $Class,
        "$summary",
        uses=(),  # the slots whose components it builds from `parts`: none
    )
''',
    "klm run --model $name\n" + COMPARE,
)

MODULES["optimizer"] = Starter(
    "Adam without weight decay",
    '''\
import torch

from kennethlm_core import hookimpl


def make(cfg, model):
    """The trainer sets each group's lr to the lr it was built with x the schedule's multiplier."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


@hookimpl
def klm_register_optimizer(register):
    register(
        "$name",
        make,
        "$summary",
    )
''',
    "klm run --optimizer $name\n" + COMPARE,
)

MODULES["schedule"] = Starter(
    "linear warmup, then linear decay to min_lr_ratio",
    """\
from kennethlm_core import hookimpl


def make(cfg):
    floor = cfg.min_lr_ratio

    def multiplier(step, progress):  # progress runs from 0 to 1 over the budget
        warmup = min(1.0, (step + 1) / (cfg.warmup_steps + 1))
        return min(warmup, 1.0 - (1.0 - floor) * min(1.0, progress))

    return multiplier


@hookimpl
def klm_register_schedule(register):
    register(
        "$name",
        make,
        "$summary",
    )
""",
    "klm run --schedule $name\n" + COMPARE,
)

MODULES["tokenizer"] = Starter(
    "UTF-8 bytes as tokens, plus a document token",
    '''\
import json

from kennethlm_core import hookimpl
from kennethlm_core.components import Tokenizer
from kennethlm_core.errors import ConfigError


class $Class(Tokenizer):
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
    return $Class()


@hookimpl
def klm_register_tokenizer(register):
    register(
        "$name",
        make,
        "$summary",
    )
''',
    "klm run --tokenizer $name\n" + COMPARE,
)

MODULES["corpus"] = Starter(
    "Danish counting exercises, generated: a corpus that needs no files",
    '''\
import random

from kennethlm_core import hookimpl
from kennethlm_core.components import Corpus, Document

NUMBERS = (
    "nul en to tre fire fem seks syv otte ni ti elleve tolv tretten fjorten femten seksten "
    "sytten atten nitten tyve"
).split()


class $Class(Corpus):
    """Each document counts in Danish from a random number; two domains, up and down."""

    name = "$name"

    def __init__(self, n_docs):
        self.n_docs = n_docs

    def documents(self):
        rng = random.Random(0)  # the same documents every time
        for i in range(self.n_docs):
            start = rng.randrange(len(NUMBERS))
            up = i % 2 == 0
            words = NUMBERS[start:] if up else NUMBERS[start::-1]
            text = "Vi tæller: " + ", ".join(words) + ".\\n"
            domain = "op" if up else "ned"
            yield Document(f"$name-{i}", text, domain)

    def fingerprint(self):
        return f"$name-v1-{self.n_docs}"


def make(cfg):
    return $Class(cfg.get("${ident}_docs"))


@hookimpl
def klm_register_corpus(register):
    register(
        "$name",
        make,
        "$summary",
        # a setting of its own, with its default: --set ${ident}_docs=500
        options={"${ident}_docs": 2000},
    )
''',
    "klm run --corpus $name",
)

MODULES["task"] = Starter(
    "bits per byte of a few built-in Danish sentences",
    """\
import math

from kennethlm_core import hookimpl
from kennethlm_core.components import Metric, Task, TaskResult

SENTENCES = (
    "Det regner i København, og cyklerne holder for rødt.",
    "Bageren på hjørnet sælger rugbrød og wienerbrød hver morgen.",
    "Færgen til Ærø sejler to gange om dagen.",
    "Hun læste avisen, mens kaffen blev kold.",
)


class $Class(Task):
    name = "$name"

    def evaluate(self, lm, *, data=None, limit=None):
        sentences = SENTENCES[:limit] if limit else SENTENCES
        bits = [-lm.score("", s) / math.log(2) for s in sentences]  # score() is in nats
        nbytes = sum(len(s.encode("utf-8")) for s in sentences)
        metrics = {"bpb": Metric(sum(bits) / nbytes, chance=None, higher_is_better=False)}
        return TaskResult(metrics, n=len(sentences), notes="built-in sentences")


@hookimpl
def klm_register_task(register):
    register(
        "$name",
        lambda cfg: $Class(),
        "$summary",
    )
""",
    "klm eval RUN --task $name",
)


MODULES["tweak"] = Starter(
    "a learned temperature that scales the logits, starting at 1",
    """\
import torch
from torch import nn

from kennethlm_core import hookimpl
from kennethlm_core.errors import ConfigError


class $Class(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, logits):
        return logits * self.scale


def apply(model, cfg):
    if not hasattr(model, "logits_transform"):
        raise ConfigError("this tweak needs a model with a logits_transform seam (a GPT)")
    model.logits_transform = $Class()


@hookimpl
def klm_register_tweak(register):
    register(
        "$name",
        apply,
        "$summary",
    )
""",
    "klm run --tweak $name\n" + COMPARE.replace("--$slot $name", "--tweak $name"),
)

MODULES["callback"] = Starter(
    "counts the training steps and logs the count at each evaluation",
    """\
import torch

from kennethlm_core import hookimpl
from kennethlm_core.components import Callback


class $Class(Callback):
    def __init__(self):
        self.steps = torch.zeros((), dtype=torch.long)  # a tensor: kept in the checkpoint

    def stepped(self, loop):
        self.steps += 1

    def evaluated(self, loop, row):
        loop.log(f"$name: {int(self.steps)} steps at step {row['step']}")

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.steps = state["steps"].clone()


@hookimpl
def klm_register_callback(register):
    register(
        "$name",
        lambda cfg: $Class(),
        "$summary",
    )
""",
    "klm run --callback $name\n" + COMPARE.replace("--$slot $name", "--callback $name"),
)


def package_names(name: str, slot: str) -> dict[str, str]:
    """The names a package is made of: klm-attention-my-idea, klm_attention_my_idea, ..."""
    words = re.split(r"[-_]", name)
    return {
        "name": name,
        "slot": slot,
        "ident": "_".join(words),
        "dist": f"klm-{slot}-{'-'.join(words)}",
        "module": f"klm_{slot}_{'_'.join(words)}",
        "Class": "".join(w.capitalize() for w in words) + slot.capitalize(),
    }


def check_request(name: str, slot: str, directory: Path, registry: Any = None) -> Path:
    """The package folder to create, or a ConfigError: bad name or slot, a clash, a file."""
    if slot not in MODULES:
        close = difflib.get_close_matches(slot, SLOTS, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"unknown slot '{slot}'; {hint}slots: {', '.join(SLOTS)}")
    if not NAME.match(name) or len(name) > MAX_NAME:
        raise ConfigError(
            f"plugin name '{name}' must be lower-case letters and digits, words joined by - or "
            f"_, starting with a letter, at most {MAX_NAME} characters (e.g. sliding-window)"
        )
    if registry is not None and name in registry.names(slot):
        owner = registry.get(slot, name).distribution
        raise ConfigError(
            f"{slot} '{name}' already exists (from {owner}); names are unique within a slot, "
            "choose another"
        )
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"--dir {directory} is a file; give a folder")
    target = directory / package_names(name, slot)["dist"]
    if target.exists():
        raise ConfigError(f"{target} already exists; nothing was written, choose another name")
    return target


def new_plugin(
    name: str, slot: str, directory: str | os.PathLike = "plugins", registry: Any = None
) -> Path:
    """Write the package ``<directory>/klm-<slot>-<name>`` and return its path.

    The files are written into a temporary folder that is renamed into place at the end: a
    failure leaves nothing behind, and an existing folder is never touched. With a
    ``registry``, a name already registered in the slot is refused.
    """
    directory = Path(directory)
    target = check_request(name, slot, directory, registry)
    values = package_names(name, slot)
    starter = MODULES[slot]
    values["summary"] = starter.summary
    values["Summary"] = starter.summary[0].upper() + starter.summary[1:]
    values["usage"] = Template(starter.usage).substitute(values)
    files = {
        "pyproject.toml": PYPROJECT,
        f"{values['module']}.py": DOCSTRING + starter.module,
        f"tests/test_{slot}_{values['ident']}.py": TESTS,
        "README.md": README,
    }
    directory.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{values['dist']}-", dir=directory))
    try:
        for rel, text in files.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(Template(text).substitute(values), encoding="utf-8")
        os.rename(tmp, target)  # fails, rather than overwrites, if the target appeared meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
