"""How much held-out text shares a document with training text: the old split and the new.

The old rule (split version 1) put each chunk in validation by a hash of its own id
("{doc.id}#{i}"), so a long document could sit on both sides. The new rule (data.plan_split)
hashes the document id. For each domain this prints the share of validation and test bytes
whose document also has text in the training split, under each rule:

    python benchmarks/split_leak.py --corpus ../shared/data/corpus

Only the text is read (no tokenizer, no model), so the figures do not depend on the machine.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np

from kennethlm_core.config import build_config, resolve
from kennethlm_core.data import build_corpus, chunk, plan_split, unit_hash
from kennethlm_core.plugins import get_registry


def old_rule_leak(corpus, val_fraction: float) -> dict[str, tuple[int, int]]:
    """Per domain: (validation bytes whose document has training chunks, validation bytes)."""
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for doc in corpus.documents():
        pieces = [(len(c.text.encode()), unit_hash(c.id) < val_fraction) for c in chunk(doc)]
        val = sum(n for n, held in pieces if held)
        leaked = val if any(not held for _, held in pieces) else 0
        out[doc.domain][0] += leaked
        out[doc.domain][1] += val
    return {d: (a, b) for d, (a, b) in out.items()}


def new_rule_leak(plan) -> dict[str, dict[str, tuple[int, int]]]:
    """Per held-out split and domain: (bytes whose document has text in another split, bytes).

    A document lies whole in one split by construction; this counts it from the chunks, so a
    bug in the layout would show."""
    doc_of_chunk = plan.chunk_doc
    splits_of_doc: dict[int, set[int]] = defaultdict(set)
    for name_index, name in enumerate(("train", "validation", "test")):
        for d in plan.documents(name):
            splits_of_doc[int(d)].add(name_index)
    out = {}
    for name in ("validation", "test"):
        per: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for c in plan.chunk_order(name):
            d = int(doc_of_chunk[c])
            domain = plan.domains[plan.doc_domain[d]]
            n = int(plan.chunk_bytes[c])
            per[domain][1] += n
            per[domain][0] += n if len(splits_of_doc[d]) > 1 else 0
        out[name] = {k: (a, b) for k, (a, b) in per.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default="sample")
    ap.add_argument("--val-fraction", type=float, default=0.05)
    ap.add_argument("--test-fraction", type=float, default=0.05)
    args = ap.parse_args()
    registry = get_registry()
    cfg = resolve(build_config(overrides={"corpus": args.corpus}), registry)
    corpus = build_corpus(cfg, registry)
    old = old_rule_leak(corpus, args.val_fraction)
    plan = plan_split(corpus, args.val_fraction, 0, args.test_fraction)
    new = new_rule_leak(plan)
    docs = np.bincount(plan.doc_domain, minlength=len(plan.domains))
    print(f"corpus {args.corpus}: share of held-out bytes whose document has training text")
    print(
        f"{'domain':24} {'documents':>9} {'old val':>9} {'new val':>9} {'new test':>9}"
        f" {'val bytes':>11} {'test bytes':>11}"
    )

    def share(pair):
        return f"{pair[0] / pair[1]:.1%}" if pair and pair[1] else "-"

    totals = {"old": [0, 0], "validation": [0, 0], "test": [0, 0]}
    for d, name in enumerate(plan.domains):
        row = {"old": old.get(name), **{k: new[k].get(name) for k in ("validation", "test")}}
        for key, pair in row.items():
            if pair:
                totals[key][0] += pair[0]
                totals[key][1] += pair[1]
        val_b = row["validation"][1] if row["validation"] else 0
        test_b = row["test"][1] if row["test"] else 0
        print(
            f"{name:24} {docs[d]:9,} {share(row['old']):>9} {share(row['validation']):>9}"
            f" {share(row['test']):>9} {val_b:11,} {test_b:11,}"
        )
    print(
        f"{'total':24} {docs.sum():9,} {share(totals['old']):>9} "
        f"{share(totals['validation']):>9} {share(totals['test']):>9} "
        f"{totals['validation'][1]:11,} {totals['test'][1]:11,}"
    )
    for note in plan.notes:
        print(f"note: {note}")


if __name__ == "__main__":
    main()
