"""How every entry point ends: ``stages/*.py`` and the ``vlrl`` command.

A :class:`~vlrl.errors.VlrlError` (bad params, missing or corrupt input, no network, no GPU) is the
user's to fix: its message goes to stderr, prefixed with the program name, and the process exits
with the error's status (1, or 2 for a bad command line), without a traceback. ``VLRL_DEBUG=1``
re-raises it, traceback included. Any other exception is a bug and keeps its traceback.

A stage run as several processes (:mod:`vlrl.launch`) prints such an error once, not once per
process: a worker started by vlrl's launcher leaves the message in torch elastic's error file and the
launcher prints it; under another launcher only rank 0 prints. The other ranks log warnings only.

    from vlrl.entry import run_stage

    def main() -> None:
        ...

    if __name__ == "__main__":
        run_stage(main)

Pure module: imports neither torch nor DVC.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from vlrl.config import DEFAULT_PARAMS_PATH, PROFILES
from vlrl.errors import OutputError, VlrlError

DEBUG_VARIABLE = "VLRL_DEBUG"
#: Exit status after Ctrl-C (128 + SIGINT), the shell's convention.
INTERRUPTED = 130
#: Set by vlrl's launcher (vlrl.launch) in the environment of the workers it starts: its process id.
LAUNCHER_PID_VARIABLE = "VLRL_LAUNCHER_PID"
#: Where torch elastic asks each worker to leave the reason it failed (torch.distributed.elastic).
ERROR_FILE_VARIABLE = "TORCHELASTIC_ERROR_FILE"


def debug_enabled() -> bool:
    """``VLRL_DEBUG`` is set to something other than empty, 0, false, no or off."""
    return os.environ.get(DEBUG_VARIABLE, "").strip().lower() not in ("", "0", "false", "no", "off")


def report_error(prog: str, error: VlrlError) -> int:
    """Print ``prog: error: <message>`` to stderr; returns the exit status for ``error``."""
    message = str(error).strip() or type(error).__name__
    try:
        print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    except (OSError, ValueError):  # stderr itself is gone: the status still says it failed
        pass
    return error.exit_code


def is_secondary_process() -> bool:
    """A process of a multi-process run other than rank 0 (``RANK`` as torch elastic sets it)."""
    return os.environ.get("RANK", "0").strip() not in ("", "0")


def leave_error_for_launcher(message: str, exit_code: int) -> bool:
    """In a worker started by vlrl's launcher, write ``message`` to torch elastic's error file
    (``{"message", "timestamp"}``, as ``torch.distributed.elastic.multiprocessing.errors`` reads it) for
    the launcher to print once; False when there is no such launcher or file."""
    path = os.environ.get(ERROR_FILE_VARIABLE)
    if LAUNCHER_PID_VARIABLE not in os.environ or not path:
        return False
    record = {"message": message, "timestamp": int(time.time()), "vlrl": {"exit_code": exit_code}}
    with contextlib.suppress(OSError):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(record), encoding="utf-8")
        return True
    return False


def emit(text: str) -> None:
    """Print ``text`` and a newline on stdout and flush, so that a closed pipe, a full disk or a closed
    stdout ends the command with one line (:class:`~vlrl.errors.OutputError`) instead of a traceback at
    exit."""
    if sys.stdout is None:
        raise OutputError("cannot write the output: stdout is closed; run the command with stdout open")
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except (OSError, ValueError) as exc:
        _discard_stdout()
        reason = getattr(exc, "strerror", None) or str(exc)
        raise OutputError(f"cannot write the output to stdout: {reason}") from exc


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so that Python's final flush does not fail again (Python's docs,
    "Note on SIGPIPE")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def configure_logging() -> None:
    """INFO lines as ``LEVEL name: message`` on stderr (progress bars go there too); WARNING and above
    only on the secondary processes of a multi-process run."""
    logging.basicConfig(level=logging.WARNING if is_secondary_process() else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")


def run_stage(main: Callable[[], int | None], prog: str | None = None) -> NoReturn:
    """Run ``main`` and exit: 0 (or its return value), the error's status, or 130 on Ctrl-C."""
    prog = prog or Path(sys.argv[0]).as_posix()
    configure_logging()
    try:
        status = main()
        if sys.stdout is not None:
            try:
                sys.stdout.flush()
            except (OSError, ValueError) as exc:
                _discard_stdout()
                raise OutputError(f"cannot write the output to stdout: {getattr(exc, 'strerror', None) or exc}") \
                    from exc
    except VlrlError as error:
        if debug_enabled():
            raise
        message = str(error).strip() or type(error).__name__
        if leave_error_for_launcher(message, error.exit_code) or is_secondary_process():
            sys.exit(error.exit_code)  # printed once: by the launcher, or by rank 0
        sys.exit(report_error(prog, error))
    except KeyboardInterrupt:
        if debug_enabled():
            raise
        if not is_secondary_process():
            print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(INTERRUPTED)
    sys.exit(status or 0)


def stage_parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser with the options every stage takes: ``--profile`` and ``--params``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", required=True, choices=PROFILES, help="which profile of params.yaml")
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS_PATH, help="default: %(default)s")
    return parser
