"""KennethLM: a nanoGPT for experiments.

The public API for plugin authors is small and importing this package is cheap (no torch):

    from kennethlm_core import hookimpl           # mark your register hooks
    from kennethlm_core.components import ...     # PositionalEmbedding, Tokenizer, Corpus, Task
    from kennethlm_core.errors import ConfigError # raise it for a bad setting: one line, exit 2
"""

from kennethlm_core.hookspecs import SLOTS, hookimpl

__version__ = "0.1.0"
__all__ = ["SLOTS", "hookimpl", "__version__"]
