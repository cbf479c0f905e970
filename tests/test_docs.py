"""The documentation site (mkdocs.yml, docs/) builds with --strict: a broken link or anchor,
a page left out of the nav or a docstring the API reference cannot read fails the suite.
README.md is the front door: short, and every link in it leads to a file that exists."""

import os
import re
import shutil
import subprocess
import sys

from .conftest import REPO


def build(config, site):
    """`mkdocs build --strict` in a process of its own, as `make docs` runs it."""
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", config, "-d", site],
        cwd=config.parent,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # Material's banner about its future
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_site_builds_strictly_with_every_page_and_the_api_reference(tmp_path):
    proc = build(REPO / "mkdocs.yml", tmp_path / "site")
    assert proc.returncode == 0, proc.stderr[-4000:]
    site = tmp_path / "site"
    for page in ["tour", "data", "evaluation", "reliability", "speed", "protocol", "results"]:
        assert (site / page / "index.html").is_file(), page
    for image in ["ladder.png", "record-vs-posemb-rope.png", "size-rule.png"]:
        assert (site / image).stat().st_size > 10_000  # the README's old paths, docs/*.png
    # the API reference is generated from the docstrings of the modules plugins import
    api = {m: (site / "api" / m / "index.html").read_text() for m in ("hookspecs", "testing")}
    assert 'id="kennethlm_core.hookspecs.klm_register_tweak"' in api["hookspecs"]
    assert "A seam holds one tweak" in api["hookspecs"]
    assert 'id="kennethlm_core.testing.conformance"' in api["testing"]
    assert "a TaskResult of finite metrics" in api["testing"]  # the module docstring's list
    components = (site / "api" / "components" / "index.html").read_text()
    assert 'id="kennethlm_core.components.Callback.load_state_dict"' in components
    # the results page holds the ledger's tables, rendered
    results = (site / "results" / "index.html").read_text()
    assert "<td>r1</td>" in results and "<td><code>--posemb rope</code></td>" in results


def test_a_broken_link_or_anchor_fails_the_build(tmp_path):
    shutil.copy(REPO / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(REPO / "docs", tmp_path / "docs")
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "kennethlm_core", tmp_path / "kennethlm_core", ignore=skip)  # API
    tour = tmp_path / "docs" / "tour.md"
    tour.write_text(tour.read_text() + "\nSee [the data](data.md#no-such-section).\n")
    proc = build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert proc.returncode == 1
    assert "'data.md' does not contain an anchor '#no-such-section'" in proc.stderr

    tour.write_text(tour.read_text().replace("data.md#no-such-section", "nowhere.md"))
    (tmp_path / "docs" / "orphan.md").write_text("# Not in the nav\n")
    proc = build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert proc.returncode == 1
    assert "contains a link 'nowhere.md', but the target is not found" in proc.stderr
    assert 'not included in the "nav" configuration:\n  - orphan.md' in proc.stderr, proc.stderr


def test_the_readme_is_a_short_front_door_whose_links_resolve():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    assert "make run" in readme and "make test" in readme
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [t for t in targets if "://" not in t]
    assert "docs/results.md" in local and "docs/index.md" in local
    for target in local:
        assert (REPO / target).exists(), f"README.md links to {target}, which does not exist"


def test_contributing_points_into_the_site():
    text = (REPO / "CONTRIBUTING.md").read_text()
    for target in re.findall(r"\]\(([^)#\s]+)", text):
        assert (REPO / target).exists(), f"CONTRIBUTING.md links to {target}"
    assert "docs/plugins.md" in text
