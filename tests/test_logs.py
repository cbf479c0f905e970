"""Libraries' log messages stay out of klm's one-line messages (logs.py), in real processes:
held and counted in one line when a command succeeds, shown as they come with `klm -v`, and
absent when klm reports an error (the bad-input table checks every error case)."""

from __future__ import annotations

import subprocess

from .conftest import PYTHON
from .test_plugins import make_dist, site  # noqa: F401 - the fixture

CHATTY = """
    import logging
    import click
    from kennethlm_core import hookimpl

    @hookimpl
    def klm_register_commands(cli):
        @cli.command("chatty")
        def chatty():
            import torch  # noqa: F401 - torch's own handlers are in place now
            logging.getLogger("torch.fake").warning("a kernel fell back to a slower path")
            logging.getLogger("datasets.fake").error("a cache file was rebuilt")
            click.echo("done")
"""


def klm(*args):
    proc = subprocess.run([PYTHON, "-m", "kennethlm_core", *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr.strip().splitlines()


def test_library_logs_are_counted_in_one_line_and_shown_with_v(site):  # noqa: F811
    make_dist(site, "klm-fake-chatty", {"klm_fake_chatty": CHATTY}, {"chatty": "klm_fake_chatty"})
    (note,) = klm("chatty")
    assert note == "klm: note: 2 message(s) from datasets, torch not shown; klm -v shows them"
    shown = klm("-v", "chatty")
    assert shown == [
        "klm: log: torch.fake: a kernel fell back to a slower path",
        "klm: log: datasets.fake: a cache file was rebuilt",
    ]


def test_a_command_with_nothing_logged_prints_nothing_on_stderr():
    assert klm("list-plugins", "--slot", "posemb") == []
