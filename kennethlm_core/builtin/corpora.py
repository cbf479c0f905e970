"""Corpora: local files read with `datasets`, the embedded Danish sample, the hub corpora, and
any hub dataset with a text column (``hf:OWNER/NAME[:CONFIG]``).

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
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
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


class HubCorpus(Corpus):
    """A Hugging Face hub dataset with one config per source, read through ``datasets``.

    The first pass streams each source (at most ``max_bytes`` of text from each, 0: all) into a
    local snapshot, parquet files of ``id, text, domain, source, license`` under
    ``$KLM_CACHE/hub/``, one per source; every later pass and run reads the snapshot. Parallel
    processes download it once (``data.build_once``), and a download that gave no documents is
    never kept, so the next run tries again. (A snapshot written before ``source`` and
    ``license`` were kept has only the first three: its documents take their source from the
    file's name and have no licence.) A document's domain is the row's own label (a ``domain``
    column, or ``metadata.domain``), else ``domains[source]``, else the source's name; labels
    are lower-cased ("Wiki & Books" is "books", "Social Media" is "social"); its source is the
    config's name, its licence the row's ``license`` (or ``metadata.license``) where it has one.

    ``path`` reads a local copy of the dataset repository instead of the hub: a folder with
    the repository's README.md (its ``configs:`` list) and data files. ``sources`` picks
    configs (comma list; default: every config but the aggregates "default" and "meta").
    """

    AGGREGATES = ("default", "meta")
    text_column = "text"

    def __init__(
        self,
        repo: str,
        name: str,
        domains: dict[str, str] | None = None,
        path: str = "",
        sources: str = "",
        max_bytes: int = 0,
    ):
        self.repo, self.name, self.domains = repo, name, domains or {}
        self.path = str(Path(path).expanduser().resolve()) if path else ""
        self.sources = [s.strip() for s in sources.split(",") if s.strip()]
        self.max_bytes = max_bytes
        if self.path and not Path(self.path, "README.md").is_file():
            raise DataError(
                f"hub_path {path} is not a copy of a dataset repository (no README.md with its "
                f"configs); give the folder that holds README.md and the data files"
            )

    def fingerprint(self) -> str:
        """The repository and what is read of it; for a local copy (hub_path), its files'
        names and contents, as for a local corpus (not where the copy is, nor its times)."""
        h = hashlib.sha256(f"{self.repo}\0{self.sources}\0{self.max_bytes}".encode())
        if not self.path:
            return h.hexdigest()[:16]
        root = Path(self.path).resolve()
        return contents_hash(sorted(f for f in root.rglob("*") if f.is_file()), root, h)

    def documents(self) -> Iterator[Document]:
        import pyarrow.parquet as pq

        from kennethlm_core.data import build_once, cache_root

        folder = re.sub(r"[^\w.-]+", "-", self.name)  # hf:owner/name:config -> hf-owner-name-config
        snapshot = cache_root() / "hub" / f"{folder}-{self.fingerprint()}"
        build_once(snapshot, lambda: _snapshot_rows(snapshot) > 0, lambda: self._download(snapshot))
        for file in sorted(snapshot.glob("*.parquet")):
            source = file.stem.split("-", 1)[-1]  # written as NNNN-<source>.parquet
            for batch in pq.ParquetFile(file).iter_batches(batch_size=1000):
                for row in batch.to_pylist():
                    yield Document(
                        row["id"],
                        row["text"],
                        row["domain"],
                        row.get("source") or source,
                        row.get("license") or "",
                    )

    def _download(self, snapshot: Path) -> None:
        """Stream every chosen source into parquet files, then publish the folder at once;
        refuse to publish one without documents (a failed or filtered download), which later
        runs would otherwise read as the corpus. An empty one kept by an older klm goes."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        datasets = logs.quiet_datasets()
        schema = pa.schema(
            [(c, pa.string()) for c in ("id", "text", "domain", "source", "license")]
        )
        where = self.path or self.repo
        with self._hub_errors():
            chosen = self._chosen(datasets.get_dataset_config_names(where))
        snapshot.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=snapshot.parent))
        try:
            for i, source in enumerate(chosen):
                rows = self._stream(datasets, where, source)
                with pq.ParquetWriter(tmp / f"{i:04d}-{source}.parquet", schema) as writer:
                    for batch in _batched(rows, 1000):
                        writer.write_table(pa.Table.from_pylist(batch, schema=schema))
            if _snapshot_rows(tmp) == 0:
                raise DataError(
                    f"the download of {self.name} from {where} gave no documents (sources: "
                    f"{', '.join(chosen)}; rows without text are skipped), so nothing was "
                    "cached and the next run downloads it again"
                )
            shutil.rmtree(snapshot, ignore_errors=True)
            os.rename(tmp, snapshot)
        except OSError:
            if not snapshot.exists():  # another process published it first: fine
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _chosen(self, configs: list[str]) -> list[str]:
        """The configs to read: those asked for (``sources``), else all but the aggregates."""
        sources = [c for c in configs if c not in self.AGGREGATES]
        unknown = [s for s in self.sources if s not in sources]
        if unknown:
            raise DataError(
                f"{self.name} has no source '{unknown[0]}'; its sources: {', '.join(sources)}"
            )
        return self.sources or sources

    def _check_columns(self, row: dict) -> None:
        """Called with each source's first row; the curated corpora need no check."""

    def _stream(self, datasets, where: str, source: str) -> Iterator[dict[str, str]]:
        seen = 0
        with self._hub_errors():
            stream = datasets.load_dataset(where, source, split="train", streaming=True)
            for n, row in enumerate(stream):
                if n == 0:
                    self._check_columns(row)
                text = row.get(self.text_column) or ""
                if not text:
                    continue
                yield {
                    "id": str(row.get("id") or f"{source}:{n}"),
                    "text": text,
                    "domain": self._domain(row, source),
                    "source": source,
                    "license": _row_license(row),
                }
                seen += len(text.encode("utf-8"))
                if self.max_bytes and seen >= self.max_bytes:
                    return

    def _domain(self, row: dict, source: str) -> str:
        meta = row.get("metadata")
        label = row.get("domain") or (meta.get("domain") if isinstance(meta, dict) else None)
        return domain_label(label or self.domains.get(source) or source)

    @contextmanager
    def _hub_errors(self):
        try:
            yield
        except DataError:
            raise
        except Exception as e:
            if self.path:
                raise DataError(f"cannot read {self.path} ({first_line(e)})") from None
            raise DataError(
                f"cannot load '{self.repo}' from the Hugging Face hub ({first_line(e)}); "
                "offline, download it elsewhere and pass --corpus PATH "
                "(or --set hub_path=DIR for a copy of the dataset repository)"
            ) from None


class HubDataset(HubCorpus):
    """Any hub dataset with a text column: ``--corpus hf:OWNER/NAME[:CONFIG]``.

    One config is read: the one named, else the dataset's only config (or its "default"). The
    text is the column ``text_column``; the domain is the value of ``domain_column`` (lower-cased
    like the hub corpora's labels), or, without one, the dataset's name, a single domain. Its
    snapshot, ``path`` and ``max_bytes`` work as for HubCorpus; the fingerprint covers the
    dataset, the config and both columns.
    """

    def __init__(
        self,
        spec: str,
        text_column: str = "text",
        domain_column: str = "",
        path: str = "",
        max_bytes: int = 0,
    ):
        repo, config = parse_hf_spec(spec)
        super().__init__(repo, spec, path=path, max_bytes=max_bytes)
        self.sources = [config] if config else []  # a config name is one name, commas and all
        self.text_column, self.domain_column = text_column, domain_column
        self.single_domain = domain_label(repo.split("/")[1])

    def fingerprint(self) -> str:
        columns = f"{super().fingerprint()}\0{self.text_column}\0{self.domain_column}"
        return hashlib.sha256(columns.encode()).hexdigest()[:16]

    def _chosen(self, configs: list[str]) -> list[str]:
        if self.sources:
            if self.sources[0] not in configs:
                raise DataError(
                    f"{self.repo} has no config '{self.sources[0]}'; its configs: "
                    f"{', '.join(configs)}"
                )
            return self.sources
        if len(configs) == 1:
            return configs
        if "default" in configs:
            return ["default"]
        raise DataError(
            f"{self.repo} has {len(configs)} configs ({', '.join(configs)}); choose one: "
            f"--corpus hf:{self.repo}:{configs[0]}"
        )

    def _check_columns(self, row: dict) -> None:
        columns = ", ".join(row)
        if self.text_column not in row:
            raise DataError(
                f"{self.name} has no column '{self.text_column}' (its columns: {columns}); "
                "name the text column with --set text_column=COLUMN"
            )
        value = row[self.text_column]
        if value is not None and not isinstance(value, str):
            texts = ", ".join(c for c, v in row.items() if isinstance(v, str)) or "none"
            raise DataError(
                f"column '{self.text_column}' of {self.name} holds {type(value).__name__}, "
                f"not text; name a text column with --set text_column=COLUMN (its text "
                f"columns: {texts})"
            )
        if self.domain_column and self.domain_column not in row:
            raise DataError(
                f"{self.name} has no column '{self.domain_column}' (its columns: {columns}); "
                "name the domain column with --set domain_column=COLUMN, or leave it out for "
                "one domain"
            )

    def _domain(self, row: dict, source: str) -> str:
        label = row.get(self.domain_column) if self.domain_column else None
        return domain_label(label) if label not in (None, "") else self.single_domain


HF_SPEC = "hf:OWNER/NAME or hf:OWNER/NAME:CONFIG"


def parse_hf_spec(spec: str) -> tuple[str, str]:
    """'hf:owner/name:config' -> ('owner/name', 'config'); the config may be left out."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    repo, colon, config = spec.removeprefix("hf:").partition(":")
    problem = ""
    if not spec.startswith("hf:"):
        problem = "it names no dataset"
    elif repo.count("/") != 1:
        problem = "the dataset must be OWNER/NAME"
    elif colon and not config.strip():
        problem = "the config after ':' is empty"
    else:
        try:
            validate_repo_id(repo)
        except HFValidationError:
            problem = (
                "a dataset name has letters, digits, '-', '_' and '.' (no '--' or '..', "
                "at most 96 characters)"
            )
    if problem:
        raise DataError(
            f"malformed hub corpus '{spec}': {problem}; give --corpus {HF_SPEC} "
            "(for example hf:wikimedia/wikipedia:20231101.da)"
        )
    return repo, config.strip()


def domain_label(value) -> str:
    """A domain as klm names it: lower case, spaces as '-', DAGW's two long labels short."""
    label = str(value).strip().lower()
    return DOMAIN_LABELS.get(label, label.replace(" ", "-"))


DOMAIN_LABELS = {"wiki & books": "books", "social media": "social"}


def _snapshot_rows(folder: Path) -> int:
    """The documents in a snapshot folder (0 when there is none), from the files' footers."""
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(f).metadata.num_rows for f in folder.glob("*.parquet"))


def _row_license(row: dict) -> str:
    """The licence a hub row states (a ``license`` column, or ``metadata.license`` as in
    DAGW), else ""."""
    meta = row.get("metadata")
    for where in (row, meta if isinstance(meta, dict) else {}):
        for column in LICENSE_COLUMNS:
            if where.get(column):
                return _label(where[column])
    return ""


def _batched(rows: Iterator[dict], n: int) -> Iterator[list[dict]]:
    batch = []
    for row in rows:
        batch.append(row)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def path_corpus(cfg) -> PathCorpus:
    return PathCorpus(cfg.corpus)


def sample_corpus(cfg) -> PathCorpus:
    corpus = PathCorpus(SAMPLE)
    corpus.name = "sample"
    return corpus


# Dynaword's sources carry no domain label in their rows (DAGW's do, in metadata.domain); a
# source not listed here is a domain of its own.
DYNAWORD_DOMAINS = {
    "adl": "books",
    "botxt": "other",
    "cellar": "legal",
    "danske-taler": "conversation",
    "dannet": "other",
    "depbank": "other",
    "domsdatabasen": "legal",
    "ep": "conversation",
    "eur-lex-sum-da": "legal",
    "fm-udgivelser": "legal",
    "ft": "conversation",
    "grundtvig": "books",
    "gutenberg": "books",
    "hest": "social",
    "jvj": "books",
    "lexdk": "encyclopedic",
    "memo": "books",
    "miljoeportalen": "web",
    "naat": "conversation",
    "ncc_books": "books",
    "ncc_newspaper": "news",
    "nordjyllandnews": "news",
    "opensubtitles": "conversation",
    "relig": "books",
    "retsinformationdk": "legal",
    "retspraksis": "legal",
    "skat": "legal",
    "spont": "conversation",
    "synne": "other",
    "tv2r": "news",
    "wiki": "encyclopedic",
    "wikibooks": "books",
    "wikisource": "books",
}


def _hub(cfg, repo: str, name: str, domains: dict[str, str] | None = None) -> HubCorpus:
    return HubCorpus(
        repo,
        name,
        domains,
        path=cfg.get("hub_path", ""),
        sources=cfg.get("hub_sources", ""),
        max_bytes=cfg.get("hub_max_bytes", 0),
    )


def dagw(cfg) -> HubCorpus:
    return _hub(cfg, "danish-foundation-models/danish-gigaword", "dagw")


def dynaword(cfg) -> HubCorpus:
    return _hub(cfg, "danish-foundation-models/danish-dynaword", "dynaword", DYNAWORD_DOMAINS)


def hf(cfg) -> HubDataset:
    return HubDataset(
        cfg.corpus,
        text_column=cfg.get("text_column", "text"),
        domain_column=cfg.get("domain_column", ""),
        path=cfg.get("hub_path", ""),
        max_bytes=cfg.get("hub_max_bytes", 0),
    )
