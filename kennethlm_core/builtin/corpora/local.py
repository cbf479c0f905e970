"""Local corpora: files read with `datasets`, and the embedded Danish sample; the fingerprint
of a set of files (``contents_hash``, which a local copy of a hub dataset uses too).

A local corpus is a file, a folder (searched recursively) or a glob of .jsonl, .jsonl.gz,
.json, .parquet or .txt files. Tables need a ``text`` column; ``domain`` and ``id`` are
optional (missing domain: every document is in domain "default"), and so are ``source`` and
``license`` (or ``licence``), which only ``klm data export`` reads. A .txt file is one document;
bytes that are not UTF-8 are replaced by U+FFFD and the count is reported.
"""

from __future__ import annotations

import glob
import hashlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

from kennethlm_core import logs
from kennethlm_core.components import Corpus, Document
from kennethlm_core.errors import DataError, first_line

SUFFIXES = {
    ".jsonl": "json",
    ".jsonl.gz": "json",
    ".json": "json",
    ".json.gz": "json",
    ".parquet": "parquet",
    ".txt": "text",
}
SAMPLE = Path(__file__).resolve().parents[2] / "sample" / "danish_sample.jsonl"


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


def contents_hash(files: list[Path], root: Path, h) -> str:
    """``h`` updated with each file's name relative to ``root`` and its contents' hash. Read
    every time, never cached by size and time: a file rewritten with the same size and time
    (cp -p, rsync -t) is a change too (about 1 GB/s: 40 ms for ../shared/data/corpus)."""
    for f in files:
        with open(f, "rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        h.update(f"{f.resolve().relative_to(root).as_posix()}\0{digest}\n".encode())
    return h.hexdigest()[:16]


class PathCorpus(Corpus):
    """Documents from local files."""

    def __init__(self, spec: str | os.PathLike):
        self.spec = str(spec)
        self.files = find_files(self.spec)
        self.name = Path(self.spec).name or self.spec

    def fingerprint(self) -> str:
        """The files' names (relative to the folder they share) and contents, so a copy of the
        corpus elsewhere, or the same files with new times, has the same fingerprint and its
        runs resume; any changed byte gives a new one."""
        root = Path(os.path.commonpath([f.resolve().parent for f in self.files]))
        return contents_hash(self.files, root, hashlib.sha256())

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
        if path.stat().st_size == 0:  # an empty file holds no documents
            return
        datasets = logs.quiet_datasets()
        try:
            ds = datasets.load_dataset(builder_for(path), data_files=str(path), split="train")
        except Exception as e:
            kind = builder_for(path)
            expected = "one JSON object per line, in UTF-8" if kind == "json" else f"a {kind} file"
            raise DataError(
                f"{path}: cannot read it as {kind} ({first_line(e)}); it must be {expected}, "
                "with a 'text' column: fix the file or leave it out of --corpus"
            ) from None
        if "text" not in ds.column_names:
            raise DataError(
                f"{path}: no 'text' column (columns: {', '.join(ds.column_names) or 'none'}); "
                "a corpus table needs 'text', and may have 'domain' and 'id'"
            )
        wanted = ("id", "text", "domain", "source", *LICENSE_COLUMNS)
        columns = [c for c in wanted if c in ds.column_names]
        licence = next((c for c in LICENSE_COLUMNS if c in columns), None)
        row = 0
        for batch in _utf8_rows(ds.select_columns(columns).iter(batch_size=1000), path):
            n = len(batch["text"])
            ids = batch.get("id") or [None] * n
            domains = batch.get("domain") or [None] * n
            sources = batch.get("source") or [None] * n
            licences = batch.get(licence) or [None] * n
            for i, text, domain, source, lic in zip(
                ids, batch["text"], domains, sources, licences, strict=True
            ):
                if text:
                    yield Document(
                        id=str(i) if i is not None else f"{path.name}:{row}",
                        text=text,
                        domain=str(domain or "default"),
                        source=_label(source),
                        license=_label(lic),
                    )
                row += 1


LICENSE_COLUMNS = ("license", "licence")


def _label(value) -> str:
    """A source or licence cell as text ("" for a missing one)."""
    return "" if value is None else str(value).strip()


def _utf8_rows(batches: Iterator[dict], path: Path) -> Iterator[dict]:
    """The batches, or one clear error for text that is not UTF-8 (JSON and parquet text must
    be; a .txt file is decoded with replacement instead, see PathCorpus)."""
    try:
        yield from batches
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: text that is not UTF-8 ({e.reason} at byte {e.start} of a value); "
            "convert the file to UTF-8 (iconv -f latin1 -t utf-8), or give the text as .txt, "
            "which is decoded with replacement"
        ) from None


def path_corpus(cfg) -> PathCorpus:
    return PathCorpus(cfg.corpus)


def sample_corpus(cfg) -> PathCorpus:
    corpus = PathCorpus(SAMPLE)
    corpus.name = "sample"
    return corpus
