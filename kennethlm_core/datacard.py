"""The dataset card of a split published by ``klm data export``: README.md, YAML front matter
and a Markdown body.

The front matter has the hub's ``configs:`` (the split's parquet files) and klm's record of the
export under ``klm_export`` (``MARKER``: corpus, fingerprint, split version and fractions,
documents and bytes per domain, licences per source); the body says how the split is made,
step by step, so that anyone can check it. ``card_record`` reads that record back: a folder
whose README.md has one is an earlier export (``klm export`` marks its model card the same way).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from kennethlm_core import __version__
from kennethlm_core.components import Corpus
from kennethlm_core.data import SPLIT_VERSION, Plan

MARKER = "klm_export"  # the card's YAML key that marks a folder as written by klm
EXPORT_FORMAT = 1
NO_SOURCE = "(no source)"  # the card's name for rows without one


def card_record(folder: Path) -> dict[str, Any] | None:
    """The ``klm_export`` record of the card in ``folder``, or None when it has none."""
    try:
        text = (folder / "README.md").read_text(encoding="utf-8")
        front = re.match(r"---\n(.*?)\n---\n", text, re.DOTALL)
        meta = yaml.safe_load(front.group(1)) if front else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    record = meta.get(MARKER) if isinstance(meta, dict) else None
    return record if isinstance(record, dict) else None


HOW = """\
Every document of the corpus is in exactly one split, train, validation or test, chosen by a
hash of its id alone: a document never changes split when others are added, and no document
has text in two splits.

1. The hash `h` of a document is blake2b over its id in UTF-8, with an 8-byte digest and the
   personalisation `split`, read as a big-endian integer and divided by 2^64 (klm's
   `data.unit_hash`):

   ```python
   import hashlib

   def unit_hash(doc_id: str) -> float:
       digest = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8, person=b"split")
       return int.from_bytes(digest.digest(), "big") / 2**64
   ```

2. A document is in validation when `h < val_fraction` ({val}), in test when
   `val_fraction <= h < val_fraction + test_fraction` ({end}), else in train.
3. Then every domain is made to appear in the splits where it can. A domain of three or more
   documents that has none in validation (or test) moves its lowest-hash document from a
   split where the domain has more than one; one with none in train moves its highest-hash
   such document there. A domain of two documents has one in validation and one in test, and
   none in train; a domain of one document is in validation only.
4. The rows are in klm's slice order: the lowest-hash document of each domain first, then
   all the others by `h`, so that the first rows cover every domain.

This is split version {version} of klm (version 1 split by chunk, so that a long document
could have text in two splits; version 2 splits by document)."""


@dataclass
class Card:
    """The dataset card of an export: README.md, YAML front matter and a Markdown body."""

    corpus: Corpus
    plan: Plan
    split: str
    fractions: tuple[float, float]
    files: list[str]
    sources: dict[str, dict]
    columns: list[str]
    where: str  # what load_dataset is given: the hub repository, or a path to the folder

    def render(self) -> str:
        meta = self.metadata()
        front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=88)
        return f"---\n{front}---\n\n{self.body(meta[MARKER])}\n"

    def domains(self) -> dict[str, dict[str, int]]:
        plan, docs = self.plan, self.plan.documents(self.split)
        doc_bytes = np.add.reduceat(plan.chunk_bytes, plan.first_chunk)
        out = {}
        for d, name in enumerate(plan.domains):
            mine = docs[plan.doc_domain[docs] == d]
            if len(mine):
                out[name] = {"documents": len(mine), "bytes": int(doc_bytes[mine].sum())}
        return out

    def origin(self) -> dict[str, Any]:
        """The corpus: its name and fingerprint, and for a hub corpus what was read of it."""
        info: dict[str, Any] = {"corpus": self.corpus.name}
        info["corpus_fingerprint"] = self.corpus.fingerprint()
        repo = getattr(self.corpus, "repo", None)
        if repo:
            info["hub_dataset"] = repo
            if getattr(self.corpus, "path", ""):
                info["hub_copy"] = "read from a local copy of the dataset repository"
            info["hub_sources"] = list(getattr(self.corpus, "sources", [])) or "all"
            info["hub_max_bytes_per_source"] = getattr(self.corpus, "max_bytes", 0) or "all"
        return info

    def corpus_card(self) -> str:
        repo = getattr(self.corpus, "repo", None)
        if repo:
            return f"the corpus's own card, https://huggingface.co/datasets/{repo}"
        return "the corpus's own documentation (where its files came from)"

    def metadata(self) -> dict[str, Any]:
        domains = self.domains()
        path = self.files[0] if len(self.files) == 1 else self.files
        meta: dict[str, Any] = {"pretty_name": f"{self.corpus.name}: the {self.split} split"}
        if "license" in self.columns:
            meta["license"] = "other"  # per source, as the rows state it: see klm_export
        meta["configs"] = [
            {"config_name": "default", "data_files": [{"split": self.split, "path": path}]}
        ]
        meta[MARKER] = {
            "format": EXPORT_FORMAT,
            "klm_version": __version__,
            "split": self.split,
            "split_version": SPLIT_VERSION,
            **self.origin(),
            "val_fraction": self.fractions[0],
            "test_fraction": self.fractions[1],
            "documents": sum(d["documents"] for d in domains.values()),
            "bytes": sum(d["bytes"] for d in domains.values()),
            "domains": domains,
            "sources": {
                source or NO_SOURCE: {
                    "documents": info["documents"],
                    "licenses": sorted(info["licenses"]) or "unknown to klm",
                }
                for source, info in sorted(self.sources.items())
            },
            "notes": list(self.plan.notes),
        }
        return meta

    def body(self, meta: dict[str, Any]) -> str:
        """The Markdown after the front matter; ``meta`` is its ``klm_export`` record."""
        val, test = self.fractions
        hub = ""
        if "hub_dataset" in meta:
            hub = (
                f" It was read from the Hugging Face dataset `{meta['hub_dataset']}` (sources: "
                f"{_listed(meta['hub_sources'])}; text per source: "
                f"{_listed(meta['hub_max_bytes_per_source'], ' bytes at most')})."
            )
        lines = [
            f"# {self.corpus.name}: the {self.split} split",
            "",
            f"The {self.split} split of the corpus `{self.corpus.name}` as KennethLM (klm) makes "
            f"it, written by `klm data export`: {meta['documents']:,} documents, "
            f"{meta['bytes']:,} bytes of UTF-8 text.{hub} The corpus fingerprint is "
            f"`{meta['corpus_fingerprint']}` (klm's: it changes when the corpus files or the "
            "settings that read them change).",
            "",
            "```python",
            "from datasets import load_dataset",
            "",
            f'rows = load_dataset("{self.where}", split="{self.split}")',
            "```",
            "",
            f"Columns: {', '.join(f'`{c}`' for c in self.columns)}. Score a klm run on all of "
            "it with `klm eval RUN --task bpb --data DIR`.",
            "",
            "## How the split is made",
            "",
            HOW.format(val=val, end=f"{val + test:g}", version=SPLIT_VERSION),
            "",
            "## Small domains",
            "",
        ]
        lines += [f"- {note}" for note in meta["notes"]] or [
            "None: every domain of the corpus has documents in all three splits."
        ]
        lines += ["", "## Domains", "", "| domain | documents | bytes |", "|---|---:|---:|"]
        for name, d in meta["domains"].items():
            lines.append(f"| {_cell(name)} | {d['documents']:,} | {d['bytes']:,} |")
        lines += [f"| **total** | {meta['documents']:,} | {meta['bytes']:,} |", ""]
        lines += ["## Sources and licences", "", *self.licences()]
        return "\n".join(lines)

    def licences(self) -> list[str]:
        if not any(self.sources):
            return [
                "The corpus's rows name no source and no licence: the licence of this text is "
                f"unknown to klm. See {self.corpus_card()}, and check it before publishing.",
            ]
        lines = ["| source | documents | licence (as the rows state it) |", "|---|---:|---|"]
        for source, info in sorted(self.sources.items()):
            licence = ", ".join(sorted(info["licenses"])) or "unknown to klm"
            lines.append(f"| {_cell(source or NO_SOURCE)} | {info['documents']:,} | {licence} |")
        lines.append("")
        if any(not info["licenses"] for info in self.sources.values()):
            lines.append(
                "Where the licence is unknown to klm, the corpus's rows do not state it: see "
                f"{self.corpus_card()}, and check it before publishing."
            )
        else:
            lines.append(
                "klm copies each licence as the corpus's rows state it and checks none of "
                f"them; see {self.corpus_card()}."
            )
        return lines


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _listed(value: Any, unit: str = "") -> str:
    if isinstance(value, list):
        return ", ".join(value)
    return f"{value:,}{unit}" if isinstance(value, int) else str(value)
