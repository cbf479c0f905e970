"""`klm new-plugin NAME --slot SLOT`: a new plugin package that works from the first minute.

The package installs, registers a real (small) component for its slot, and its tests run the
conformance kit on it. Change the component into your idea; the tests keep you honest.

    plugins/klm-<slot>-<name>/
      pyproject.toml            the distribution, with its entry point in the `kennethlm` group
      klm_<slot>_<name>.py      the component and the hook that registers it
      tests/test_<name>.py      the conformance kit for the slot (add tests of your own here)
      README.md                 what it is and how to try it

Each file is rendered from a template in ``kennethlm_core/templates/`` (package data): one
module per slot (SLOT.py, real Python that ruff checks and a test renders and installs), the
conformance test, the pyproject and the README.
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from kennethlm_core.errors import ConfigError
from kennethlm_core.hookspecs import SLOTS

NAME = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")
MAX_NAME = 20

TEMPLATES = resources.files("kennethlm_core") / "templates"
# The package's module starts with this docstring, then the slot's template, TEMPLATES/SLOT.py:
# real Python that ruff checks, its class called Starter (renamed to the package's) and the
# package's names in string.Template fields ($name, $slot, $summary, ${ident}).
DOCSTRING = '''\
"""$Summary.

KennethLM $slot '$name', made by `klm new-plugin`.
"""

'''


USAGE = (
    "klm run --$slot $name\n"
    'klm compare --baseline record --candidate "--$slot $name" --seeds 5 --steps 600'
)


@dataclass(frozen=True)
class Starter:
    """What a new package of one slot starts with, beside its template."""

    summary: str  # one line, also the component's summary in `klm list-plugins`
    usage: str = USAGE  # how to try it, for the README


STARTERS: dict[str, Starter] = {
    "attention": Starter("causal softmax attention, written out"),
    "posemb": Starter("a learned offset per position, added to every channel"),
    "norm": Starter("RMSNorm: scale to unit root-mean-square, then a learned gain"),
    "mlp": Starter("Linear, ReLU, Linear, hidden width set by an option"),
    "model": Starter("next-token logits from the current token through a narrow embedding"),
    "optimizer": Starter("Adam without weight decay"),
    "schedule": Starter("linear warmup, then linear decay to min_lr_ratio"),
    "tokenizer": Starter("UTF-8 bytes as tokens, plus a document token"),
    "corpus": Starter(
        "Danish counting exercises, generated: a corpus that needs no files",
        "klm run --corpus $name",
    ),
    "task": Starter(
        "bits per byte of a few built-in Danish sentences", "klm eval RUN --task $name"
    ),
    "tweak": Starter("a learned temperature that scales the logits, starting at 1"),
    "callback": Starter("counts the training steps and logs the count at each evaluation"),
}


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
    if slot not in STARTERS:
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


def template(name: str) -> str:
    return (TEMPLATES / name).read_text(encoding="utf-8")


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
    starter = STARTERS[slot]
    values["summary"] = starter.summary
    values["Summary"] = starter.summary[0].upper() + starter.summary[1:]
    values["usage"] = Template(starter.usage).substitute(values)
    module = DOCSTRING + re.sub(r"\bStarter\b", values["Class"], template(f"{slot}.py"))
    files = {
        "pyproject.toml": template("pyproject.toml.tmpl"),
        f"{values['module']}.py": module,
        f"tests/test_{slot}_{values['ident']}.py": template("conformance_test.py").replace(
            "TestStarter", f"Test{values['Class']}"
        ),
        "README.md": template("README.md.tmpl"),
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
