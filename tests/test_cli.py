"""`klm` end to end on the embedded sample, and bad input: one line, exit code 2."""

from __future__ import annotations

import json
import subprocess

import pytest

from kennethlm_core.cli import main, parse_run_args

from .conftest import PYTHON, SHARED_DATA, assert_one_line_error

EVAL_DATA = SHARED_DATA / "eval"

TINY_ARGS = [
    "--n-layer",
    "1",
    "--n-head",
    "2",
    "--n-embd",
    "32",
    "--block-size",
    "32",
    "--steps",
    "30",
    "--eval-every",
    "10",
    "--set",
    "warmup_steps=5",
    "-q",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    with pytest.raises(SystemExit) as e:
        main(["run", *TINY_ARGS, "--out", str(out)])
    assert e.value.code == 0
    return out


def test_run_writes_a_complete_run_folder(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    assert 0 < summary["val_bpb"] < 8.5
    assert (run_dir / "tokenizer" / "tokenizer.json").exists()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["n_layer"] == 1 and config["warmup_steps"] == 5 and config["corpus"] == "sample"


def test_run_prints_the_score_and_where_the_files_are(tmp_path, klm):
    code, out, err = klm("run", *TINY_ARGS, "--steps", "5", "--out", tmp_path / "r")
    assert code == 0, err
    assert "val_bpb" in out and f"run files: {tmp_path / 'r'}" in out


def test_sample_continues_the_prompt(run_dir, klm):
    code, out, err = klm(
        "sample", run_dir, "--prompt", "Der var engang", "--max-new-tokens", "30", "--seed", "1"
    )
    assert code == 0, err
    assert out.startswith("Der var engang") and len(out) > len("Der var engang")
    assert (
        klm(
            "sample", run_dir, "--prompt", "Der var engang", "--seed", "1", "--max-new-tokens", "30"
        )[1]
        == out
    )


def test_eval_bpb_matches_the_summary_and_writes_eval_json(run_dir, klm):
    code, out, err = klm("eval", run_dir, "--task", "bpb")
    assert code == 0, err
    result = json.loads((run_dir / "eval.json").read_text())["bpb"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert result["metrics"]["bpb"]["value"] == pytest.approx(summary["val_bpb"], rel=1e-6)
    for domain, value in summary["val_bpb_by_domain"].items():
        assert result["metrics"][f"bpb/{domain}"]["value"] == pytest.approx(value, rel=1e-6)
    assert "bpb/legal" in out


def test_eval_bpb_scores_the_test_split_apart(run_dir, klm):
    code, out, err = klm("eval", run_dir, "--task", "bpb", "--split", "test")
    assert code == 0, err
    saved = json.loads((run_dir / "eval.json").read_text())
    test, val = saved["bpb/test"], saved["bpb"]  # the validation result is kept as it was
    assert "test split" in test["notes"] and test["n"] >= 5  # a document of every domain
    assert test["metrics"]["bpb"]["value"] != val["metrics"]["bpb"]["value"]


def test_eval_bpb_data_scores_all_of_the_text(run_dir, klm, tmp_path):
    texts = [f"Dokument nummer {i}: æbler, pærer og blommer. " * (40 + 30 * i) for i in range(6)]
    rows = [{"id": str(i), "text": t, "domain": "ab"[i % 2]} for i, t in enumerate(texts)]
    path = tmp_path / "text.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    code, out, err = klm("eval", run_dir, "--task", "bpb", "--data", path)
    assert code == 0, err
    result = json.loads((run_dir / "eval.json").read_text())[f"bpb@{path}"]
    total = sum(len(t.encode()) for t in texts)  # every byte, not a validation sample
    assert result["notes"].startswith(f"{total:,} bytes of all the text") and result["n"] == 6
    assert set(result["metrics"]) == {"bpb", "bpb/a", "bpb/b"}
    code, out, err = klm("eval", run_dir, "--task", "bpb", "--data", path, "--limit", "100")
    first = len(texts[0].encode())  # the first chunk that holds 100 bytes: the first document
    assert code == 0 and f"{first:,} bytes of all the text" in out.replace("\n", " ")


def test_eval_bpb_refuses_an_unknown_split_and_empty_text(run_dir, klm, tmp_path):
    code, out, err = klm("eval", run_dir, "--task", "bpb", "--split", "train")
    assert_one_line_error(code, err, "unknown split 'train'")
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"text": ""}) + "\n")
    code, out, err = klm("eval", run_dir, "--task", "bpb", "--data", empty)
    assert_one_line_error(code, err, "no text")


def test_eval_all_tasks_on_one_data_folder(run_dir, klm):
    code, out, err = klm("eval", run_dir, "--task", "all", "--data", EVAL_DATA, "--limit", "4")
    assert code == 0, err
    result = json.loads((run_dir / "eval.json").read_text())
    tasks = ["acceptability", "sentiment", "reading-comprehension", "summarization", "knowledge"]
    for task in ["bpb", *tasks]:
        assert task in result and task in out
        for m in result[task]["metrics"].values():
            assert "chance" in m
    assert result["sentiment"]["n"] == 4 and result["knowledge"]["n"] == 4
    assert "p_gold" in out and "rank_accuracy_pmi" in out and "chrf++" in out


def test_eval_refuses_one_file_for_several_tasks(run_dir, klm):
    path = EVAL_DATA / "sentiment" / "sentiment-da.jsonl"
    code, out, err = klm("eval", run_dir, "--task", "all", "--data", path)
    assert_one_line_error(code, err, "one file, but several tasks")
    code, out, err = klm("eval", run_dir, "--task", "sentiment", "--data", path, "--limit", "3")
    assert code == 0, err


def test_resume_with_a_longer_budget_continues(run_dir, tmp_path, klm):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    code, out, err = klm("run", "--resume", copy, "--steps", "40", "-q")
    assert code == 0, err
    assert json.loads((copy / "summary.json").read_text())["steps"] == 40


def test_candidate_arguments_parse_like_run_flags():
    recipe, overrides = parse_run_args(["--posemb", "none", "--time", "2m", "--set", "lr=3e-4"])
    assert recipe is None
    assert overrides == {"posemb": "none", "time": "2m", "lr": "3e-4"}
    assert parse_run_args(["--recipe", "record"])[0] == "record"
    assert parse_run_args(["--compile"])[1] == {"compile": True}
    assert parse_run_args(["--no-compile"])[1] == {"compile": False}
    assert parse_run_args([])[1] == {}


BAD = {
    "unknown plugin": (
        ["run", "--attention", "flsh"],
        ["unknown attention 'flsh'", "known: ", "naive"],
    ),
    "did you mean": (["run", "--norm", "layernrm"], ["did you mean 'layernorm'"]),
    "malformed --set": (["run", "--set", "lr"], ["--set expects key=value"]),
    "unknown --set key": (["run", "--set", "lrr=1"], ["unknown setting 'lrr'", "'lr'"]),
    "option of an unused plugin": (["run", "--set", "hub_max_bytes=5"], ["belongs to corpus"]),
    "bad number": (["run", "--set", "lr=fast"], ["lr must be a number, got 'fast'"]),
    "missing corpus": (["run", "--corpus", "/no/such/file.jsonl"], ["neither a registered corpus"]),
    "heads": (
        ["run", "--n-embd", "100", "--n-head", "3"],
        ["n_embd (100) must be divisible by n_head (3)"],
    ),
    "zero layers": (["run", "--n-layer", "0"], ["n_layer must be at least 1"]),
    "negative lr": (["run", "--lr", "-1"], ["lr must be positive"]),
    "bad duration": (["run", "--time", "soon"], ["cannot read duration 'soon'"]),
    "unknown recipe": (
        ["run", "--recipe", "recrod"],
        ["unknown recipe 'recrod'", "did you mean 'record'"],
    ),
    "unknown flag": (
        ["run", "--atention", "naive"],
        ["No such option '--atention'", "Did you mean '--attention'"],
    ),
    "unknown slot": (["list-plugins", "--slot", "atention"], ["unknown slot 'atention'"]),
    "not a run": (["eval", "/tmp"], ["not a run folder"]),
    "resume not a run": (["run", "--resume", "/tmp"], ["not a run folder"]),
    "byte vocab": (
        ["run", "--tokenizer", "byte", "--vocab-size", "500", "--steps", "1"],
        ["257 tokens"],
    ),
    "bpe vocab": (
        ["run", "--tokenizer", "bpe", "--vocab-size", "100", "--steps", "1"],
        ["bpe vocab_size must exceed 257"],
    ),
    "bad mix": (["run", "--mix", "news=lots"], ["--mix expects domain=weight", "'news=lots'"]),
    "unknown mix domain": (
        ["run", "--mix", "books=1", "--steps", "1", "--out", "/nonexistent/never", "-q"],
        ["--mix names domain 'books'", "its domains: news"],
    ),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_input_is_one_line_and_exit_2(klm, case):
    args, needles = BAD[case]
    code, out, err = klm(*args)
    assert_one_line_error(code, err, *needles)


def test_out_holding_another_run_is_refused_unless_forced(run_dir, tmp_path, klm):
    import shutil

    copy = tmp_path / "existing"
    shutil.copytree(run_dir, copy)
    before = (copy / "model.safetensors").read_bytes()
    code, out, err = klm("run", *TINY_ARGS, "--n-embd", "64", "--out", copy)
    assert_one_line_error(code, err, "already holds a run of another configuration", "--force")
    assert (copy / "model.safetensors").read_bytes() == before  # untouched
    code, out, err = klm("run", *TINY_ARGS, "--out", copy)  # its mix was written out: same run
    assert_one_line_error(code, err, "already holds a run of this configuration", "--resume")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("my notes")
    code, out, err = klm("run", *TINY_ARGS, "--out", tmp_path / "mine", "--force")
    assert_one_line_error(code, err, "not a run")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "my notes"
    code, out, err = klm("run", *TINY_ARGS, "--steps", "3", "--out", copy, "--force")
    assert code == 0, err


def test_a_real_process_exits_2_without_traceback(tmp_path):
    proc = subprocess.run(
        [PYTHON, "-m", "kennethlm_core", "run", "--posemb", "rop"], capture_output=True, text=True
    )
    assert_one_line_error(proc.returncode, proc.stderr, "unknown posemb 'rop'")
    assert not (tmp_path / "runs").exists()


def test_hub_corpus_offline_points_to_a_local_path(klm, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    code, out, err = klm("run", "--corpus", "dagw", "--steps", "1", "--out", tmp_path / "r", "-q")
    assert_one_line_error(code, err, "danish-foundation-models/danish-gigaword", "--corpus PATH")
    assert not (tmp_path / "r").exists()  # a failed start leaves nothing behind


ARMS = [
    ["--posemb", "rope", "--tweak", "qk-norm", "--tweak", "softcap", "--n-layer", "6"],
    ["--recipe", "record", "--lr=3e-3", "--set", "muon_lr=0.03", "--steps", "2k"],
    ["--compile", "--time", "15m", "--size", "auto", "--mix", "temperature=0.5"],
    ["--no-compile", "--callback", "ema", "--logger", "tensorboard", "--dropout", "0.1"],
    [],
]


@pytest.mark.parametrize("words", ARMS)
def test_an_arms_text_reads_as_the_command_line_reads_it(words):
    """klm compare's arms are parsed without click (config.parse_args); the flags of klm run
    are made by click from the same table (config.FLAGS): both give the same settings."""
    import click

    from kennethlm_core.cli import overrides_from, run_options
    from kennethlm_core.config import parse_args

    @click.command()
    @run_options
    def command(**params):
        pass

    ctx = command.make_context("run", list(words))
    assert parse_args(words) == overrides_from(ctx.params)


def test_every_run_flag_is_a_runconfig_field_of_its_type():
    from kennethlm_core.config import FLAGS, RunConfig, flag_type

    fields = RunConfig().to_dict()
    for key in FLAGS:
        assert key in fields, key
        assert flag_type(key) in (str, type(fields[key])), key
