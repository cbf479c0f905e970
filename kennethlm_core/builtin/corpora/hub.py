"""The hub corpora ``dagw`` and ``dynaword`` (``HubCorpus``: a Hugging Face dataset with a
config per source, snapshotted locally on the first pass), and the helpers of that snapshot."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kennethlm_core import logs
from kennethlm_core.builtin.corpora.local import LICENSE_COLUMNS, _label, contents_hash
from kennethlm_core.components import Corpus, Document
from kennethlm_core.data import build_once, cache_root
from kennethlm_core.errors import DataError, first_line


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
        import pyarrow.parquet as pq  # pyarrow is heavy: imported only to read or write parquet

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
        import pyarrow as pa  # pyarrow is heavy: imported only to read or write parquet
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


def domain_label(value) -> str:
    """A domain as klm names it: lower case, spaces as '-', DAGW's two long labels short."""
    label = str(value).strip().lower()
    return DOMAIN_LABELS.get(label, label.replace(" ", "-"))


DOMAIN_LABELS = {"wiki & books": "books", "social media": "social"}


def _snapshot_rows(folder: Path) -> int:
    """The documents in a snapshot folder (0 when there is none), from the files' footers."""
    import pyarrow.parquet as pq  # pyarrow is heavy: imported only to read or write parquet

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
