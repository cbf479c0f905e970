"""The ``klm`` group, its console and registry helpers, and the entry point ``main``:
user errors print one line and exit 2."""

from __future__ import annotations

import os
import sys
import traceback
import warnings
from pathlib import Path

import click
from rich.console import Console

from kennethlm_core import logs
from kennethlm_core.errors import Interrupted, KLMError, PluginWarning


def _console(stderr: bool = False):
    return Console(stderr=stderr, highlight=False)


class KLMGroup(click.Group):
    """Built-in commands, plus those plugins add (loaded only when a name is not built in)."""

    def get_command(self, ctx, name):
        command = super().get_command(ctx, name)
        if command is None and not getattr(self, "_plugins_loaded", False):
            self._plugins_loaded = True
            _registry(ctx).add_commands(self)
            command = super().get_command(ctx, name)
        return command


def _progress(quiet: bool):
    """Where a command that trains many runs says what it does: stderr, unless ``-q``."""
    console = _console(stderr=True)
    return (lambda message: None) if quiet else (lambda m: console.print(m, soft_wrap=True))


def _disabled(ctx: click.Context | None) -> list[str]:
    """The plugins named with `klm --disable-plugin`."""
    if ctx is None:
        return []
    return list((ctx.find_root().params or {}).get("disable_plugin") or ())


def _registry(ctx: click.Context | None = None):
    # imports torch: not at the top, for `klm --help`
    from kennethlm_core.plugins import get_registry

    return get_registry(_disabled(ctx))


@click.group(cls=KLMGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--disable-plugin",
    multiple=True,
    metavar="NAME",
    help="Skip a plugin (entry-point or distribution name); repeatable.",
)
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Show the log messages of libraries (datasets, huggingface_hub, torch) as they come.",
)
@click.version_option(package_name="kennethlm", prog_name="klm")
def cli(disable_plugin, verbose):
    """KennethLM: a nanoGPT for experiments, every idea a plugin, every result in bits per byte.

    \b
    klm run                                  train the default GPT on the Danish sample
    klm run --attention flash --posemb alibi choose components by slot
    klm list-plugins                         what is installed, by slot
    klm eval RUN --task all                  evaluate a run
    klm sample RUN --prompt "Der var engang" generate text

    Plugins may add commands; `klm list-plugins` lists them.
    """
    logs.show(verbose)


# -- entry point -----------------------------------------------------------------------------


_argv: list[str] = []  # the arguments of this invocation (klm run --nproc passes them on)


def argv() -> list[str]:
    """The arguments ``main`` was given."""
    return _argv


_held: list[str] = []  # warnings about broken plugins, printed by flush_warnings


def _showwarning(message, category, filename, lineno, file=None, line=None):
    if issubclass(category, PluginWarning):  # held: an error about that plugin says it all
        _held.append(str(message))
    else:
        print(f"klm: warning: {message}", file=sys.stderr)


def flush_warnings(error: str = "") -> None:
    """Print the held plugin warnings, except those about a plugin the error names."""
    for message in _held:
        plugin = message.split("'")[1] if message.count("'") >= 2 else message
        if f"'{plugin}'" not in error:
            print(f"klm: warning: {message}", file=sys.stderr)
    _held.clear()


def _plugin_failure(error: BaseException) -> str | None:
    """One line for an exception raised inside a plugin's code (a bug in the plugin, not in
    the user's input), or None when it came from elsewhere."""
    from kennethlm_core.plugins import _cache  # imports torch: not at the top, for `klm --help`

    modules = {}
    for registry in _cache.values():
        for name, module in registry.pm.list_name_plugin():
            path = getattr(module, "__file__", None)
            if path and name in registry._dist and registry._dist[name][0] != "kennethlm":
                modules[str(Path(path).resolve())] = (name, registry._dist[name][0])
    for frame in reversed(traceback.extract_tb(error.__traceback__)):
        hit = modules.get(str(Path(frame.filename).resolve()))
        if hit:
            name, dist = hit
            what = f"{type(error).__name__}: {error}".splitlines()[0][:200]
            return (
                f"plugin '{name}' ({dist}) failed: {what} (line {frame.lineno} of "
                f"{Path(frame.filename).name}); report it to its authors, or run without it: "
                f"--disable-plugin {name}"
            )
    return None


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors print one line and exit 2."""
    global _argv
    _argv = list(sys.argv[1:] if argv is None else argv)
    warnings.showwarning = _showwarning
    logs.hold()  # a library's log line must not come before klm's one line
    try:
        cli.main(args=argv, prog_name="klm", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        print(f"klm: error: {e.format_message()}", file=sys.stderr)
        sys.exit(2)
    except click.Abort:
        print("klm: aborted", file=sys.stderr)
        sys.exit(130)
    except KLMError as e:
        message = " ".join(str(e).splitlines())  # one line, whatever the input held
        if isinstance(e, Interrupted) and os.environ.get("RANK", "0") != "0":
            sys.exit(130)  # several processes: rank 0 says it once
        flush_warnings(message)
        print(
            f"klm: {'stopped' if isinstance(e, Interrupted) else 'error'}: {message}",
            file=sys.stderr,
        )
        sys.exit(130 if isinstance(e, Interrupted) else 2)
    except Exception as e:
        message = _plugin_failure(e)
        if message is None:
            flush_warnings()
            raise  # a bug in KennethLM itself: the traceback is for its developers
        flush_warnings(message)
        print(f"klm: error: {message}", file=sys.stderr)
        sys.exit(2)
    flush_warnings()
    if logs.summary():
        print(f"klm: note: {logs.summary()}", file=sys.stderr)
    sys.exit(0)
