"""From a corpus to batches: a split by document, a token cache on disk, weighted windows.

1. Every document goes to one split, ``train``, ``validation`` or ``test``, by a hash of its
   id: the split of a document never changes when other documents are added, and no document
   has text in two splits. Each domain gets at least one validation and one test document
   when it has enough documents; a domain too small for that is said so (``Plan.notes``).
2. Documents are cut into chunks of at most CHUNK_CHARS characters (at a line break or space
   when there is one). Chunks are units of bookkeeping, not of context: a document's chunks
   stay next to each other, behind a single document token, so a chunk is scored with its
   document's text before it as context.
3. Validation and test chunks are ordered for slicing: the first chunk of each domain's first
   document, then every other chunk by a hash of its id. Any prefix of that order is a fixed,
   tokenizer-independent slice ("the first 64 KB of validation") that covers every domain.
4. Each split is tokenized once into memory-mapped arrays under ``$KLM_CACHE`` (default
   ~/.cache/kennethlm), keyed by the corpus and tokenizer fingerprints; later runs reuse
   them. Building streams: chunks are encoded in batches (``Tokenizer.encode_batch``; the
   tokenizers-library ones use every core) and appended to a file, which is then copied into
   the three split arrays. Neither the text nor its tokens are ever held in memory whole.
   Processes that need the same cache entry (or tokenizer) build it once: the first holds a
   file lock while it builds, the others wait and reuse it (``build_once``). A corpus that
   changes while it is being read is refused, and nothing of it is cached.
5. Training windows are drawn domain first, by the weights of the mix (``--mix``; by default
   each domain's share of the training tokens), then at a uniform offset in that domain.

The modules, from the bottom: ``cache`` (the cache folder, ``build_once``), ``splits`` (1-3:
chunks and the split plan), ``tokens`` (a tokenized split, the prepared splits, their
statistics), ``prepare`` (4: the token cache), ``batches`` (5: the mix and the windows). Every
name is importable from ``kennethlm_core.data`` itself, as plugins and tests do.
"""

from kennethlm_core.data.batches import Batches, format_mix, mix_weights
from kennethlm_core.data.cache import build_lock, build_once, cache_root
from kennethlm_core.data.prepare import BATCH_CHARS, FORMAT, prepare_data, prepare_text
from kennethlm_core.data.splits import (
    CHUNK_CHARS,
    SPLIT_VERSION,
    SPLITS,
    Plan,
    build_corpus,
    chunk,
    chunks_of,
    plan_split,
    survey,
    unit_hash,
)
from kennethlm_core.data.tokens import (
    BYTES,
    DOC,
    DOC_START,
    DOMAIN,
    END,
    START,
    PreparedData,
    TokenSplit,
    domain_stats,
    token_dtype,
)

# isort: split
# Imported from here before data was a package (tests, the config's parser), kept importable.
from kennethlm_core.config import parse_mix  # noqa: F401
from kennethlm_core.data.splits import _absorb  # noqa: F401

__all__ = [
    "BATCH_CHARS",
    "BYTES",
    "CHUNK_CHARS",
    "DOC",
    "DOC_START",
    "DOMAIN",
    "END",
    "FORMAT",
    "SPLITS",
    "SPLIT_VERSION",
    "START",
    "Batches",
    "Plan",
    "PreparedData",
    "TokenSplit",
    "build_corpus",
    "build_lock",
    "build_once",
    "cache_root",
    "chunk",
    "chunks_of",
    "domain_stats",
    "format_mix",
    "mix_weights",
    "plan_split",
    "prepare_data",
    "prepare_text",
    "survey",
    "token_dtype",
    "unit_hash",
]
