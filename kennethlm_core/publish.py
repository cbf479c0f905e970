"""Publish a split of a corpus as a Hugging Face dataset folder (``klm data export``).

The folder is laid out like a dataset repository on the hub:

    DIR/README.md                            the dataset card (datacard.py): YAML front
                                             matter (``configs:``, klm's record of the
                                             export under ``klm_export``) and a body that
                                             says how the split is made
    DIR/data/test-00000-of-00001.parquet     the rows: id, text, domain, and source and
                                             license where the corpus has them

``datasets.load_dataset(DIR)`` gives exactly the documents of the split (``Plan.documents``:
the same documents, in the same order) under a split of the same name, and ``klm eval RUN
--task bpb --data DIR`` scores all of its text. Only validation and test are published.

Writing streams: the split's documents are read from the corpus, in corpus order, into a
temporary Arrow file, which is memory-mapped and written out in slice order, a shard at a
time, so the split is never held in memory whole. The folder is built beside DIR and moved
into place when it is complete. An existing DIR that is not empty is replaced only with
``force``, and only when it is an earlier export holding nothing but what an export writes.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import huggingface_hub
import numpy as np

from kennethlm_core import logs
from kennethlm_core.components import Corpus
from kennethlm_core.data import Plan, build_corpus, plan_split, unit_hash
from kennethlm_core.datacard import Card, card_record
from kennethlm_core.errors import ConfigError, DataError, KLMError

# isort: split
# The dataset card moved to datacard.py; kept importable from here for code written before.
from kennethlm_core.datacard import MARKER  # noqa: F401

PUBLISHED = ("validation", "test")
SHARD_BYTES = 256 * 2**20  # text per parquet file
GROUP_BYTES = 32 * 2**20  # text per row group
GROUP_ROWS = 1000
COLUMNS = ("id", "text", "domain", "source", "license")
SHARD_NAME = re.compile(r"(validation|test)-\d{5}-of-\d{5}\.parquet")


@dataclass
class Export:
    """What ``export_split`` wrote."""

    out: Path
    split: str
    files: list[str]  # relative to out, README.md last
    documents: int
    bytes: int
    unknown_licences: list[str]  # sources (or "" for none) whose licence the rows do not state


# -- checks, before anything is read ---------------------------------------------------------


def check_split(split: str) -> None:
    if split == "train":
        raise ConfigError("the train split is not published; export validation or test")
    if split not in PUBLISHED:
        raise ConfigError(f"unknown split '{split}'; export validation or test")


def check_out(
    out: Path,
    force: bool,
    *,
    flag: str = "--out",
    command: str = "klm data export",
    foreign: Callable[[Path], list[str]] | None = None,
) -> None:
    """Refuse an ``out`` that would lose anything: a file, a link, a folder that is not empty
    (without ``force``), or one that is not purely an earlier export (even with it).

    ``klm export`` (a model folder) checks its ``--to`` with this too: ``flag`` and
    ``command`` name the option and the command in the messages, and ``foreign`` lists what
    in a folder that kind of export does not write (default: a dataset export's
    ``foreign_files``)."""
    if out.is_symlink():
        raise KLMError(f"{flag} {out} is a symbolic link; give the folder itself")
    if not out.exists():
        return
    if not out.is_dir():
        raise KLMError(f"{flag} {out} is a file, not a folder; choose another {flag}")
    if not any(out.iterdir()):
        return
    if not force:
        raise KLMError(
            f"{flag} {out} is not empty; choose another {flag}, or give --force to replace "
            "an earlier export there"
        )
    if card_record(out) is None:
        raise KLMError(
            f"{flag} {out} is not an earlier export (no README.md marked by {command}); "
            f"--force replaces only those: choose another {flag}"
        )
    found = (foreign or foreign_files)(out)
    if found:
        more = f" and {len(found) - 3} more" if len(found) > 3 else ""
        raise KLMError(
            f"{flag} {out} holds files an export does not write ({', '.join(found[:3])}{more}); "
            f"move them away or choose another {flag}"
        )


def check_apart(corpus: Corpus, out: Path) -> None:
    """Refuse an ``out`` inside a local corpus' folder (the export would join the corpus)
    or holding its files (a re-export into the export it reads)."""
    out = out.resolve()
    spec = Path(getattr(corpus, "spec", "")).expanduser()
    inside = getattr(corpus, "spec", "") and spec.is_dir() and out.is_relative_to(spec.resolve())
    if inside or any(f.resolve().is_relative_to(out) for f in getattr(corpus, "files", [])):
        raise KLMError(
            f"--out {out} overlaps the corpus' own files; write the export outside the corpus"
        )


def foreign_files(folder: Path) -> list[str]:
    """Everything in ``folder`` that an export does not write, relative to it."""
    foreign = []
    for entry in sorted(folder.iterdir()):
        if entry.name == "README.md" and entry.is_file() and not entry.is_symlink():
            continue
        if entry.name == "data" and entry.is_dir() and not entry.is_symlink():
            for f in sorted(entry.iterdir()):
                if not (SHARD_NAME.fullmatch(f.name) and f.is_file() and not f.is_symlink()):
                    foreign.append(f"data/{f.name}")
            continue
        foreign.append(entry.name)
    return foreign


# -- the export ------------------------------------------------------------------------------


def export(
    cfg: Any,
    registry: Any,
    split: str,
    out: Path,
    *,
    force: bool = False,
    repo: str = "",
    log: Callable[[str], None] = lambda message: None,
) -> Export:
    """Write the ``split`` of the run configuration's corpus to ``out`` (see the module)."""
    check_split(split)
    check_out(out, force)
    corpus = build_corpus(cfg, registry)
    check_apart(corpus, out)
    plan = plan_split(corpus, cfg.val_fraction, cfg.tokenizer_train_bytes, cfg.test_fraction)
    for note in plan.notes:
        log(f"note: {note}")
    fractions = (cfg.val_fraction, cfg.test_fraction)
    return export_split(corpus, plan, split, out, fractions, force=force, repo=repo)


def export_split(
    corpus: Corpus,
    plan: Plan,
    split: str,
    out: Path,
    fractions: tuple[float, float],
    *,
    force: bool = False,
    repo: str = "",
) -> Export:
    """Write the documents ``plan`` puts in ``split`` and their card to ``out``.

    ``fractions`` are the (validation, test) fractions ``plan`` was made with; ``repo`` is
    the hub repository the card tells readers to load (default: a path to the folder).
    """
    check_split(split)
    check_out(Path(out), force)
    out = Path(out).absolute()  # "." has a name and a parent
    docs = plan.documents(split)
    if len(docs) == 0:
        raise DataError(f"the {split} split of corpus '{corpus.name}' has no documents")
    doc_bytes = np.add.reduceat(plan.chunk_bytes, plan.first_chunk)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    try:
        rows = tmp / "rows.arrow"
        sources = _collect(corpus, plan, docs, rows)
        columns = [c for c in COLUMNS if c in ("id", "text", "domain") or _any(sources, c)]
        shards = _groups(doc_bytes[docs], SHARD_BYTES)
        names = [f"data/{split}-{i:05d}-of-{len(shards):05d}.parquet" for i in range(len(shards))]
        in_corpus_order = np.sort(docs)
        order = np.searchsorted(in_corpus_order, docs)  # row of each document in rows.arrow
        _write_parquet(rows, order, shards, [tmp / n for n in names], columns, doc_bytes[docs])
        rows.unlink()
        where = repo or f"path/to/{out.name}"
        card = Card(corpus, plan, split, fractions, names, sources, columns, where)
        (tmp / "README.md").write_text(card.render(), encoding="utf-8")
        check_out(out, force)  # again: nothing may have appeared there meanwhile
        _replace(out, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    unknown = sorted(s for s, info in sources.items() if not info["licenses"])
    return Export(out, split, [*names, "README.md"], len(docs), int(doc_bytes[docs].sum()), unknown)


def _collect(corpus: Corpus, plan: Plan, docs: np.ndarray, path: Path) -> dict[str, dict]:
    """Write the documents at positions ``docs`` to the Arrow file ``path``, in corpus order;
    return per source its documents, bytes and the licences its rows state."""
    import pyarrow as pa  # pyarrow is heavy: imported only to read or write parquet

    schema = pa.schema([(c, pa.string()) for c in COLUMNS])
    wanted = np.zeros(len(plan.doc_chunks), dtype=bool)
    wanted[docs] = True
    sources: dict[str, dict] = {}
    batch: dict[str, list[str]] = {c: [] for c in COLUMNS}
    size, n = 0, 0
    changed = DataError(
        f"corpus '{corpus.name}' changed while it was being read; export again when it is still"
    )
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for n, doc in enumerate(corpus.documents(), start=1):
            i = n - 1
            if i >= len(wanted):
                raise changed
            if not wanted[i]:
                continue
            if unit_hash(doc.id) != plan.doc_hash[i]:
                raise changed
            for column in COLUMNS:
                batch[column].append(getattr(doc, column))
            info = sources.setdefault(doc.source, {"documents": 0, "bytes": 0, "licenses": set()})
            info["documents"] += 1
            info["bytes"] += len(doc.text.encode("utf-8"))
            if doc.license:
                info["licenses"].add(doc.license)
            size += len(doc.text)
            if size >= GROUP_BYTES or len(batch["id"]) >= GROUP_ROWS:
                writer.write_batch(pa.record_batch(batch, schema=schema))
                batch, size = {c: [] for c in COLUMNS}, 0
        if batch["id"]:
            writer.write_batch(pa.record_batch(batch, schema=schema))
    if n != len(wanted):
        raise changed
    return sources


def _any(sources: dict[str, dict], column: str) -> bool:
    """Whether any exported row has a ``source`` (or a ``license``)."""
    if column == "source":
        return any(sources)
    return any(info["licenses"] for info in sources.values())


def _write_parquet(rows: Path, order, shards, paths, columns, sizes) -> None:
    """Write the rows of the Arrow file ``rows`` in ``order`` to the parquet files ``paths``,
    shard ``k`` holding positions ``shards[k]`` of ``order``."""
    import pyarrow as pa  # pyarrow is heavy: imported only to read or write parquet
    import pyarrow.parquet as pq

    paths[0].parent.mkdir(parents=True, exist_ok=True)
    with pa.memory_map(str(rows)) as source:
        table = pa.ipc.open_file(source).read_all().select(columns)  # backed by the map
        for (a, b), path in zip(shards, paths, strict=True):
            with pq.ParquetWriter(path, table.schema) as writer:
                for c, d in _groups(sizes[a:b], GROUP_BYTES, GROUP_ROWS):
                    writer.write_table(table.take(order[a + c : a + d]))
        del table


def _groups(sizes: np.ndarray, max_bytes: int, max_items: int = 0) -> list[tuple[int, int]]:
    """Consecutive ranges ``[a, b)`` of ``sizes`` of at most ``max_bytes`` (or one item) and
    at most ``max_items`` items (0: any number)."""
    groups, start, total = [], 0, 0
    for i, size in enumerate(sizes.tolist()):
        full = total + size > max_bytes or (max_items and i - start >= max_items)
        if i > start and full:
            groups.append((start, i))
            start, total = i, 0
        total += size
    groups.append((start, len(sizes)))
    return groups


def _replace(out: Path, new: Path) -> None:
    """Move the finished folder ``new`` to ``out``; an earlier ``out`` (checked: empty, or an
    export) is moved aside first and deleted only once ``new`` is in place."""
    if not out.exists():
        os.rename(new, out)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.rename(out, aside / "old")
    try:
        os.rename(new, out)
    except OSError:
        os.rename(aside / "old", out)
        raise
    finally:
        if out.exists():
            shutil.rmtree(aside, ignore_errors=True)


# -- the hub ---------------------------------------------------------------------------------


def push_to_hub(out: Path, repo: str, split: str) -> str:
    """Upload the export ``out`` to the hub dataset ``repo`` (created if need be), replacing
    its README.md and its parquet files of ``split``; returns the dataset's address."""
    later = (
        f"the dataset folder {out} is written; push it later with: "
        f"hf upload {repo} {out} . --repo-type dataset"
    )
    upload(
        out,
        repo,
        repo_type="dataset",
        message=f"klm data export: the {split} split",
        later=later,
        delete_patterns=[f"data/{split}-*.parquet"],  # shards of an earlier export
    )
    return f"https://huggingface.co/datasets/{repo}"


def upload(
    out: Path,
    repo: str,
    *,
    repo_type: str,
    message: str,
    later: str,
    delete_patterns: list[str] | None = None,
) -> None:
    """Create the hub repository ``repo`` if need be and upload the folder ``out`` to it, with
    huggingface_hub's own calls; offline or on any failure, one KLMError ending in ``later``
    (what is written, and how to push it by hand)."""
    logs.quiet("huggingface_hub")

    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    if offline or huggingface_hub.constants.HF_HUB_OFFLINE:  # (read when it was imported)
        raise KLMError(f"cannot push to {repo}: offline (HF_HUB_OFFLINE is set); {later}")
    api = huggingface_hub.HfApi()
    try:
        api.create_repo(repo, repo_type=repo_type, exist_ok=True)
        api.upload_folder(
            repo_id=repo,
            folder_path=out,
            repo_type=repo_type,
            commit_message=message,
            delete_patterns=delete_patterns,
        )
    except Exception as e:
        what = " ".join(f"{type(e).__name__}: {e}".split())[:200]
        raise KLMError(
            f"cannot push to {repo} ({what}); log in with `hf auth login` if need be; {later}"
        ) from None
