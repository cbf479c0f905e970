"""The ``klm`` command line: ``cli.base`` holds the group and the entry point ``main``, and
each module below it a family of commands (importing it adds them to the group).

Importing the package is cheap: torch, datasets and plugins are imported inside the commands
that need them, so ``klm --help`` answers at once. Errors the user can fix print one line and
exit with code 2; nothing prints a traceback for them.
"""

from kennethlm_core.cli import compare, data, ledger, plugins, run, studies  # noqa: F401 (commands)
from kennethlm_core.cli.base import cli, flush_warnings, main
from kennethlm_core.cli.options import (
    overrides_from,
    parse_run_args,
    run_command,
    run_flags,
    run_options,
)

__all__ = [
    "cli",
    "flush_warnings",
    "main",
    "overrides_from",
    "parse_run_args",
    "run_command",
    "run_flags",
    "run_options",
]
