"""klm sweep: the grid, skipped cells, a real tiny sweep with reuse and resume, bad input."""

from __future__ import annotations

import json
import statistics

import pytest

from kennethlm_core.data import mix_weights, parse_mix, prepare_data
from kennethlm_core.errors import ConfigError
from kennethlm_core.sweep import bytes_per_token, grid_cells, parse_grid, prepare_cells, x_axis

from .conftest import TINY, assert_one_line_error, tiny_config

TINY_ARGS = [
    "--n-layer", "1", "--n-head", "2", "--block-size", "16", "--batch-size", "4",
    "--steps", "4", "--eval-every", "2", "--set", "warmup_steps=1", "--set", "eval_bytes=1024",
    "--set", "final_eval_bytes=4096",
]  # fmt: skip


def test_grid_values_are_typed_like_their_setting(registry):
    axes = parse_grid(["tokenizer=char,byte", "vocab-size=0,512", "lr=1e-3,3e-3"], registry)
    assert [(a.key, a.values) for a in axes] == [
        ("tokenizer", ["char", "byte"]),
        ("vocab_size", [0, 512]),
        ("lr", [1e-3, 3e-3]),
    ]
    assert [a.numeric for a in axes] == [False, True, True]
    assert x_axis(axes) == "lr" and x_axis(axes, "vocab-size") == "vocab_size"
    # a plugin's option is a setting too; semicolons split values that hold commas
    axes = parse_grid(["rope_base=100,10000", "mix=news=1,legal=1;news=1"], registry)
    assert axes[0].values == [100.0, 10000.0] and axes[1].values == ["news=1,legal=1", "news=1"]
    assert parse_grid(["steps=2k,4k"], registry)[0].values == [2000, 4000]


def prepared_cells(axes, shared, registry):
    cells = grid_cells(axes, shared, registry)
    prepare_cells(cells, registry, lambda message: None)
    return cells


def test_cells_the_configuration_refuses_are_skipped_with_the_reason(registry):
    shared = {**TINY, "steps": 2}
    axes = parse_grid(["tokenizer=char,byte", "vocab_size=0,300,400"], registry)
    before_data = [c.label for c in grid_cells(axes, shared, registry) if c.cfg is None]
    assert before_data == ["tokenizer=byte vocab_size=300", "tokenizer=byte vocab_size=400"]
    cells = {c.label: c for c in prepared_cells(axes, shared, registry)}
    assert list(cells) == [
        "tokenizer=char vocab_size=0",
        "tokenizer=char vocab_size=300",
        "tokenizer=char vocab_size=400",
        "tokenizer=byte vocab_size=0",
        "tokenizer=byte vocab_size=300",
        "tokenizer=byte vocab_size=400",
    ]
    runnable = [label for label, c in cells.items() if c.cfg is not None]
    assert runnable == [
        "tokenizer=char vocab_size=0",
        "tokenizer=char vocab_size=300",
        "tokenizer=byte vocab_size=0",
    ]
    assert cells["tokenizer=byte vocab_size=300"].reason == (
        "the byte tokenizer has 257 tokens; drop --vocab-size 300"
    )
    # the sample has 85 distinct characters: char keeps them all below a cap of 342 tokens,
    # so a cap of 400 trains the same tokenizer, the same run, as no cap at all
    chars = cells["tokenizer=char vocab_size=0"].prepared.tokenizer.vocab_size
    assert chars == 342
    assert cells["tokenizer=char vocab_size=300"].prepared.tokenizer.vocab_size == 300
    assert cells["tokenizer=char vocab_size=400"].reason == (
        "the same run as tokenizer=char vocab_size=0: char comes out the same on this corpus, "
        "342 tokens"
    )

    axes = parse_grid(["n_head=3,4", "mix=news=1;books=1"], registry)
    cells = {c.label: c for c in prepared_cells(axes, shared, registry)}
    assert cells["n_head=3 mix=news=1"].reason == (
        "n_embd (32) must be divisible by n_head (3); try --n-embd 33"
    )
    assert cells["n_head=4 mix=books=1"].reason.startswith(
        "--mix names domain 'books', which this corpus does not have"
    )
    news = cells["n_head=4 mix=news=1"].cfg
    assert news.mix == "news=1,conversation=0,legal=0,encyclopedic=0,fiction=0"  # as a run records


def test_bytes_per_token_counts_text_tokens_only(registry):
    byte = prepare_data(tiny_config(registry, tokenizer="byte"), registry)
    assert bytes_per_token(byte.val) == 1.0 and bytes_per_token(byte.val.head(4096)) == 1.0
    char = prepare_data(tiny_config(registry, tokenizer="char"), registry)
    # char: a token per character, so bytes per token is bytes per character (æ, ø, å: 2)
    assert 1.0 < bytes_per_token(char.val) < 1.1


def test_a_real_sweep_reuses_and_resumes_its_runs(tmp_path, klm, one_thread):
    out = tmp_path / "sweep"
    args = ["sweep", *TINY_ARGS, "--grid", "tokenizer=char,byte", "--grid", "n_embd=16,32"]
    args += ["--mix", "temperature=0.5", "--seeds", "2", "--jobs", "1", "--out", out]
    code, stdout, err = klm(*args)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["x"] == "n_embd" and summary["seeds"] == [1, 2]
    cells = summary["cells"]
    assert [c["label"] for c in cells] == [
        "tokenizer=char n_embd=16",
        "tokenizer=char n_embd=32",
        "tokenizer=byte n_embd=16",
        "tokenizer=byte n_embd=32",
    ]
    for cell in cells:
        runs = [out / cell["folder"] / f"seed-{s}" for s in (1, 2)]
        finals = [json.loads((r / "summary.json").read_text()) for r in runs]
        assert cell["status"] == "done" and cell["seeds_done"] == 2
        assert cell["values"] == [f["val_bpb"] for f in finals]
        assert cell["mean"] == pytest.approx(statistics.mean(cell["values"]))
        assert cell["std"] == pytest.approx(statistics.stdev(cell["values"]))
        assert (
            cell["params"] == finals[0]["params"] and cell["vocab_size"] == finals[0]["vocab_size"]
        )
        config = json.loads((runs[0] / "config.json").read_text())
        assert config["n_embd"] == cell["cell"]["n_embd"] and config["seed"] == 1
        assert config["mix"] != "temperature=0.5"  # the weights the temperature gave
        assert sum(parse_mix(config["mix"]).values()) == pytest.approx(1, abs=1e-5)
        # per scored domain: the mean and sd over seeds of each run's own figure
        scored = finals[0]["val_bpb_by_domain"]
        assert list(cell["by_domain"]) == list(scored) and len(scored) > 1
        for d, (mean, sd) in cell["by_domain"].items():
            assert mean == pytest.approx(statistics.mean(f["val_bpb_by_domain"][d] for f in finals))
            assert sd == pytest.approx(statistics.stdev(f["val_bpb_by_domain"][d] for f in finals))
    assert set(summary["domain_bytes"]) == set(cells[0]["by_domain"])
    assert all(n > 0 for n in summary["domain_bytes"].values())
    assert (out / "sweep-domains.png").stat().st_size > 10_000
    byte = [c for c in cells if c["cell"]["tokenizer"] == "byte"]
    assert {c["bytes_per_token"] for c in byte} == {1.0} and {c["vocab_size"] for c in byte} == {
        257
    }
    assert cells[0]["params"] < cells[1]["params"]
    assert (out / "sweep.png").stat().st_size > 10_000
    for cell in cells:
        assert f"{cell['mean']:.4f} ± {cell['std']:.4f}" in stdout
    assert stdout.count("2/2") == 4 and "bytes/token" in stdout and "tok/s" in stdout

    # again: everything is reused, nothing is trained or written again
    weights = out / cells[0]["folder"] / "seed-1" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    code, stdout2, err = klm(*args, "--by-domain")
    assert code == 0, err
    domain, (mean, sd) = next(iter(cells[2]["by_domain"].items()))
    assert "val_bpb per domain" in stdout2 and domain in stdout2
    assert f"{mean:.3f} ± {sd:.3f}" in stdout2
    code, page, err = klm(*args, "--by-domain", "--markdown")
    assert code == 0, err
    lines = page.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| tokenizer | n_embd"))
    body = lines[header + 2 : header + 6]
    assert lines[header + 1].startswith("|---|---|---:|")
    assert [line.split(" | ")[:2] for line in body] == [
        ["| " + c["texts"]["tokenizer"], str(c["texts"]["n_embd"])] for c in cells
    ]
    assert f"{cells[0]['mean']:.4f} ± {cells[0]['std']:.4f}" in body[0]
    assert f"| {mean:.3f} ± {sd:.3f}" in page
    assert err.count("finished before, reused") == 8 and "training" not in err
    assert weights.stat().st_mtime_ns == before
    assert json.loads((out / "summary.json").read_text())["cells"] == cells

    # a run stopped before it wrote its summary resumes from its checkpoint, to the same end
    stopped = out / cells[3]["folder"] / "seed-2"
    (stopped / "summary.json").unlink()
    code, stdout3, err = klm(*args)
    assert code == 0, err
    assert "tokenizer-byte-n-embd-32 seed 2: resuming" in err
    assert err.count("finished before, reused") == 7
    assert json.loads((stopped / "summary.json").read_text())["val_bpb"] == cells[3]["values"][1]


def test_a_run_that_fails_is_a_result_of_the_sweep(tmp_path, klm, one_thread):
    out = tmp_path / "lr"
    code, stdout, err = klm(
        "sweep", *TINY_ARGS, "--n-embd", "16", "--grid", "lr=1e-3,1e12", "--seeds", "1",
        "--set", "grad_clip=0", "--out", out,
    )  # fmt: skip
    assert code == 0, err

    def strict(constant):
        raise AssertionError(f"{constant} in summary.json")

    cells = json.loads((out / "summary.json").read_text(), parse_constant=strict)["cells"]
    assert [c["status"] for c in cells] == ["done", "failed"]
    assert cells[1]["mean"] is None and cells[1]["values"] == []
    assert "non-finite" in cells[1]["failures"]["1"] and cells[1]["seeds_done"] == 0
    assert "failed lr=1e12 seed 1: the training loss became non-finite" in stdout
    assert "0/1" in stdout and "1/1" in stdout
    assert (out / "sweep.png").exists()


def test_a_bytes_budget_gives_every_tokenizer_the_same_text(tmp_path, klm, registry, one_thread):
    out = tmp_path / "bytes"
    at = TINY_ARGS.index("--steps")
    args = [*TINY_ARGS[:at], *TINY_ARGS[at + 2 :], "--n-embd", "16"]
    code, stdout, err = klm(
        "sweep", *args, "--grid", "tokenizer=byte,bpe", "--bytes", "2k", "--seeds", "1",
        "--set", "eval_every=100", "--out", out,
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["budget"] == {"bytes": 2000} and "2,000 bytes of text" in stdout
    for cell in summary["cells"]:
        config = json.loads((out / cell["folder"] / "seed-1" / "config.json").read_text())
        data = prepare_data(tiny_config(registry, tokenizer=cell["cell"]["tokenizer"]), registry)
        # the natural mix: a token is worth the training split's bytes / tokens on average
        train_bytes, train_tokens = data.train.n_bytes, len(data.train.tokens)
        assert config["tokens"] == round(2000 * train_tokens / train_bytes)
        assert config["steps"] == 0 and cell["tokens_seen"] >= config["tokens"]
    byte, bpe = summary["cells"]
    assert byte["tokens_seen"] > 2 * bpe["tokens_seen"]  # bpe's tokens hold over 2 bytes


BAD = {
    "no grid": (["--steps", "2"], ["a sweep needs a grid: give --grid KEY=V1,V2"]),
    "not a setting": (
        ["--grid", "vocab=512,1024"],
        ["--grid vocab: 'vocab' is not a setting of klm run; did you mean 'vocab_size'?"],
    ),
    "wrong type": (["--grid", "lr=1e-3,fast"], ["--grid lr: lr must be a number, got 'fast'"]),
    "not an integer": (
        ["--grid", "n_layer=2,2.5"],
        ["--grid n_layer: n_layer must be an integer, got '2.5'"],
    ),
    "empty value": (["--grid", "lr=1e-3,"], ["--grid expects KEY=V1,V2,... with no empty value"]),
    "no values": (["--grid", "lr"], ["--grid expects KEY=V1,V2"]),
    "a key twice": (
        ["--grid", "lr=1e-3", "--grid", "lr=3e-3"],
        ["--grid gives lr twice; give all its values in one --grid"],
    ),
    "a value twice": (["--grid", "lr=1e-3,0.001"], ["--grid lr lists a value twice"]),
    "the seed": (["--grid", "seed=1,2"], ["the seeds are the sweep's own; give --seeds N"]),
    "set twice": (
        ["--grid", "lr=1e-3,3e-3", "--lr", "1e-3"],
        ["lr is set by --grid and by a flag or --set; give it once"],
    ),
    "two budgets": (
        ["--grid", "steps=2,4", "--time", "1m"],
        ["give one budget, in the grid or as a flag; got steps and time"],
    ),
    "every cell refused": (
        ["--grid", "tokenizer=byte", "--grid", "vocab_size=300,400"],
        [
            "every cell of the grid is refused, e.g. tokenizer=byte vocab_size=300: the byte "
            "tokenizer has 257 tokens; drop --vocab-size 300"
        ],
    ),
    "every cell refused by the corpus": (
        ["--grid", "mix=books=1;wiki=1", "-q"],
        ["every cell of the grid is refused, e.g. mix=books=1: --mix names domain 'books'"],
    ),
    "x not in the grid": (
        ["--grid", "lr=1e-3,3e-3", "--x", "n_embd"],
        ["--x n_embd is not a grid key"],
    ),
    "bytes and steps": (
        ["--grid", "lr=1e-3", "--bytes", "2k", "--steps", "3"],
        ["give one budget, in the grid or as a flag; got steps and bytes"],
    ),
    "no bytes": (["--grid", "lr=1e-3", "--bytes", "0"], ["--bytes must be at least 1, got 0"]),
    "no seeds": (["--grid", "lr=1e-3", "--seeds", "0"], ["--seeds must be at least 1"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_sweep_input_is_one_line_and_exit_2(klm, tmp_path, case):
    args, needles = BAD[case]
    out = tmp_path / "never"
    code, stdout, err = klm("sweep", *args, "--out", out)
    assert_one_line_error(code, err, *needles)
    assert not out.exists()  # nothing written


def test_a_tempered_mix_cell_resolves_to_the_weights_a_run_records(registry):
    axes = parse_grid(["mix=temperature=0,temperature=1"], registry)
    uniform, natural = prepared_cells(axes, {**TINY, "steps": 2, "tokenizer": "byte"}, registry)
    data = uniform.prepared
    assert parse_mix(uniform.cfg.mix) == pytest.approx({d: 0.2 for d in data.train.domains})
    assert parse_mix(natural.cfg.mix) == mix_weights("", data.train, TINY["block_size"])
    with pytest.raises(ConfigError, match="not a setting"):
        parse_grid(["temperature=0,1"], registry)
