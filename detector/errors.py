"""The one error type for bad detector input (configuration or rules files).

Its message is a single sentence naming the file, the item or key, and what is
wrong; the CLI prints it as is, never a traceback.
"""

from __future__ import annotations


class ConfigError(Exception):
    """A configuration or rules file the detector cannot use."""
