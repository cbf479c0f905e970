"""Libraries' log messages, kept out of klm's one-line messages.

datasets and huggingface_hub print through a handler of their own, and torch logs through the
root logger, whose last-resort handler prints warnings to stderr. Any of them can put a line
in front of klm's ``klm: error: ...``: datasets logs "Failed to load JSON ..." just before it
raises the error that klm turns into one line. So the command line holds every library record
(``hold``); ``klm -v`` shows them as they come, and otherwise a command that succeeds ends with
one line counting them (``summary``). After a failure klm's own line says what went wrong.

``quiet(library)`` takes a library's own handlers away once it is imported (the registry does
it for what plugins imported, the corpus readers for datasets), so that its records reach the
root logger: without the command line (klm used as a library) they print as Python prints
any warning.
"""

from __future__ import annotations

import logging
import sys


class _Held(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []
        self.verbose = False

    def emit(self, record: logging.LogRecord) -> None:
        if self.verbose:
            print(f"klm: log: {record.name}: {record.getMessage()}", file=sys.stderr)
        else:
            self.records.append(record)


_held = _Held()


def hold() -> None:
    """Hold every library record that reaches the root logger (the command line's start)."""
    root = logging.getLogger()
    if _held not in root.handlers:
        root.addHandler(_held)
    _held.records.clear()


def show(verbose: bool = True) -> None:
    """Print library records as they come (``klm -v``) instead of holding them."""
    _held.verbose = verbose


def summary() -> str | None:
    """One line counting the held records by library, or None when there are none."""
    if not _held.records:
        return None
    names = sorted({r.name.split(".")[0] for r in _held.records})
    n = len(_held.records)
    return f"{n} message(s) from {', '.join(names)} not shown; klm -v shows them"


LIBRARIES = ("torch", "datasets", "huggingface_hub", "transformers")


def quiet(*libraries: str) -> None:
    """Take away the stderr handlers a library put on its loggers (torch puts one on many),
    so that their records propagate to the root logger and so to ``hold``."""
    loggers = logging.Logger.manager.loggerDict
    for name, logger in list(loggers.items()):
        if not isinstance(logger, logging.Logger):
            continue
        if not any(name == lib or name.startswith(lib + ".") for lib in libraries):
            continue
        streams = [h for h in logger.handlers if type(h) is logging.StreamHandler]
        for handler in streams:
            logger.removeHandler(handler)
        if streams:
            logger.propagate = True


def quiet_loaded() -> None:
    """``quiet`` every library of LIBRARIES that is imported by now."""
    quiet(*(lib for lib in LIBRARIES if lib in sys.modules))


def quiet_datasets():
    """The datasets library, its progress bars and its and huggingface_hub's logs quietened.
    Imported here, when a corpus or task first reads with it, so that `klm --help` does not."""
    import datasets  # heavy: imported here, as the docstring says
    import huggingface_hub

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    huggingface_hub.utils.logging.set_verbosity_error()  # no retry chatter when offline
    quiet("datasets", "huggingface_hub")  # their errors too, before klm's one line
    return datasets
