"""The plugin manager: discovery through real entry points, duplicates, broken plugins,
disabling, strict mode, and a `klm --help` that imports neither torch nor any plugin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types
import warnings

import pytest

from kennethlm_core import hookimpl
from kennethlm_core.errors import KLMError, UnknownComponent
from kennethlm_core.plugins import PluginWarning, Registry

from .conftest import PYTHON, assert_one_line_error


def make_dist(root, dist, modules: dict[str, str], entry_points: dict[str, str], version="0.1"):
    """An installed distribution on ``root``: a dist-info folder and its modules."""
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    eps = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[kennethlm]\n{eps}")
    for name, source in modules.items():
        (root / f"{name}.py").write_text(textwrap.dedent(source))


GOOD = """
    from kennethlm_core import hookimpl

    @hookimpl
    def klm_register_attention(register):
        from kennethlm_core.builtin.layers import NaiveAttention
        register("copycat", NaiveAttention, "naive attention under another name",
                 provides={"score_bias"})
"""


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A folder on sys.path (and PYTHONPATH for subprocesses) to install fake plugins into."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), *sys.path]))
    return tmp_path


def test_entry_point_plugin_is_discovered_with_its_distribution(site):
    make_dist(site, "klm-fake-good", {"klm_fake_good": GOOD}, {"good": "klm_fake_good"}, "1.2.3")
    comp = Registry().get("attention", "copycat")
    assert (comp.distribution, comp.version, comp.plugin) == ("klm-fake-good", "1.2.3", "good")
    assert comp.provides == {"score_bias"}


def test_list_plugins_json_shows_entry_point_plugins_and_broken_ones(site):
    make_dist(site, "klm-fake-good", {"klm_fake_good": GOOD}, {"good": "klm_fake_good"})
    make_dist(
        site,
        "klm-fake-bad",
        {"klm_fake_bad": "raise ImportError('no such thing')"},
        {"bad": "klm_fake_bad"},
    )
    proc = subprocess.run(
        [PYTHON, "-m", "kennethlm_core", "list-plugins", "--json"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    rows = {(r["slot"], r["name"]): r for r in data["components"]}
    assert rows[("attention", "copycat")]["distribution"] == "klm-fake-good"
    assert rows[("attention", "naive")]["distribution"] == "kennethlm"
    assert [b["plugin"] for b in data["broken"]] == ["bad"]
    assert "no such thing" in data["broken"][0]["error"]
    assert "failed to load" in proc.stderr  # a warning, not a failure


def test_strict_mode_makes_a_broken_plugin_fatal(site):
    make_dist(
        site,
        "klm-fake-bad",
        {"klm_fake_bad": "raise ImportError('no such thing')"},
        {"bad": "klm_fake_bad"},
    )
    env = {**os.environ, "KLM_STRICT_PLUGINS": "1"}
    proc = subprocess.run(
        [PYTHON, "-m", "kennethlm_core", "list-plugins"], capture_output=True, text=True, env=env
    )
    assert_one_line_error(
        proc.returncode, proc.stderr, "'bad'", "klm-fake-bad", "KLM_STRICT_PLUGINS"
    )


def test_disabled_plugin_is_skipped(site):
    make_dist(
        site, "klm-fake-bad", {"klm_fake_bad": "raise ImportError('boom')"}, {"bad": "klm_fake_bad"}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # skipping must not even warn
        reg = Registry(disabled=["bad"])
    assert reg.broken == [] and reg.disabled == ["bad"]
    assert Registry(disabled=["klm-fake-bad"]).disabled == ["bad"]  # by distribution name too


def test_duplicate_names_fail_naming_both_distributions(site):
    make_dist(site, "klm-fake-one", {"klm_fake_one": GOOD}, {"one": "klm_fake_one"})
    make_dist(site, "klm-fake-two", {"klm_fake_two": GOOD}, {"two": "klm_fake_two"})
    with pytest.raises(KLMError, match="klm-fake-one.*klm-fake-two|klm-fake-two.*klm-fake-one"):
        Registry()


def test_duplicate_of_a_builtin_names_kennethlm():
    plugin = types.ModuleType("dup")

    @hookimpl
    def klm_register_attention(register):
        register("naive", object, "a second naive")

    plugin.klm_register_attention = klm_register_attention
    reg = Registry(entry_points=False)
    with pytest.raises(KLMError, match="attention 'naive' is registered twice: by kennethlm"):
        reg.add_plugin(plugin, "dup", "klm-dup")


def test_a_hook_that_raises_marks_only_that_plugin_broken():
    plugin = types.ModuleType("half")

    @hookimpl
    def klm_register_norm(register):
        register("half-norm", object)
        raise RuntimeError("second half failed")

    plugin.klm_register_norm = klm_register_norm
    reg = Registry(entry_points=False)
    with pytest.warns(PluginWarning, match="second half failed"):
        assert reg.add_plugin(plugin, "half", "klm-half") is False
    assert "half-norm" not in reg.names("norm")  # nothing half-registered
    assert reg.broken[0].plugin == "half"
    assert "layernorm" in reg.names("norm")  # the rest works


def test_a_misspelled_hook_is_reported():
    plugin = types.ModuleType("typo")
    plugin.klm_register_atention = hookimpl(lambda register: None)
    reg = Registry(entry_points=False)
    with pytest.warns(PluginWarning, match="klm_register_atention"):
        reg.add_plugin(plugin, "typo", "klm-typo")


def test_unknown_names_list_known_ones_with_did_you_mean():
    reg = Registry(entry_points=False)
    with pytest.raises(UnknownComponent, match="unknown attention 'naiv'; did you mean 'naive'"):
        reg.get("attention", "naiv")
    with pytest.raises(UnknownComponent, match="unknown slot 'atention'; did you mean 'attention'"):
        reg.get("atention", "naive")


def test_register_validates_names_and_slots():
    for bad_call in (
        lambda r: r("Bad Name", object),
        lambda r: r("ok", "not callable"),
        lambda r: r("ok", object, requires={"nonslot": {"x"}}),
    ):
        plugin = types.ModuleType("bad")
        plugin.klm_register_mlp = hookimpl(lambda register, f=bad_call: f(register))
        reg = Registry(entry_points=False)
        with pytest.warns(PluginWarning):
            assert reg.add_plugin(plugin, "bad", "klm-bad") is False


def test_plugin_commands_are_added_lazily(site):
    make_dist(
        site,
        "klm-fake-cmd",
        {
            "klm_fake_cmd": """
        import click
        from kennethlm_core import hookimpl

        @hookimpl
        def klm_register_commands(cli):
            @cli.command("hello")
            def hello():
                click.echo("hej fra et plugin")
    """
        },
        {"cmd": "klm_fake_cmd"},
    )
    proc = subprocess.run([PYTHON, "-m", "kennethlm_core", "hello"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "hej fra et plugin"


HEAVY = ("torch", "numpy", "scipy", "matplotlib", "transformers", "datasets", "pyarrow")
HEAVY += ("tokenizers",)


def test_help_imports_neither_torch_nor_plugins(site):
    """Nor the other heavy libraries: function-local imports keep them for the commands that
    use them (tests/test_imports.py checks each says so)."""
    make_dist(site, "klm-fake-good", {"klm_fake_good": GOOD}, {"good": "klm_fake_good"})
    code = textwrap.dedent(f"""
        import sys
        from kennethlm_core.cli import main
        for args in (["--help"], ["--version"], ["run", "--help"], ["eval", "--help"]):
            try:
                main(args)
            except SystemExit as e:
                assert e.code == 0, (args, e.code)
        heavy = [m for m in {HEAVY + ("klm_fake_good", "kennethlm_core.builtin")}
                 if m in sys.modules]
        print("imported:", heavy)
    """)
    proc = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "imported: []" in proc.stdout


GREEDY = """
    from kennethlm_core import hookimpl

    @hookimpl
    def klm_register_posemb(register):
        from kennethlm_core.builtin.layers import LearnedPositions
        register("greedy", LearnedPositions, "learned positions that want the run's settings",
                 options={"lr": 0.5, "steps": 3})
"""


def test_a_plugin_declaring_a_core_setting_is_refused_and_the_users_settings_win(site, tmp_path):
    """The issue's throwaway posemb: options={"lr": 0.5, "steps": 3} once turned
    --lr 1e-3 --steps 600 into lr 0.5 and 3 steps. Now the plugin is refused when plugins
    load (one line naming it and the core), and the run trains with what it was given."""
    make_dist(site, "klm-fake-greedy", {"klm_fake_greedy": GREEDY}, {"greedy": "klm_fake_greedy"})
    out = tmp_path / "run"
    tiny = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16"]
    proc = subprocess.run(
        [PYTHON, "-m", "kennethlm_core", "run", *tiny, "--batch-size", "2", "--lr", "1e-3"]
        + ["--steps", "4", "--eval-every", "4", "--set", "final_eval_bytes=512", "-q"]
        + ["--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    warned = [line for line in proc.stderr.splitlines() if "klm-fake-greedy" in line]
    assert len(warned) == 1, proc.stderr
    assert "option 'lr'" in warned[0] and "core setting of kennethlm" in warned[0]
    config = json.loads((out / "config.json").read_text())
    assert (config["lr"], config["steps"]) == (1e-3, 4)
    assert json.loads((out / "summary.json").read_text())["steps"] == 4


def _plugin(slot: str, name: str, options: dict):
    plugin = types.ModuleType(f"p_{name}")
    from kennethlm_core.builtin.layers import LearnedPositions

    def hook(register):
        register(name, LearnedPositions, options=options)

    setattr(plugin, f"klm_register_{slot}", hookimpl(hook))
    return plugin


def test_an_option_of_another_distributions_component_is_refused_naming_both():
    reg = Registry(entry_points=False)
    assert reg.add_plugin(_plugin("attention", "wide", {"width": 8}), "wide", "klm-a")
    with pytest.warns(PluginWarning) as caught:
        assert not reg.add_plugin(_plugin("tweak", "narrow", {"width": 2}), "narrow", "klm-b")
    (message,) = [str(w.message) for w in caught]
    assert "option 'width'" in message
    assert "(klm-b)" in message and "attention 'wide' (klm-a)" in message
    assert "narrow" not in reg.names("tweak")  # refused whole
    assert reg.get("attention", "wide").options == {"width": 8}  # the first stays
    assert reg.broken[0].plugin == "narrow"


def test_components_that_never_share_a_run_may_share_an_option():
    """One mlp per run, so every MLP may have its mlp_ratio (the built-in gelu has one);
    two tweaks can be in one run, so they may not share one."""
    reg = Registry(entry_points=False)
    assert "mlp_ratio" in reg.get("mlp", "gelu").options
    assert reg.add_plugin(_plugin("mlp", "wider", {"mlp_ratio": 6.0}), "wider", "klm-c")
    assert reg.add_plugin(_plugin("tweak", "one", {"strength": 1.0}), "one", "klm-d")
    with pytest.warns(PluginWarning, match="option 'strength'.*tweak 'one' \\(klm-d\\)"):
        assert not reg.add_plugin(_plugin("tweak", "two", {"strength": 2.0}), "two", "klm-e")


def test_no_installed_plugin_is_refused_for_its_options():
    reg = Registry()
    assert not [b for b in reg.broken if "declares option" in b.error], reg.broken


def test_an_option_never_overwrites_a_core_field_in_the_saved_configuration():
    from kennethlm_core.config import RunConfig

    cfg = RunConfig(lr=1e-3)
    cfg.options = {"lr": 0.5, "window": 4}
    assert cfg.to_dict()["lr"] == 1e-3 and cfg.to_dict()["window"] == 4
