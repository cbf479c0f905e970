"""Corpora: local files read with `datasets`, the embedded Danish sample, and the hub corpora.

A local corpus is a file, a folder (searched recursively) or a glob of .jsonl, .jsonl.gz,
.json, .parquet or .txt files. Tables need a ``text`` column; ``domain`` and ``id`` are
optional (missing domain: every document is in domain "default"). A .txt file is one document;
bytes that are not UTF-8 are replaced by U+FFFD and the count is reported.
"""

from __future__ import annotations

import glob
import hashlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

from kennethlm_core.components import Corpus, Document
from kennethlm_core.errors import DataError

SUFFIXES = {
    ".jsonl": "json",
    ".jsonl.gz": "json",
    ".json": "json",
    ".json.gz": "json",
    ".parquet": "parquet",
    ".txt": "text",
}
SAMPLE = Path(__file__).resolve().parent.parent / "sample" / "danish_sample.jsonl"


def builder_for(path: Path) -> str | None:
    name = path.name.lower()
    for suffix, builder in SUFFIXES.items():
        if name.endswith(suffix):
            return builder
    return None


def find_files(spec: str) -> list[Path]:
    path = Path(spec).expanduser()
    if path.is_file():
        if builder_for(path) is None:
            raise DataError(f"{spec}: unsupported file type; use {', '.join(SUFFIXES)}")
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and builder_for(p))
        where = f"folder {spec}"
    else:
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True))
        files = [p for p in files if p.is_file() and builder_for(p)]
        where = f"'{spec}'"
    if not files:
        raise DataError(f"no corpus files in {where}; expected {', '.join(SUFFIXES)} files")
    return files


def _quiet_datasets():
    import datasets
    import huggingface_hub

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    huggingface_hub.utils.logging.set_verbosity_error()  # no retry chatter when offline
    return datasets


class PathCorpus(Corpus):
    """Documents from local files."""

    def __init__(self, spec: str | os.PathLike):
        self.spec = str(spec)
        self.files = find_files(self.spec)
        self.name = Path(self.spec).name or self.spec

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for f in self.files:
            st = f.stat()
            h.update(f"{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()[:16]

    def documents(self) -> Iterator[Document]:
        for path in self.files:
            if builder_for(path) == "text":
                yield self._text_document(path)
            else:
                yield from self._table_documents(path)

    def _text_document(self, path: Path) -> Document:
        raw = path.read_bytes()
        text = raw.decode("utf-8", errors="replace")
        bad = text.count("\ufffd") - raw.count("\ufffd".encode())
        if bad:
            warnings.warn(f"{path}: {bad} byte(s) are not UTF-8, replaced by U+FFFD", stacklevel=2)
        return Document(id=str(path), text=text, domain="default")

    def _table_documents(self, path: Path) -> Iterator[Document]:
        datasets = _quiet_datasets()
        try:
            ds = datasets.load_dataset(builder_for(path), data_files=str(path), split="train")
        except Exception as e:
            raise DataError(
                f"{path}: cannot read it as {builder_for(path)} ({_first_line(e)})"
            ) from None
        if "text" not in ds.column_names:
            raise DataError(
                f"{path}: no 'text' column (columns: {', '.join(ds.column_names) or 'none'}); "
                "a corpus table needs 'text', and may have 'domain' and 'id'"
            )
        columns = [c for c in ("id", "text", "domain") if c in ds.column_names]
        row = 0
        for batch in ds.select_columns(columns).iter(batch_size=1000):
            n = len(batch["text"])
            ids = batch.get("id") or [None] * n
            domains = batch.get("domain") or [None] * n
            for i, text, domain in zip(ids, batch["text"], domains, strict=True):
                if text:
                    doc_id = str(i) if i is not None else f"{path.name}:{row}"
                    yield Document(id=doc_id, text=text, domain=str(domain or "default"))
                row += 1


class HubCorpus(Corpus):
    """A corpus streamed from the Hugging Face hub, one or more configs, mapped to domains.

    ``domains`` maps a config (or a value of ``domain_column``) to a domain name.
    """

    def __init__(
        self,
        repo: str,
        configs: list[str | None],
        domain_column: str | None = None,
        domains: dict[str, str] | None = None,
        max_bytes: int = 0,
    ):
        self.repo, self.configs = repo, configs
        self.domain_column, self.domains = domain_column, domains or {}
        self.max_bytes = max_bytes
        self.name = repo

    def fingerprint(self) -> str:
        key = f"{self.repo}\0{self.configs}\0{self.domain_column}\0{self.max_bytes}"
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def documents(self) -> Iterator[Document]:
        datasets = _quiet_datasets()
        seen = 0
        for config in self.configs:
            try:
                stream = iter(
                    datasets.load_dataset(self.repo, config, split="train", streaming=True)
                )
                first = next(stream, None)
            except Exception as e:
                raise DataError(
                    f"cannot load '{self.repo}' from the Hugging Face hub ({_first_line(e)}); "
                    "offline, download it elsewhere and pass --corpus PATH"
                ) from None
            rows = [first] if first is not None else []
            for n, row in enumerate(_chain(rows, stream)):
                text = row.get("text") or ""
                if not text:
                    continue
                label = row.get(self.domain_column) if self.domain_column else config
                domain = self.domains.get(str(label), str(label or "default")).lower()
                yield Document(id=str(row.get("id", f"{config}:{n}")), text=text, domain=domain)
                seen += len(text.encode("utf-8"))
                if self.max_bytes and seen >= self.max_bytes:
                    return


def _chain(first, rest):
    yield from first
    yield from rest


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:160]}" if text else type(e).__name__


def path_corpus(cfg) -> PathCorpus:
    return PathCorpus(cfg.corpus)


def sample_corpus(cfg) -> PathCorpus:
    corpus = PathCorpus(SAMPLE)
    corpus.name = "sample"
    return corpus


def dagw(cfg) -> HubCorpus:
    return HubCorpus(
        "danish-foundation-models/danish-gigaword",
        [None],
        domain_column="domain",
        max_bytes=cfg.get("hub_max_bytes", 0),
    )


def dynaword(cfg) -> HubCorpus:
    return HubCorpus(
        "danish-foundation-models/danish-dynaword",
        [None],
        domain_column="domain",
        max_bytes=cfg.get("hub_max_bytes", 0),
    )
