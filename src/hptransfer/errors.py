"""The project's own error type for bad user input.

Anything the user can fix (an unknown name, a value out of range, a missing file) raises
:class:`ConfigError` with a one-line message that names the key or file. The command line
catches this type alone: it prints the message and exits with code 2. Every other exception is
a bug and keeps its traceback. This module imports nothing, so any layer may raise it.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """Bad user input. The CLI prints the message on one line and exits with code 2."""
