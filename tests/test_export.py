"""klm export: a run as a Hugging Face model folder, loaded with transformers alone.

Every combination the combination suite trains (tests/test_combinations.py), the baseline
recipe and the record recipe (both at a tiny size) are trained for a few steps, exported,
and loaded with ``AutoModelForCausalLM.from_pretrained``: the logits equal klm's to 1e-5,
greedy ``generate()`` gives the tokens of ``klm sample --temperature 0``, and
``AutoTokenizer.from_pretrained`` gives klm's ids. Runs, exports and loaded models are
shared through module-scoped caches.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess

import pytest
import torch

from kennethlm_core.config import build_config, check_pairs, resolve, selected_components
from kennethlm_core.errors import ConfigError
from kennethlm_core.evaluate import LoadedRun
from kennethlm_core.model import generate
from kennethlm_core.plugins import get_registry
from kennethlm_core.train import train

from .conftest import PYTHON, REPO, SHARED_DATA, assert_one_line_error
from .test_combinations import COMBINATIONS, label

transformers = pytest.importorskip("transformers")  # the dev extra installs it

pytestmark = pytest.mark.usefixtures("one_thread")

REGISTRY = get_registry()
TINY = dict(
    n_layer=2,
    n_head=2,
    n_embd=32,
    block_size=16,
    batch_size=4,
    steps=3,
    eval_every=3,
    warmup_steps=1,
    eval_bytes=512,
    final_eval_bytes=512,
    dropout=0.0,
)
RUNS = {"baseline": ("baseline", {}), "record": ("record", {"vocab_size": 300})}
RUNS |= {label(c): (None, c) for c in COMBINATIONS}
PROMPT = "Der var"


@pytest.fixture(scope="module")
def hf_modules(tmp_path_factory):
    """Remote code is copied into transformers' module cache: a private one for the tests."""
    from transformers import dynamic_module_utils

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dynamic_module_utils, "HF_MODULES_CACHE", str(tmp_path_factory.mktemp("hf")))
        yield


@pytest.fixture(scope="module")
def exported(tmp_path_factory, hf_modules):
    """exported(name) -> (run folder, export, HF model, HF tokenizer), built once per name."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kennethlm_core.export import export_run

    root = tmp_path_factory.mktemp("export")
    cache = {}

    def get(name):
        if name not in cache:
            recipe, choice = RUNS[name]
            cfg = build_config(recipe, overrides={**TINY, **choice})
            try:
                check_pairs(selected_components(cfg, REGISTRY), REGISTRY)
            except ConfigError as e:
                pytest.skip(f"refused: {e}")
            run = root / "runs" / name
            train(resolve(cfg, REGISTRY), run, registry=REGISTRY)
            done = export_run(run, root / name, registry=REGISTRY)
            remote = done.kind != "gpt2"
            model = AutoModelForCausalLM.from_pretrained(done.out, trust_remote_code=remote)
            tokenizer = AutoTokenizer.from_pretrained(done.out, trust_remote_code=remote)
            cache[name] = (run, done, model.eval(), tokenizer)
        return cache[name]

    return get


DIFFS = {}  # name -> max |logit difference|, printed at the end of the module


@pytest.fixture(scope="module", autouse=True)
def report_diffs():
    yield
    if DIFFS:
        worst = max(DIFFS, key=DIFFS.get)
        print(f"\nmax |logit difference| over {len(DIFFS)} exports: {DIFFS[worst]:.2e} ({worst})")


def probe(lm, n=None):
    """Validation-like Danish text as klm's ids, a document token first, one window long."""
    text = "Københavns Kommune åbner ét nyt bibliotek i Ørestad – 🙂 \t og «flere» følger."
    return torch.tensor([[lm.tokenizer.doc_id, *lm.encode(text)][: n or lm.block_size]])


@pytest.mark.parametrize("name", list(RUNS))
def test_exported_logits_equal_klms(name, exported):
    run, done, model, _ = exported(name)
    lm = LoadedRun(run, device="cpu", registry=REGISTRY)
    x = probe(lm)
    with torch.no_grad():
        ours, _ = lm.model(x)
        theirs = model(input_ids=x).logits
    DIFFS[name] = float((theirs - ours).abs().max())
    assert DIFFS[name] < 1e-5, f"{name}: logits differ by {DIFFS[name]:.2e}"
    stock = not lm.config.tweak and (lm.config.model, lm.config.posemb, lm.config.norm) == (
        "gpt",
        "learned",
        "layernorm",
    )
    stock = stock and lm.config.attention in ("naive", "flash") and lm.config.mlp == "gelu"
    assert (done.kind == "gpt2") == stock, f"{name} exported as {done.kind}"
    assert type(model).__name__ == ("GPT2LMHeadModel" if stock else "KennethLMForCausalLM")
    if stock:  # a stock model: no code of ours in the folder or its config
        assert not (done.out / "modeling_kennethlm.py").exists()
        assert "auto_map" not in json.loads((done.out / "config.json").read_text())


@pytest.mark.parametrize("name", list(RUNS))
def test_greedy_generate_equals_klm_sample(name, exported, klm):
    run, done, model, tokenizer = exported(name)
    encoded = tokenizer(PROMPT, return_tensors="pt")
    ids = encoded.input_ids
    # a stock GPT-2 reads at most its n_positions tokens; remote code crops as klm does
    new = TINY["block_size"] - ids.size(1) if done.kind == "gpt2" else 2 * TINY["block_size"]
    with torch.no_grad():
        # eos_token_id=None: klm sample goes on past a document token
        theirs = model.generate(**encoded, max_new_tokens=new, do_sample=False, eos_token_id=None)
    lm = LoadedRun(run, device="cpu", registry=REGISTRY)
    assert ids[0].tolist() == [lm.tokenizer.doc_id, *lm.encode(PROMPT)]
    ours = generate(lm.model, ids, new, lm.block_size, temperature=0)
    assert theirs.tolist() == ours.tolist(), name
    # the command line's text too (it drops what is not text: document tokens, half bytes)
    code, out, err = klm(
        "sample", run, "--prompt", PROMPT, "--temperature", 0, "--max-new-tokens", new
    )
    assert code == 0, err
    text = tokenizer.decode(theirs[0, ids.size(1) :], skip_special_tokens=True)
    # (char: fallback bytes that are not UTF-8 decode to one U+FFFD each in transformers,
    # valid neighbours in the same run included, where klm keeps those: docs/export.md)
    if lm.config.tokenizer != "char" or chr(0xFFFD) not in lm.decode(ours[0, ids.size(1) :]):
        assert out == PROMPT + text.replace(chr(0xFFFD), "") + "\n"


def danish_texts():
    import gzip

    path = sorted((SHARED_DATA / "corpus").glob("*.jsonl.gz"))[0]
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line)["text"][:3000] for line, _ in zip(f, range(20), strict=False)]


@pytest.mark.parametrize("tokenizer", REGISTRY.names("tokenizer"))
def test_tokenizer_gives_klms_ids_and_round_trips(tokenizer, exported):
    name = label({"attention": "naive", "posemb": "learned", "tokenizer": tokenizer})
    run, done, _, hf = exported(name)
    lm = LoadedRun(run, device="cpu", registry=REGISTRY)
    texts = danish_texts() + ["<|doc|> er tekst her", "tab\tny linje\r\n  🙂 Zürich ﬁ"]
    for text in texts:
        ids = lm.encode(text)
        assert hf(text, add_special_tokens=False, verbose=False).input_ids == ids
        assert hf(text, verbose=False).input_ids == [lm.tokenizer.doc_id, *ids]
        assert hf.decode(ids) == text
    assert hf.convert_ids_to_tokens(lm.tokenizer.doc_id) == "<|doc|>"
    assert hf.bos_token_id == hf.eos_token_id == lm.tokenizer.doc_id
    config = json.loads((done.out / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_labels_give_klms_loss(exported):
    """Fine-tuning with transformers: labels=input_ids gives the loss klm trains on."""
    for name in ("baseline", "record"):
        run, _, model, _ = exported(name)
        lm = LoadedRun(run, device="cpu", registry=REGISTRY)
        x = probe(lm)
        with torch.no_grad():
            _, ours = lm.model(x[:, :-1], x[:, 1:])
            theirs = model(input_ids=x, labels=x).loss
        assert abs(float(theirs) - float(ours)) < 1e-5, name


def test_remote_config_names_the_distributions(exported):
    run, done, _, _ = exported("record")
    config = json.loads((done.out / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_kennethlm.KennethLMConfig",
        "AutoModelForCausalLM": "modeling_kennethlm.KennethLMForCausalLM",
    }
    plugins = json.loads((run / "provenance.json").read_text())["code"]["plugins"]
    building = {"model", "attention", "posemb", "norm", "mlp", "tweak"}
    needed = {d for d, e in plugins.items() if {c.split()[0] for c in e["components"]} & building}
    assert set(config["klm_distributions"]) == {"kennethlm", *needed}
    assert {"klm-posemb-rope", "klm-mlp-relu2", "klm-tweak-qk-norm"} <= needed
    assert "klm-tokenizer-bpe" not in config["klm_distributions"]  # the tokenizer is HF's own
    assert config["klm_config"]["tweak"] == "qk-norm,bigram-hash,untied-head,ngram"
    assert config["tie_word_embeddings"] is False  # untied-head
    # the n-gram's counts: sized by the run's data, not by its configuration
    counted = config["klm_counted"]
    assert counted["output_mix.keys2"][1] == "int64" and counted["output_mix.keys2"][0][0] > 0


def test_a_missing_distribution_is_named(exported, tmp_path):
    import shutil

    from transformers import AutoModelForCausalLM

    _, done, _, _ = exported("record")
    copy = tmp_path / "copy"
    shutil.copytree(done.out, copy)
    config = json.loads((copy / "config.json").read_text())
    config["klm_distributions"]["klm-posemb-nowhere"] = "0.3.0"
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ImportError, match=r"klm-posemb-nowhere==0\.3\.0"):
        AutoModelForCausalLM.from_pretrained(copy, trust_remote_code=True)


def test_model_card(exported, klm):
    run, done, _, _ = exported("baseline")
    card = (done.out / "README.md").read_text()
    summary = json.loads((run / "summary.json").read_text())
    assert card.startswith("---\n") and "klm_export:" in card
    assert "No recipe of registry.toml: 2 layers" in card  # tiny: not the recipe's shape
    assert f"{summary['params']:,} parameters" in card
    assert f"| validation | {summary['val_bpb']:.4f} |" in card
    assert "| test | not scored |" in card
    # scored now: the card of a new export says so
    code, _, err = klm("eval", run, "--task", "bpb", "--split", "test", "--limit", 2000)
    assert code == 0, err
    test = json.loads((run / "eval.json").read_text())["bpb/test"]["metrics"]["bpb"]["value"]
    code, out, err = klm("export", run, "--to", done.out, "--force")
    assert code == 0, err
    assert f"| test | {test:.4f} |" in (done.out / "README.md").read_text()
    assert out.startswith(f"wrote {run} to {done.out} as gpt2: {summary['params']:,} parameters")


# -- bad input: one line, exit 2, nothing overwritten ----------------------------------------


def test_bad_targets_and_runs_are_refused(exported, klm, tmp_path):
    run, done, _, _ = exported("baseline")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    code, _, err = klm("export", run, "--to", busy)
    assert_one_line_error(code, err, f"--to {busy} is not empty", "--force")
    code, _, err = klm("export", run, "--to", busy, "--force")
    assert_one_line_error(code, err, "not an earlier export", "klm export")
    assert (busy / "notes.txt").read_text() == "mine" and len(list(busy.iterdir())) == 1

    earlier = tmp_path / "earlier"  # an earlier export with a file of the user's beside it
    code, _, err = klm("export", run, "--to", earlier)
    assert code == 0, err
    (earlier / "train.py").write_text("mine")
    code, _, err = klm("export", run, "--to", earlier, "--force")
    assert_one_line_error(code, err, "holds files an export does not write (train.py)")
    assert (earlier / "train.py").read_text() == "mine"

    for missing in ("model.safetensors", "config.json"):
        broken = tmp_path / f"no-{missing}"
        subprocess.run(["cp", "-r", str(run), str(broken)], check=True)
        (broken / missing).unlink()
        code, _, err = klm("export", broken, "--to", tmp_path / "never")
        assert_one_line_error(code, err, f"{broken} is not a complete run", missing)
    code, _, err = klm("export", tmp_path / "nowhere", "--to", tmp_path / "never")
    assert_one_line_error(code, err, "is not a folder")
    assert not (tmp_path / "never").exists()


def test_push_to_hub_fails_in_one_line_and_keeps_the_folder(exported, tmp_path):
    """A real klm process against a hub endpoint nobody listens on."""
    run, _, _, _ = exported("baseline")
    with socket.socket() as s:  # a port that was free a moment ago: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_TOKEN": "hf_test"}
    env.pop("HF_HUB_OFFLINE", None)
    out = tmp_path / "pushed"
    argv = [PYTHON, "-m", "kennethlm_core", "export", str(run), "--to", str(out)]
    proc = subprocess.run(
        [*argv, "--push-to-hub", "me/tiny"], capture_output=True, text=True, cwd=REPO, env=env
    )
    assert_one_line_error(proc.returncode, proc.stderr, "cannot push to me/tiny", "hf upload")
    assert f"the model folder {out} is written" in proc.stderr
    assert (out / "model.safetensors").exists() and (out / "README.md").exists()


def test_push_to_hub_offline_says_so(exported, klm, tmp_path, monkeypatch):
    run, _, _, _ = exported("baseline")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, err = klm("export", run, "--to", tmp_path / "m", "--push-to-hub", "me/tiny")
    assert_one_line_error(code, err, "offline (HF_HUB_OFFLINE is set)", "hf upload me/tiny")
    assert out.startswith("wrote ") and (tmp_path / "m" / "config.json").exists()


def test_klm_help_imports_neither_torch_nor_transformers():
    code = (
        "import sys; from kennethlm_core.cli import main\n"
        "try: main(['export', '--help'])\n"
        "except SystemExit: pass\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    )
    proc = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "--push-to-hub" in proc.stdout
