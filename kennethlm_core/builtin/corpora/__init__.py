"""Corpora: local files read with `datasets` and the embedded Danish sample (``local``), the hub
corpora ``dagw`` and ``dynaword`` (``hub``), and any hub dataset with a text column,
``hf:OWNER/NAME[:CONFIG]`` (``hub_dataset``). Every name is importable from here too.
"""

from kennethlm_core.builtin.corpora.hub import (
    DOMAIN_LABELS,
    DYNAWORD_DOMAINS,
    HubCorpus,
    dagw,
    domain_label,
    dynaword,
)
from kennethlm_core.builtin.corpora.hub_dataset import HF_SPEC, HubDataset, hf, parse_hf_spec
from kennethlm_core.builtin.corpora.local import (
    LICENSE_COLUMNS,
    SAMPLE,
    SUFFIXES,
    PathCorpus,
    builder_for,
    contents_hash,
    find_files,
    path_corpus,
    sample_corpus,
)

__all__ = [
    "DOMAIN_LABELS",
    "DYNAWORD_DOMAINS",
    "HF_SPEC",
    "LICENSE_COLUMNS",
    "SAMPLE",
    "SUFFIXES",
    "HubCorpus",
    "HubDataset",
    "PathCorpus",
    "builder_for",
    "contents_hash",
    "dagw",
    "domain_label",
    "dynaword",
    "find_files",
    "hf",
    "parse_hf_spec",
    "path_corpus",
    "sample_corpus",
]
