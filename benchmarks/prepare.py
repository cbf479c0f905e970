"""Preparing a corpus: tokenizer training + token cache, cold and warm; bytes per token.

    python benchmarks/prepare.py [--corpus ../shared/data/corpus] [--skip-bytes-per-token]

Every measurement runs `prepare_data` in a fresh child process with a private, empty
KLM_CACHE and datasets cache (the first run is really cold: reading the files, training the
tokenizer, encoding everything). Wall time is the child's, start-up included; peak RSS is the
child's (os.wait4, which counts the process and the children it waited for), and so is the
CPU time (user + system, all threads: on a busy machine it says more than the wall time).
The time inside prepare_data (start-up and imports left out) is shown too. The second run
with the same corpus and tokenizer must only find the cache. Bytes per token is measured on
the validation split (its UTF-8 bytes / its text tokens, document tokens left out).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOKENIZERS = [("char", 0), ("byte", 0), ("bpe", 1024), ("bpe", 4096), ("bpe", 16384)]
TOKENIZERS += [("unigram", 4096)]


def child(corpus: str, tokenizer: str, vocab_size: int) -> None:
    """Prepare the data in this process and print what the parent reports, as JSON."""
    from kennethlm_core.config import build_config, resolve
    from kennethlm_core.data import prepare_data
    from kennethlm_core.plugins import get_registry

    registry = get_registry()
    cfg = build_config(overrides={"corpus": corpus, "tokenizer": tokenizer})
    cfg = resolve(cfg.replace(vocab_size=vocab_size), registry)
    start = time.perf_counter()
    data = prepare_data(cfg, registry, log=lambda m: print(m, file=sys.stderr))
    seconds = time.perf_counter() - start
    val = data.val
    print(
        json.dumps(
            {
                "reused": data.reused,
                "prepare_s": seconds,
                "vocab_size": data.tokenizer.vocab_size,
                "train_tokens": len(data.train.tokens),
                "val_bytes": val.n_bytes,
                "val_bytes_per_token": val.n_bytes / (len(val.tokens) - val.n_documents),
            }
        )
    )


def measure(corpus: str, tokenizer: str, vocab_size: int, env: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", corpus, tokenizer, str(vocab_size)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"prepare failed: {' '.join(cmd)}")
    cpu = usage.ru_utime + usage.ru_stime
    return {**json.loads(out), "wall_s": wall, "cpu_s": cpu, "peak_rss_mb": usage.ru_maxrss / 1024}


def corpus_mb(path: str) -> float:
    from kennethlm_core.builtin.corpora import find_files

    return sum(f.stat().st_size for f in find_files(path)) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=str(REPO.parent / "shared" / "data" / "corpus"))
    parser.add_argument("--skip-bytes-per-token", action="store_true")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        corpus, tokenizer, vocab = args.child
        return child(corpus, tokenizer, int(vocab))

    from kennethlm_core.device import cpu_name

    scratch = Path(tempfile.mkdtemp(prefix="klm-bench-"))
    env = dict(os.environ, KLM_CACHE=str(scratch / "klm"), HF_DATASETS_CACHE=str(scratch / "hf"))
    load = os.getloadavg()[0]
    print(
        f"corpus {args.corpus} ({corpus_mb(args.corpus):.1f} MB of files) · {os.cpu_count()} "
        f"CPUs, {cpu_name()} · load average {load:.1f} at start · cache {scratch}"
    )
    cold = measure(args.corpus, "bpe", 4096, env)
    warm = measure(args.corpus, "bpe", 4096, env)
    assert not cold["reused"] and warm["reused"]
    for name, r, target in (("cold", cold, 180), ("warm", warm, 5)):
        print(
            f"{name}, bpe 4096: {r['wall_s']:6.1f} s wall (target {target} s: "
            f"{r['wall_s'] / target:.2f}x), {r['prepare_s']:.1f} s in prepare_data, "
            f"{r['cpu_s']:.0f} s CPU, peak RSS {r['peak_rss_mb']:.0f} MB (target 2048 MB: "
            f"{r['peak_rss_mb'] / 2048:.2f}x)"
        )
    print(f"{cold['train_tokens']:,} training tokens; the warm run reused the cache")
    if args.skip_bytes_per_token:
        shutil.rmtree(scratch, ignore_errors=True)
        return
    print(f"bytes per token on the validation split ({cold['val_bytes']:,} bytes):")
    for tokenizer, vocab in TOKENIZERS:
        if (tokenizer, vocab) == ("bpe", 4096):
            r, how = cold, "the cold run above"
        else:
            r = measure(args.corpus, tokenizer, vocab, env)
            how = f"prepared in {r['wall_s']:.0f} s, {r['cpu_s']:.0f} s CPU"
        print(
            f"  {tokenizer:8} {r['vocab_size']:>6,} tokens  {r['val_bytes_per_token']:.3f}"
            f"   ({how}, peak RSS {r['peak_rss_mb']:.0f} MB)"
        )
    print(f"load average {os.getloadavg()[0]:.1f} at the end (other work on this machine)")
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
