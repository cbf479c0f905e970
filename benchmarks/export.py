"""klm export of the record recipe at its real size: size on disk, load time, logit difference.

    python benchmarks/export.py [--steps 2] [--out DIR]

Trains the record recipe for a few steps on the embedded sample (the weights' values do not
change the size or the load time), exports it, then loads it in a fresh process with
transformers alone, as a user would, and prints what it measured.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOAD = """
import sys, time
t = time.perf_counter()
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
imported = time.perf_counter() - t
t = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1], trust_remote_code=True)
loaded = time.perf_counter() - t
print(f"{imported:.2f} {loaded:.2f}")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    from kennethlm_core.config import build_config, resolve
    from kennethlm_core.export import export_run
    from kennethlm_core.plugins import get_registry
    from kennethlm_core.train import train

    registry = get_registry()
    root = args.out or Path(tempfile.mkdtemp(prefix="klm-export-"))
    overrides = {"steps": args.steps, "eval_every": args.steps, "final_eval_bytes": 65536}
    cfg = resolve(build_config("record", overrides=overrides), registry)
    train(cfg, root / "run", registry=registry, force=True)
    t = time.perf_counter()
    done = export_run(root / "run", root / "model", force=True, registry=registry)
    exported = time.perf_counter() - t
    proc = subprocess.run(
        [sys.executable, "-c", LOAD, str(done.out)], capture_output=True, text=True, check=True
    )
    imported, loaded = proc.stdout.split()
    print(f"record recipe, {done.params:,} parameters, exported as {done.kind} in {exported:.1f} s")
    for f in sorted(done.out.iterdir()):
        print(f"  {f.name:28} {f.stat().st_size:>12,} bytes")
    print(f"  {'total':28} {done.bytes:>12,} bytes")
    print(f"max |logit difference| against klm: {done.max_logit_diff:.2e}")
    print(f"fresh process: import torch+transformers {imported} s, from_pretrained {loaded} s")


if __name__ == "__main__":
    main()
