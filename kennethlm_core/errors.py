"""Errors the user can fix. The CLI prints them as one line and exits with code 2."""


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
