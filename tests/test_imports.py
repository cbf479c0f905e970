"""The import graph points one way.

import-linter checks pyproject.toml's contract, which stacks the core's modules in layers, and
one made here from the plugins/ folder: the core never imports a plugin. The plugins are single
modules, which import-linter does not take as roots, so their own rules are read from their
source: a plugin never imports another, and imports only the core's public modules. An import
inside a function of the core says why it is not at the top (torch kept out of `klm --help`, a
heavy library imported only where it is used) in a comment. The last tests show each check
failing on an import that breaks it.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from .conftest import REPO

LINT = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
# what a plugin's module may import from the core; its tests may use more (testing, plugins, ...)
PUBLIC = ("components", "config", "data", "errors", "evaluate", "hookspecs", "logs", "metric")
PUBLIC += ("loggers", "model", "precision")


def plugin_modules(root: Path = REPO / "plugins") -> list[str]:
    mods = []
    for pyproject in sorted(root.glob("*/pyproject.toml")):
        mods += tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["py-modules"]
    return mods


def core_modules(root: Path = REPO / "kennethlm_core") -> list[str]:
    names = [p.stem for p in root.glob("*.py") if p.stem != "__init__"]
    names += [p.name for p in root.iterdir() if (p / "__init__.py").exists()]
    return sorted(f"kennethlm_core.{n}" for n in names)


def toml_list(items) -> str:
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


def config(plugins: list[str]) -> str:
    """pyproject's [tool.importlinter] with "the core never imports a plugin" added (import-linter
    takes only packages as roots, so the plugins, single modules, are external to it)."""
    text = (REPO / "pyproject.toml").read_text()
    own = text[text.index("[tool.importlinter]") :]
    own = own.replace(
        'root_package = "kennethlm_core"',
        'root_package = "kennethlm_core"\ninclude_external_packages = true',
    )
    return f"""{own}
[[tool.importlinter.contracts]]
name = "the core never imports a plugin"
type = "forbidden"
source_modules = ["kennethlm_core"]
forbidden_modules = {toml_list(plugins)}
"""


def lint(tmp_path: Path, plugins: list[str], env=None):
    path = tmp_path / "importlinter.toml"
    path.write_text(config(plugins))
    return subprocess.run(
        [LINT, str(path), "--no-cache"], capture_output=True, text=True, cwd=tmp_path, env=env
    )


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # from pkg import module
    return found


def plugin_problems(plugin_files: dict[str, Path], core: list[str]) -> list[str]:
    """Imports of another plugin, or of a core module that is not public."""
    private = {m for m in core if m.rsplit(".", 1)[1] not in PUBLIC}
    problems = []
    for name, path in plugin_files.items():
        for mod in sorted(imports_of(path)):
            if mod in plugin_files and mod != name:
                problems.append(f"{name} imports the plugin {mod}")
            if any(mod == p or mod.startswith(p + ".") for p in private):
                problems.append(f"{name} imports {mod}, which is not public")
    return problems


def _says_why(line: str) -> bool:
    """Whether a source line has a comment beyond ``noqa`` (which says what, not why)."""
    comment = line.partition("#")[2]
    return bool(re.sub(r"^\s*noqa(:\s*[A-Z0-9, ]+)?", "", comment).strip())


def uncommented_local_imports(root: Path = REPO / "kennethlm_core") -> list[str]:
    """``file:line: import`` of each import block inside a function of the core (templates/ and
    hub_code/ are copied out, not imported) whose first line, or the line above it, has no
    comment. A block is a run of import statements one after the other."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent)
        if {"templates", "hub_code"} & set(rel.parts):
            continue
        source = path.read_text()
        lines = source.splitlines()
        tree = ast.parse(source)
        local = {
            id(node)
            for func in ast.walk(tree)
            if isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef)
            for node in ast.walk(func)
            if isinstance(node, ast.Import | ast.ImportFrom)
        }
        for node in ast.walk(tree):
            for _, stmts in ast.iter_fields(node):  # body, orelse, ...: a block is in one
                stmts = stmts if isinstance(stmts, list) else []
                for before, stmt in zip([None, *stmts], stmts, strict=False):
                    if id(stmt) not in local or isinstance(before, ast.Import | ast.ImportFrom):
                        continue  # not local, or not the first of its block
                    first, above = lines[stmt.lineno - 1], lines[stmt.lineno - 2]
                    if not _says_why(first) and not above.lstrip().startswith("#"):
                        problems.append(f"{rel}:{stmt.lineno}: {first.strip()}")
    return problems


def test_the_import_graph_keeps_its_contracts(tmp_path):
    assert LINT, "import-linter is a dev dependency: pip install -e '.[dev]'"
    plugins = plugin_modules()
    assert len(plugins) >= 20
    proc = lint(tmp_path, plugins)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 kept, 0 broken" in proc.stdout


def test_plugins_import_only_the_cores_public_modules_and_not_each_other():
    files = {m: next(REPO.glob(f"plugins/*/{m}.py")) for m in plugin_modules()}
    assert plugin_problems(files, core_modules()) == []


@pytest.fixture
def core_copy(tmp_path):
    """A copy of the core, first on the path, to break on purpose."""
    shutil.copytree(REPO / "kennethlm_core", tmp_path / "kennethlm_core")
    return tmp_path, {**os.environ, "PYTHONPATH": str(tmp_path)}


def test_an_upward_import_breaks_the_stack(core_copy):
    root, env = core_copy
    with open(root / "kennethlm_core" / "config.py", "a") as f:
        f.write("\nfrom kennethlm_core import train  # noqa\n")
    proc = lint(root, plugin_modules(), env)
    assert proc.returncode == 1
    assert "kennethlm_core.config is not allowed to import kennethlm_core.train" in proc.stdout


def test_the_core_importing_a_plugin_is_caught(core_copy):
    root, env = core_copy
    with open(root / "kennethlm_core" / "train.py", "a") as f:
        f.write("\nimport klm_tweak_softcap  # noqa\n")
    proc = lint(root, plugin_modules(), env)
    assert proc.returncode == 1
    assert "kennethlm_core is not allowed to import klm_tweak_softcap" in proc.stdout
    assert "kennethlm_core.train -> klm_tweak_softcap" in proc.stdout


def test_every_import_inside_a_function_says_why():
    assert uncommented_local_imports() == []


def test_an_uncommented_import_inside_a_function_is_caught(core_copy):
    root, _ = core_copy
    config = root / "kennethlm_core" / "config.py"
    n = len(config.read_text().splitlines())
    with open(config, "a") as f:
        f.write(
            "\n\ndef _planted():\n"
            "    import json  # noqa: F401\n"  # a noqa says what, not why
            "    from kennethlm_core import train  # noqa: F401\n"  # the same block
            "    if json:\n"
            "        # a reason, on the line above\n"
            "        import shlex  # noqa: F401\n"
            "    import difflib  # a reason, on the first line\n"
        )
    assert uncommented_local_imports(root / "kennethlm_core") == [
        f"kennethlm_core/config.py:{n + 4}: import json  # noqa: F401"
    ]


def test_a_plugin_importing_the_core_privately_or_another_plugin_is_caught(tmp_path):
    a, b = tmp_path / "klm_a.py", tmp_path / "klm_b.py"
    a.write_text("from kennethlm_core import hookimpl\nfrom kennethlm_core.evaluate import mcc\n")
    b.write_text("def f():\n    from kennethlm_core.train import train\n    import klm_a\n")
    assert plugin_problems({"klm_a": a, "klm_b": b}, core_modules()) == [
        "klm_b imports kennethlm_core.train, which is not public",
        "klm_b imports kennethlm_core.train.train, which is not public",
        "klm_b imports the plugin klm_a",
    ]
