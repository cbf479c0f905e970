"""Any hub dataset with a text column, ``--corpus hf:OWNER/NAME[:CONFIG]`` (``HubDataset``, a
``HubCorpus`` reading one config), and the check of that spec (``parse_hf_spec``)."""

from __future__ import annotations

import hashlib

from huggingface_hub.utils import HFValidationError, validate_repo_id

from kennethlm_core.builtin.corpora.hub import HubCorpus, domain_label
from kennethlm_core.errors import DataError


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


def hf(cfg) -> HubDataset:
    return HubDataset(
        cfg.corpus,
        text_column=cfg.get("text_column", "text"),
        domain_column=cfg.get("domain_column", ""),
        path=cfg.get("hub_path", ""),
        max_bytes=cfg.get("hub_max_bytes", 0),
    )
