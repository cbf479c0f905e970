"""Provenance: the data and the code a run was made with, and what changed since.

Every run folder gets ``provenance.json`` when the run starts::

    {"date": "2026-11-25T22:12:14",
     "data": {"pipeline": 2, "corpus": "sample", "corpus_fingerprint": "…",
              "tokenizer": "bpe", "tokenizer_fingerprint": "…"},
     "code": {"git_commit": "d771dfa0c1b2", "git_dirty": false,
              "core": {"version": "0.1.0", "source": "…"},
              "plugins": {"klm-posemb-rope": {"version": "0.1.0", "source": "…",
                                              "components": ["posemb rope"]}}},
     "overrides": []}

``source`` is a hash of the files the code comes from: for the core, the modules of
kennethlm_core that compute runs (all but the command line, reports and ledgers:
NOT_COMPUTING) and its sample data; for a plugin, the module (one file) or the package (every
.py under it) that provides each component the run uses. Built-in components are part of the
core. A set of files is hashed once per process: the code a process runs is the code it
loaded, even if the files are edited while it runs.

Resuming a run (train) or reusing one (klm compare) compares its provenance.json with what
would run now: the source hashes, the versions, the corpus fingerprint, the data pipeline's
version and the tokenizer fingerprint. A difference refuses, unless --allow-changes, which is
recorded under ``overrides`` (the step, the date, what changed and the provenance before);
the top level is always what the run is on now. The git commit and the dirty flag are recorded
but not compared: a commit that changes only the docs must not block a resume.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import inspect
import json
import os
import subprocess
import sys
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from kennethlm_core.atomic import atomic_write_json
from kennethlm_core.config import selected_components
from kennethlm_core.errors import CheckpointError, ConfigError

FILE = "provenance.json"
CORE = Path(__file__).resolve().parent  # kennethlm_core/
REPO = CORE.parent
BUILTIN = "kennethlm"  # the core's distribution (plugins.BUILTIN)
UNKNOWN = "its provenance is unknown (no provenance.json: it was made before runs recorded one)"


# -- git ---------------------------------------------------------------------------------


def git_state(root: Path = REPO) -> tuple[str, bool | None]:
    """(short commit, dirty) of the checkout at ``root``; ("", None) outside git.

    Dirty means a tracked file is modified or an untracked file (not ignored) exists: a new
    plugin file that is not committed yet is code the run may use.
    """

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=root, text=True, capture_output=True, timeout=10)

    try:
        head = git("rev-parse", "--short=12", "HEAD")
        if head.returncode != 0:
            return "", None
        status = git("status", "--porcelain", "--untracked-files=normal")
    except (OSError, subprocess.SubprocessError):
        return "", None
    return head.stdout.strip(), bool(status.stdout.strip()) or status.returncode != 0


def git_commit(root: Path = REPO) -> str:
    """The commit, with ``-dirty`` when the checkout has changes (untracked files included)."""
    sha, dirty = git_state(root)
    return sha + ("-dirty" if sha and dirty else "")


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a klm process this one starts (a comparison's worker, the ranks
    of torchrun) so that it runs this process's code. ``python -m`` puts the working
    directory first on sys.path: a comparison started from one checkout inside another would
    otherwise train its runs with the other checkout's kennethlm_core. So the child gets this
    code's root first on PYTHONPATH, and PYTHONSAFEPATH=1 (no working directory on sys.path)."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env["PYTHONSAFEPATH"] = "1"
    return env


# -- source hashes -----------------------------------------------------------------------


def hash_files(files: Iterable[tuple[str, Path]]) -> str:
    """A hash of (name, content) pairs, independent of where the files lie and their order;
    computed once per process for the same files (see the module's docstring)."""
    return _hash(tuple(sorted(files)))


@functools.cache
def _hash(files: tuple[tuple[str, Path], ...]) -> str:
    h = hashlib.sha256()
    for name, path in files:
        data = path.read_bytes()
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()[:16]


# Core modules that never compute a run's numbers: the command line, reports, comparisons
# and ledgers, scaffolding, export, loggers and this module (a name ending in / is a folder).
# Editing them leaves runs comparable.
NOT_COMPUTING = {
    "__main__.py",
    "cli/",
    "comparison.py",
    "datacard.py",
    "entries.py",
    "experiment.py",
    "export.py",
    "hub_code/",
    "jobs.py",
    "ladder.py",
    "ledger.py",
    "loggers.py",
    "modelcard.py",
    "plots.py",
    "provenance.py",
    "publish.py",
    "registry.py",
    "report.py",
    "results.py",
    "runlock.py",
    "scaffold.py",
    "sweep.py",
    "sweeptable.py",
    "templates/",
    "testing/",
    "verdict.py",
}


def computes(name: str) -> bool:
    """Whether the core file ``name`` (relative to kennethlm_core/) can change a run's numbers."""
    return name not in NOT_COMPUTING and not any(
        name.startswith(d) for d in NOT_COMPUTING if d.endswith("/")
    )


def core_files() -> list[tuple[str, Path]]:
    """The .py files of kennethlm_core that compute runs (all but NOT_COMPUTING) and its
    package data (the sample corpus)."""
    code = [p for p in CORE.rglob("*.py") if computes(p.relative_to(CORE).as_posix())]
    paths = [*code, *(p for p in (CORE / "sample").glob("*") if p.is_file())]
    return [(p.relative_to(CORE.parent).as_posix(), p) for p in paths]


def module_files(module: Any) -> list[tuple[str, Path]]:
    """The source of the top-level module ``module`` belongs to: one file, or every .py of
    the package."""
    top = sys.modules.get(module.__name__.partition(".")[0], module)
    dirs = [Path(p) for p in getattr(top, "__path__", None) or []]
    if dirs:
        return [(p.relative_to(d.parent).as_posix(), p) for d in dirs for p in d.rglob("*.py")]
    file = getattr(top, "__file__", None)
    return [(Path(file).name, Path(file))] if file and Path(file).is_file() else []


@functools.cache
def _owners() -> dict[str, list[str]]:
    """Top-level module name -> the distributions that install it."""
    return importlib.metadata.packages_distributions()


def component_files(component: Any, registry: Any) -> list[tuple[str, Path]]:
    """The files of a plugin component: those of the module its factory comes from and of the
    plugin module that registered it, leaving out modules of other distributions (a factory
    taken from torch or from the core is not the plugin's source)."""
    modules = [inspect.getmodule(component.factory), registry.pm.get_plugin(component.plugin)]
    files: dict[str, Path] = {}
    for module in modules:
        name = getattr(module, "__name__", None)
        if not name:
            continue
        owners = _owners().get(name.partition(".")[0])
        if owners and component.distribution not in owners:
            continue
        files.update(module_files(module))
    return sorted(files.items())


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return ""


# -- what a run is made of ---------------------------------------------------------------


def code_provenance(cfg: Any, registry: Any, root: Path = REPO) -> dict[str, Any]:
    """The commit, the core and every plugin distribution that provides a component of the
    run (its model and the slots the model uses, optimizer, schedule, tokenizer, corpus and
    each tweak), with versions and source hashes."""

    plugins: dict[str, dict[str, Any]] = {}
    files: dict[str, dict[str, Path]] = {}
    for comp in selected_components(cfg, registry).values():
        if comp.distribution == BUILTIN:
            continue
        entry = plugins.setdefault(
            comp.distribution, {"version": comp.version, "source": "", "components": []}
        )
        entry["components"].append(f"{comp.slot} {comp.name}")
        files.setdefault(comp.distribution, {}).update(component_files(comp, registry))
    for dist, entry in plugins.items():
        entry["source"] = hash_files(files[dist].items()) if files[dist] else None
        entry["components"].sort()
    sha, dirty = git_state(root)
    return {
        "git_commit": sha,
        "git_dirty": dirty,
        "core": {"version": _version(BUILTIN), "source": hash_files(core_files())},
        "plugins": dict(sorted(plugins.items())),
    }


def data_provenance(meta: dict[str, Any]) -> dict[str, Any]:
    """The data part, from the token cache's meta.json (data.PreparedData.meta)."""
    from kennethlm_core import data  # imports torch: not at the top, for `klm --help`

    return {
        "pipeline": meta.get("format", data.FORMAT),
        "corpus": meta.get("corpus"),
        "corpus_fingerprint": meta.get("corpus_fingerprint"),
        "tokenizer": meta.get("tokenizer"),
        "tokenizer_fingerprint": meta.get("tokenizer_fingerprint"),
    }


def run_provenance(cfg: Any, registry: Any, meta: dict[str, Any]) -> dict[str, Any]:
    """The provenance of a run about to train on prepared data (``meta``: its meta.json)."""
    return {
        "date": datetime.now().isoformat(timespec="seconds"),
        "data": data_provenance(meta),
        "code": code_provenance(cfg, registry),
        "overrides": [],
    }


def planned_provenance(cfg: Any, registry: Any) -> dict[str, Any]:
    """What can be known before preparing data: the code, the corpus fingerprint and the
    pipeline's version (the tokenizer is covered by the code and the configuration)."""
    from kennethlm_core import data  # imports torch: not at the top, for `klm --help`

    corpus = data.build_corpus(cfg, registry).fingerprint()
    return {
        "data": {"pipeline": data.FORMAT, "corpus_fingerprint": corpus},
        "code": code_provenance(cfg, registry),
    }


# -- what changed ------------------------------------------------------------------------


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What changed from ``old`` to ``new``, as short phrases. Only the data keys that ``new``
    has are compared; the commit and the dirty flag never are."""
    changes = []
    old_data, new_data = old.get("data") or {}, new.get("data") or {}
    if "pipeline" in new_data and old_data.get("pipeline") != new_data["pipeline"]:
        changes.append(
            f"the data pipeline changed (format {old_data.get('pipeline')} -> "
            f"{new_data['pipeline']})"
        )
    for key, what in (("corpus_fingerprint", "corpus"), ("tokenizer_fingerprint", "tokenizer")):
        if key in new_data and old_data.get(key) != new_data[key]:
            changes.append(f"the {what} changed")
    old_code, new_code = old.get("code") or {}, new.get("code") or {}
    changes += _component_change("the core", old_code.get("core"), new_code.get("core"))
    old_plugins, new_plugins = old_code.get("plugins") or {}, new_code.get("plugins") or {}
    for dist in sorted({*old_plugins, *new_plugins}):
        if dist not in new_plugins:
            changes.append(f"plugin {dist} is no longer used")
        elif dist not in old_plugins:
            changes.append(f"plugin {dist} is used now")
        else:
            changes += _component_change(f"plugin {dist}", old_plugins[dist], new_plugins[dist])
    return changes


def _component_change(who: str, old: dict | None, new: dict | None) -> list[str]:
    old, new = old or {}, new or {}
    if old.get("version") != new.get("version"):
        return [f"{who}'s version changed ({old.get('version')} -> {new.get('version')})"]
    if old.get("source") != new.get("source"):
        return [f"{who}'s source changed"]
    return []


def sentence(phrases: list[str]) -> str:
    """['a', 'b', 'c'] -> 'a, b and c'."""
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


# -- provenance.json ---------------------------------------------------------------------


class Unreadable(CheckpointError):
    """provenance.json exists but is not a provenance record."""


def load(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's provenance.json; None when the run has none (made before this existed)."""
    path = Path(run_dir) / FILE
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise Unreadable(f"its {FILE} cannot be read ({e})") from None
    if not isinstance(saved, dict):
        raise Unreadable(f"its {FILE} cannot be read (not a JSON object)")
    return saved


def save(run_dir: str | Path, record: dict[str, Any]) -> None:
    atomic_write_json(Path(run_dir) / FILE, record)


def changes_since(run_dir: str | Path, current: dict[str, Any]) -> tuple[list[str], str]:
    """(what changed, the same as a clause for a message) between the run's provenance.json
    and ``current``; ([], "") when nothing did. A run without a readable provenance.json
    counts as changed: its provenance is unknown."""
    try:
        saved = load(run_dir)
    except Unreadable as e:
        return [str(e)], str(e)
    if saved is None:
        return [UNKNOWN], UNKNOWN
    changes = differences(saved, current)
    since = "it was last resumed" if saved.get("overrides") else "it started"
    return changes, f"{sentence(changes)} since {since}" if changes else ""


def check_resume(run_dir: str | Path, current: dict[str, Any], allow_changes: bool) -> list[str]:
    """What changed since the run in ``run_dir`` started; refuses (ConfigError) when something
    did and ``allow_changes`` is not given."""
    changes, clause = changes_since(run_dir, current)
    if changes and not allow_changes:
        raise ConfigError(
            f"cannot resume {run_dir}: {clause}; start a new run, or pass --allow-changes to "
            f"continue anyway (recorded in {FILE})"
        )
    return changes


def resumed(
    run_dir: str | Path, current: dict[str, Any], changes: list[str], step: int
) -> dict[str, Any]:
    """The provenance of a run resumed at ``step``: the saved one when nothing changed, else
    ``current`` with the override recorded (and written to provenance.json)."""
    try:
        saved = load(run_dir)
    except Unreadable:
        saved = None
    if not changes and saved is not None:
        return saved
    before = {k: v for k, v in saved.items() if k != "overrides"} if saved else None
    override = {
        "step": step,
        "date": datetime.now().isoformat(timespec="seconds"),
        "changed": changes,
        "before": before,
    }
    record = {**current, "overrides": [*((saved or {}).get("overrides") or []), override]}
    save(run_dir, record)
    return record
