"""The errors vlrl raises on purpose: a user can fix each one, and its message says how.

Every such error derives from :class:`VlrlError`. The entry points (``stages/*.py`` and the ``vlrl``
command, through :mod:`vlrl.entry`) print its message, a few lines at most, and exit non-zero without
a traceback; any other exception is a bug and keeps its traceback. A message names what failed (the
file, the params key), the value seen, and what to do.

Several classes also derive from the built-in type a caller would expect (``FileNotFoundError``,
``ValueError``), so ``except FileNotFoundError`` keeps working around them.

Pure module: the standard library only.
"""

from __future__ import annotations


class VlrlError(Exception):
    """Base of every error vlrl raises on purpose; ``exit_code`` is the process status it ends with."""

    exit_code = 1


class UsageError(VlrlError):
    """A bad command line (the ``vlrl`` command's and argparse's convention: exit status 2)."""

    exit_code = 2


class ConfigError(VlrlError, ValueError):
    """A parameter is missing, unknown, of the wrong type or out of range."""


class MissingInputError(VlrlError, FileNotFoundError):
    """An input file or folder is not there; the message names the stage that writes it."""


class CorruptInputError(VlrlError, ValueError):
    """An input exists but cannot be used (truncated, wrong type, written by another setup)."""


class OutputError(VlrlError, OSError):
    """An output cannot be written (read-only, full disk, not ours to replace); the old one is intact."""


class EnvironmentProblem(VlrlError, RuntimeError):
    """The machine lacks something the run needs: a CUDA device, a package, the network."""
