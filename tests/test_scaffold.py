"""`klm new-plugin`: a package for every slot that really installs (pip, into a temporary
folder, never the project's .venv), passes its own conformance tests, shows up in
`klm list-plugins` and passes ruff; bad requests get one line and write nothing."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from kennethlm_core.hookspecs import SLOTS
from kennethlm_core.scaffold import package_names

from .conftest import PYTHON, REPO, assert_one_line_error
from .test_style import RUFF


@pytest.fixture(scope="module")
def scaffolded(tmp_path_factory):
    """One package per slot, written by the CLI and installed with pip into ``site``."""
    from kennethlm_core.cli import main

    root = tmp_path_factory.mktemp("scaffold")
    for slot in SLOTS:
        with pytest.raises(SystemExit) as e:
            main(["new-plugin", "trial-idea", "--slot", slot, "--dir", str(root / "plugins")])
        assert e.value.code == 0
    packages = sorted((root / "plugins").iterdir())
    written = {
        p.name: sorted(str(f.relative_to(p)) for f in p.rglob("*") if f.is_file()) for p in packages
    }
    site = root / "site"
    pip = subprocess.run(
        [PYTHON, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
        + ["--target", str(site), *map(str, packages)],
        capture_output=True,
        text=True,
    )
    assert pip.returncode == 0, pip.stderr
    env = {**os.environ, "PYTHONPATH": str(site)}
    return written, packages, env


def test_new_plugin_writes_the_package_layout(scaffolded):
    written, packages, _ = scaffolded
    assert sorted(written) == sorted(f"klm-{slot}-trial-idea" for slot in SLOTS)
    attention = next(p for p in packages if p.name == "klm-attention-trial-idea")
    assert written[attention.name] == [
        "README.md",
        "klm_attention_trial_idea.py",
        "pyproject.toml",
        "tests/test_attention_trial_idea.py",
    ]
    assert (
        'attention-trial-idea = "klm_attention_trial_idea"'
        in (attention / "pyproject.toml").read_text()
    )
    assert (
        'conformance("attention", "trial-idea")'
        in (attention / "tests" / "test_attention_trial_idea.py").read_text()
    )
    for package in packages:  # every template field and the template's class name replaced
        for f in package.rglob("*"):
            if f.is_file() and f.suffix in (".py", ".toml", ".md"):
                text = f.read_text()
                assert "$" not in text and not re.search(r"\bStarter\b", text), f


def test_installed_packages_pass_their_own_tests(scaffolded, tmp_path):
    _, packages, env = scaffolded
    proc = subprocess.run(
        [PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", *map(str, packages)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    summary = proc.stdout.strip().splitlines()[-1]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "passed" in summary and not any(w in summary for w in ("skipped", "failed", "error"))


def test_installed_packages_show_up_in_list_plugins(scaffolded):
    _, _, env = scaffolded
    proc = subprocess.run(
        [PYTHON, "-m", "kennethlm_core", "list-plugins", "--json"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(proc.stdout)
    assert listed["broken"] == []
    rows = {(r["slot"], r["name"]): r for r in listed["components"]}
    for slot in SLOTS:
        row = rows[(slot, "trial-idea")]
        assert (row["distribution"], row["version"]) == (f"klm-{slot}-trial-idea", "0.1.0")


def test_generated_code_passes_ruff(tmp_path, klm):
    for name in ("x", "a-twenty-char-name-9"):  # the shortest and the longest names
        for slot in SLOTS:
            code, _, err = klm("new-plugin", name, "--slot", slot, "--dir", tmp_path)
            assert code == 0, err
    for args in (["check", "--no-cache"], ["format", "--check", "--no-cache"]):
        proc = subprocess.run(
            [RUFF, *args, str(tmp_path)], capture_output=True, text=True, cwd=REPO
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_names_of_a_package():
    assert package_names("sliding-window", "attention") == {
        "name": "sliding-window",
        "slot": "attention",
        "ident": "sliding_window",
        "dist": "klm-attention-sliding-window",
        "module": "klm_attention_sliding_window",
        "Class": "SlidingWindowAttention",
    }


BAD = {
    "capitals": (["Mine", "--slot", "norm"], ["plugin name 'Mine'", "lower-case"]),
    "leading digit": (["2fast", "--slot", "norm"], ["plugin name '2fast'"]),
    "double hyphen": (["a--b", "--slot", "norm"], ["plugin name 'a--b'"]),
    "too long": (["a" * 21, "--slot", "norm"], ["at most 20 characters"]),
    "unknown slot": (["mine", "--slot", "atention"], ["unknown slot 'atention'", "'attention'"]),
    "taken name": (["naive", "--slot", "attention"], ["attention 'naive' already exists"]),
    "missing slot": (["mine"], ["Missing option '--slot'"]),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_requests_are_one_line_and_write_nothing(klm, tmp_path, case):
    args, needles = BAD[case]
    code, _, err = klm("new-plugin", *args, "--dir", tmp_path / "plugins")
    assert_one_line_error(code, err, *needles)
    assert not (tmp_path / "plugins").exists() or not any((tmp_path / "plugins").iterdir())


def test_an_existing_package_is_never_overwritten(klm, tmp_path):
    existing = tmp_path / "klm-norm-mine"
    existing.mkdir()
    (existing / "klm_norm_mine.py").write_text("# my work")
    code, _, err = klm("new-plugin", "mine", "--slot", "norm", "--dir", tmp_path)
    assert_one_line_error(code, err, "klm-norm-mine already exists", "nothing was written")
    assert (existing / "klm_norm_mine.py").read_text() == "# my work"
    assert sorted(p.name for p in existing.iterdir()) == ["klm_norm_mine.py"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["klm-norm-mine"]  # no leftovers


def test_dir_that_is_a_file_is_refused(klm, tmp_path):
    (tmp_path / "plugins").write_text("not a folder")
    code, _, err = klm("new-plugin", "mine", "--slot", "norm", "--dir", tmp_path / "plugins")
    assert_one_line_error(code, err, "is a file")
