"""Bad input, one table: every case runs `klm` in a process of its own (where a library's
logger or handler would show) and must give exactly one line on stderr naming the problem and
the fix, exit code 2, no traceback, and leave every file of the user (the run folder, the
corpus, the experiment) exactly as it was.

Each case is ``(prepare, args, needles)``: ``prepare(case_dir, run)`` writes what the case
needs into ``case_dir`` (a copy of a trained run, a broken corpus, ...) and returns values
that ``args`` may name as ``{key}``.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from kennethlm_core.cli import main

from .conftest import PYTHON, assert_one_line_error
from .test_plugins import make_dist

RUN_ARGS = [
    "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "16",
    "--batch-size", "4", "--steps", "6", "--eval-every", "3", "--set", "warmup_steps=2",
    "--set", "eval_bytes=1024", "--set", "final_eval_bytes=2048", "-q",
]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bad-input") / "run"
    with pytest.raises(SystemExit) as e:
        main(["run", *RUN_ARGS, "--out", str(out)])
    assert e.value.code == 0
    return out


def copy_run(case: Path, run: Path) -> Path:
    shutil.copytree(run, case / "run")
    return case / "run"


def damage(name: str, how):
    """Copy the run and replace one of its files by ``how(old bytes) -> new bytes``."""

    def prepare(case, run):
        path = copy_run(case, run) / name
        path.write_bytes(how(path.read_bytes()))
        return {"run": case / "run"}

    return prepare


def corpus(rows=None, raw: bytes | None = None, name="corpus.jsonl"):
    def prepare(case, run):
        path = case / name
        if raw is not None:
            path.write_bytes(raw)
        else:
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        return {"corpus": path}

    return prepare


MARKER = Path(tempfile.gettempdir()) / "klm-test-pickle-was-loaded"


class Payload:
    """Unpickling this touches MARKER: proof that code ran."""

    def __reduce__(self):
        return (Path.touch, (MARKER,))


def pickled(_old: bytes) -> bytes:
    return pickle.dumps({"model.wte.weight": Payload()})


def other_vocabulary(case, run):
    from kennethlm_core.builtin.tokenizers import CharTokenizer

    copy_run(case, run)
    tok = CharTokenizer()
    tok.train(["abc æøå"])  # far fewer characters than the run's tokenizer knows
    tok.save(case / "run" / "tokenizer")
    return {"run": case / "run"}


def not_a_run(case, run):
    (case / "notes").mkdir()
    (case / "notes" / "notes.txt").write_text("my notes")
    return {"dir": case / "notes"}


def a_file(case, run):
    (case / "results.txt").write_text("my results")
    return {"file": case / "results.txt"}


def nothing(case, run):
    return {"run": run}


def run_copy(case, run):
    return {"run": copy_run(case, run)}


SANE = ["--steps", "2", "-q"]
CORPUS_RUN = ["run", "--corpus", "{corpus}", *SANE, "--out", "{corpus}.run"]
TEXT = [{"text": "Der var engang en lille by ved havet. " * 20, "domain": "news"}] * 3

CASES = {
    # names
    "unknown plugin name": (nothing, ["run", "--attention", "flsh"], ["unknown attention 'flsh'"]),
    "unknown slot": (nothing, ["list-plugins", "--slot", "posem"], ["did you mean 'posemb'"]),
    "unknown corpus name": (nothing, ["run", "--corpus", "dagv"], ["did you mean 'dagw'"]),
    "unknown task": (nothing, ["eval", "{run}", "--task", "sentimnt"], ["unknown task"]),
    "unknown setting": (nothing, ["run", "--set", "n_layers=2"], ["did you mean 'n_layer'"]),
    # impossible sizes and settings
    "width not divisible by heads": (
        nothing,
        ["run", "--n-embd", "100", "--n-head", "3"],
        ["must be divisible by n_head (3)", "try --n-embd 99"],
    ),
    "zero layers": (nothing, ["run", "--n-layer", "0"], ["n_layer must be at least 1"]),
    "negative learning rate": (nothing, ["run", "--lr", "-0.1"], ["lr must be positive"]),
    "dropout of 1.5": (nothing, ["run", "--dropout", "1.5"], ["dropout must be in [0, 1)"]),
    "no budget": (nothing, ["run", "--steps", "0"], ["no training budget", "--steps N"]),
    "a model too big for memory": (
        nothing,
        ["run", "--n-layer", "64", "--n-embd", "65536", "--n-head", "64"],
        ["training needs about", "smaller --n-embd"],
    ),
    "context longer than the corpus allows": (
        corpus(TEXT),
        ["run", "--corpus", "{corpus}", "--block-size", "4096", *SANE],
        ["too few for one window of block_size 4096", "smaller --block-size"],
    ),
    "every mix weight zero": (nothing, ["run", "--mix", "news=0"], ["give one a positive weight"]),
    "--nproc 0": (nothing, ["run", "--nproc", "0"], ["--nproc must be at least 1"]),
    "impossible plugin pair (linear + alibi)": (
        nothing,
        ["run", "--attention", "linear", "--posemb", "alibi"],
        ["posemb 'alibi' cannot be used with attention 'linear'", "attentions that do: "],
    ),
    # corpora
    "empty corpus file": (corpus(raw=b""), CORPUS_RUN, ["has no text"]),
    "corpus without a text column": (
        corpus([{"body": "tekst"}] * 3),
        CORPUS_RUN,
        ["no 'text' column (columns: body)"],
    ),
    "corpus of empty texts": (corpus([{"text": ""}] * 3), CORPUS_RUN, ["has no text"]),
    "non-UTF-8 bytes in a .jsonl corpus": (
        corpus(raw=b'{"text": "bl\xe5b\xe6rgr\xf8d"}\n'),
        CORPUS_RUN,
        ["corpus.jsonl: text that is not UTF-8", "convert the file to UTF-8"],
    ),
    "corpus that is not JSON": (
        corpus(raw=b"this is not json\n"),
        CORPUS_RUN,
        ["corpus.jsonl: cannot read it as json", "one JSON object per line", "fix the file"],
    ),
    "hub unreachable": (
        nothing,
        ["run", "--corpus", "dagw", *SANE, "--out", "{run}.hub"],
        ["danish-foundation-models/danish-gigaword", "--corpus PATH"],
    ),
    # run folders and checkpoints
    "truncated model.safetensors": (
        damage("model.safetensors", lambda b: b[: len(b) // 2]),
        ["eval", "{run}"],
        ["model.safetensors is truncated or not a safetensors file", "train the run again"],
    ),
    "truncated checkpoint, --resume": (
        damage("checkpoint.safetensors", lambda b: b[: len(b) - 100]),
        ["run", "--resume", "{run}", "--steps", "8", "-q"],
        ["checkpoint.safetensors is truncated or not a safetensors file"],
    ),
    "a pickle as checkpoint.safetensors": (
        damage("checkpoint.safetensors", pickled),
        ["run", "--resume", "{run}", "--steps", "8", "-q"],
        ["not a safetensors file"],
    ),
    "a pickle as model.safetensors": (
        damage("model.safetensors", pickled),
        ["sample", "{run}", "--max-new-tokens", "3"],
        ["not a safetensors file"],
    ),
    "corrupt tokenizer.json": (
        damage("tokenizer/tokenizer.json", lambda b: b[: len(b) // 2]),
        ["sample", "{run}", "--max-new-tokens", "3"],
        ["tokenizer.json is corrupt", "restore the file"],
    ),
    "a pickle as tokenizer.json": (
        damage("tokenizer/tokenizer.json", pickled),
        ["sample", "{run}", "--max-new-tokens", "3"],
        ["tokenizer.json is corrupt"],
    ),
    "checkpoint vocabulary not matching its tokenizer": (
        other_vocabulary,
        ["sample", "{run}", "--max-new-tokens", "3"],
        ["wte.weight has shape", "were config.json or the tokenizer changed?"],
    ),
    "corrupt config.json": (
        damage("config.json", lambda b: b[:10]),
        ["eval", "{run}"],
        ["is not a valid run config", "restore it"],
    ),
    "--resume on a folder that is not a run": (
        not_a_run,
        ["run", "--resume", "{dir}"],
        ["not a run folder (no config.json)"],
    ),
    "--resume with another architecture": (
        run_copy,
        ["run", "--resume", "{run}", "--n-layer", "3"],
        ["cannot change n_layer when resuming"],
    ),
    "--out on a run of another configuration": (
        run_copy,
        ["run", *RUN_ARGS, "--n-embd", "64", "--out", "{run}"],
        ["already holds a run of another configuration", "--force"],
    ),
    "--out on a folder that is not a run, even with --force": (
        not_a_run,
        ["run", *RUN_ARGS, "--out", "{dir}", "--force"],
        ["is a non-empty folder that is not a run", "another --out"],
    ),
    "--out on a file": (a_file, ["run", *RUN_ARGS, "--out", "{file}"], ["is a file"]),
}


# -- plugins that are broken, each a real distribution on sys.path ---------------------------

PLUGINS = {
    "klm-attention-fragile": (
        "attention-fragile",
        "import triton_kernels_that_are_not_installed\n",
    ),
    "klm-attention-boom": (
        "attention-boom",
        """
        from kennethlm_core import hookimpl

        class Boom:
            def __init__(self, cfg):
                raise RuntimeError("the fused kernel is not compiled for this CPU")

        @hookimpl
        def klm_register_attention(register):
            register("boom", Boom, "fails whenever it is built", provides={"score_bias"})
        """,
    ),
    "klm-posemb-short": (
        "posemb-short",
        """
        from kennethlm_core import hookimpl

        @hookimpl
        def klm_register_posemb(register):
            from kennethlm_core.builtin.layers import LearnedPositions
            register("short", LearnedPositions, "a table of 8 positions", max_block_size=8)
        """,
    ),
}

CASES |= {  # klm sweep, and the tempered mix
    "sweep grid key that is not a setting": (
        nothing,
        ["sweep", "--grid", "vocab=512,1024"],
        ["'vocab' is not a setting of klm run", "did you mean 'vocab_size'?"],
    ),
    "sweep grid value of the wrong type": (
        nothing,
        ["sweep", "--grid", "lr=1e-3,fast"],
        ["--grid lr: lr must be a number, got 'fast'"],
    ),
    "sweep without a grid": (nothing, ["sweep"], ["a sweep needs a grid: give --grid KEY=V1,V2"]),
    "sweep whose every cell is refused": (
        nothing,
        ["sweep", "--grid", "tokenizer=byte", "--grid", "vocab_size=512,1024"],
        ["every cell of the grid is refused", "drop --vocab-size 512"],
    ),
    "mix temperature below 0": (
        nothing,
        ["run", "--mix", "temperature=-1"],
        ["--mix temperature=ALPHA takes one number >= 0"],
    ),
}

CASES |= {
    "a plugin that fails to import": (
        nothing,
        ["run", "--attention", "fragile"],
        ["plugin 'attention-fragile'", "failed to load", "ModuleNotFoundError"],
    ),
    "a plugin that raises when built": (
        nothing,
        ["run", "--attention", "boom"],
        ["plugin 'attention-boom' (klm-attention-boom) failed: RuntimeError", "--disable-plugin"],
    ),
    "context longer than a posemb allows": (
        nothing,
        ["run", "--posemb", "short", "--block-size", "64"],
        ["posemb 'short' allows a context of at most 8 tokens", "--block-size 8"],
    ),
}


@pytest.fixture(scope="module")
def broken_plugins(tmp_path_factory):
    """Each broken plugin installed in a folder of its own, which its case puts on PYTHONPATH
    (with all of them there, every other case would rightly warn about the broken ones)."""
    sites = {}
    for dist, (entry, source) in PLUGINS.items():
        sites[dist] = tmp_path_factory.mktemp(dist)
        make_dist(
            sites[dist], dist, {dist.replace("-", "_"): source}, {entry: dist.replace("-", "_")}
        )
    return sites


def snapshot(*roots: Path) -> dict[str, tuple[int, str]]:
    files = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                files[str(path)] = (path.stat().st_mtime_ns, digest)
    return files


def klm_process(*args, cwd: Path, site: Path | None = None) -> tuple[int, str, str]:
    """klm in a process of its own, offline, as a user starts it: whatever a library's
    logger or a warning prints lands on the real stderr, where the one-line contract holds."""
    path = [str(site)] if site else []
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([*path, os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [PYTHON, "-m", "kennethlm_core", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )
    return proc.returncode, proc.stdout, proc.stderr


PLUGIN_CASES = {  # the case -> the plugin it installs
    "a plugin that fails to import": "klm-attention-fragile",
    "a plugin that raises when built": "klm-attention-boom",
    "context longer than a posemb allows": "klm-posemb-short",
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_input(case, run, broken_plugins, tmp_path):
    prepare, args, needles = CASES[case]
    (tmp_path / "case").mkdir()
    values = prepare(tmp_path / "case", run)
    args = [a.format(**values) for a in args]
    before = snapshot(tmp_path, run)
    site = broken_plugins[PLUGIN_CASES[case]] if case in PLUGIN_CASES else None
    code, out, err = klm_process(*args, cwd=tmp_path, site=site)  # cwd: a default runs/ lands here
    assert_one_line_error(code, err, *needles)
    assert snapshot(tmp_path, run) == before  # nothing written, nothing overwritten
    assert not MARKER.exists()  # no pickle was ever loaded


def test_the_table_has_at_least_20_cases():
    assert len(CASES) >= 20


def test_non_utf8_txt_is_replaced_and_reported_and_no_domain_is_one_domain(tmp_path, klm):
    """Not errors: a .txt with non-UTF-8 bytes trains, with one warning line counting them
    (docs/reliability.md); a table without a 'domain' column is one domain, 'default'."""
    data = tmp_path / "data"
    data.mkdir()
    line = "Blåbærgrød med fløde er en dansk ret. "
    (data / "old.txt").write_bytes((line * 300).encode("latin-1"))
    rows = [{"text": f"{line} {i}" * 30} for i in range(20)]  # no domain column
    (data / "new.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = klm("run", "--corpus", data, *RUN_ARGS, "--out", tmp_path / "r")
    assert code == 0, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("klm: warning: ") and "1200 byte(s) are not UTF-8, replaced" in err
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert set(summary["val_bpb_by_domain"]) == {"default"}
