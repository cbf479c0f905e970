"""Errors the user can fix (the CLI prints them as one line and exits with code 2), and the
warning that a plugin could not be loaded."""


class KLMError(Exception):
    """A problem with the user's input or environment, with a message that says what to do."""


class ConfigError(KLMError):
    """An impossible or malformed run configuration."""


class UnknownComponent(KLMError):
    """A slot or component name that no installed plugin provides."""


class DataError(KLMError):
    """A corpus, evaluation set or cache that cannot be read."""


class CheckpointError(KLMError):
    """A run folder or checkpoint that cannot be loaded."""


class Interrupted(KLMError):
    """Training was stopped by a signal after writing a checkpoint."""


class NonFiniteLoss(KLMError):
    """The loss or the weights became NaN or infinite; the last good checkpoint is kept."""


class WriteFailed(KLMError):
    """A run file could not be written (a full disk, a file-size limit); the previous
    checkpoint is kept."""


class PluginWarning(UserWarning):
    """A plugin could not be loaded; the rest of KennethLM works without it."""


def first_line(e: Exception) -> str:
    """An exception from another library as one short line: its type and first line."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:160]}" if text else type(e).__name__
