"""Command-line and validation plumbing: one-line errors, integer checks, argument types, exit codes.

Every entry point (``icr-interp``, ``probes/*.py``, ``case_studies/*.py``) and every validating function
uses these, so the conventions are defined once:

* an error is reported as **one line** (:func:`one_line`);
* "an integer, not a bool, in range" is one check (:func:`check_int`), and its argparse twin
  (:func:`int_arg`) parses a command-line value through it;
* a bad argument prints ``PROG: error: ...`` and exits **2** before any work; a failure while running
  (running out of memory included) prints one line and exits **1**; Ctrl-C prints ``PROG: interrupted`` and exits **130**
  (:func:`run_main`); never a traceback.

This module imports only the standard library, so a script can parse its arguments (and answer ``--help``)
before torch or TransformerLens load.
"""

import argparse
import signal
import sys
import threading
from collections.abc import Callable

EXIT_USAGE, EXIT_FAILURE, EXIT_INTERRUPTED = 2, 1, 130
SEED_LIMIT = 2**63  # seeds are torch.Generator seeds: integers in [0, 2**63)


def one_line(message: BaseException | str) -> str:
    """A message (or an exception's message) squeezed onto one line; an empty one names the exception type."""
    text = " ".join(str(message).split())
    if text:
        return text
    return type(message).__name__ if isinstance(message, BaseException) else "unknown error"


class UsageError(ValueError):
    """A bad argument, found after parsing; reported like argparse's errors (exit 2)."""


def check_int(value, what: str, low: int | None = None, high: int | None = None) -> int:
    """``value`` if it is an integer (not a bool) in ``[low, high]``; else a one-line ValueError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{what} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{what} must be <= {high}, got {value}")
    return value


def int_arg(what: str, low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type=`` that parses an integer and checks it with :func:`check_int`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be an integer, got {text!r}") from None
        try:
            return check_int(value, what, low, high)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


seed_arg = int_arg("--seed", 0, SEED_LIMIT - 1)


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit code 2.

    ``error_prog`` names the program in errors (default ``prog``); a command's subparsers pass the
    command's name, so ``icr-interp train --seed x`` says ``icr-interp: error: ...``.
    """

    def __init__(self, *args, error_prog: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.error_prog = error_prog

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.error_prog or self.prog}: error: {one_line(message)}\n")


def run_main(prog: str, body: Callable[[], int], failures: tuple[type[BaseException], ...] = (
        ValueError, OSError, KeyError, RuntimeError, ImportError)) -> int:
    """Run ``body`` with the exit-code conventions: UsageError -> 2, ``failures`` -> 1, Ctrl-C -> 130.

    ``body`` may parse arguments itself (argparse's ``SystemExit`` passes through with its code).
    """
    _SIGINTS.clear()
    ours = threading.current_thread() is threading.main_thread() and \
        signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if ours:
        signal.signal(signal.SIGINT, _on_sigint)  # the same KeyboardInterrupt, remembered
    try:
        return _run(prog, body, failures)
    finally:
        if ours:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def _run(prog: str, body: Callable[[], int], failures: tuple[type[BaseException], ...]) -> int:
    try:
        code = body()
        if _SIGINTS:  # a Ctrl-C that a library swallowed (seen once: the run went on and exited 0) still counts
            print(f"{prog}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        return code
    except SystemExit as e:  # argparse: --help (0) or a bad argument (2)
        return e.code if isinstance(e.code, int) else int(e.code is not None)
    except UsageError as e:
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MemoryError as e:  # numpy's _ArrayMemoryError included: one line, whatever the caller's failures
        print(f"{prog}: error: out of memory: {one_line(e) if str(e) else 'an allocation failed'} "
              "(try fewer prompts, a smaller model or a machine with more memory)", file=sys.stderr)
        return EXIT_FAILURE
    except failures as e:
        if _interrupted(e):  # Ctrl-C inside a library's lazy import, re-raised by it as an import error
            print(f"{prog}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return EXIT_FAILURE


_SIGINTS: list[int] = []  # Ctrl-Cs received while run_main runs (see _interrupted)


def _on_sigint(signum, frame):
    _SIGINTS.append(signum)
    raise KeyboardInterrupt


def _interrupted(e: BaseException) -> bool:
    """Whether a failure follows a Ctrl-C: libraries with lazy imports (transformers) turn the KeyboardInterrupt
    raised inside an import into an import error of their own, without chaining it."""
    return bool(_SIGINTS) or isinstance(e.__cause__ or e.__context__, KeyboardInterrupt)


def exit_process(code: int) -> None:
    """End a script's process with ``code`` (a script's ``if __name__ == "__main__"`` line).

    An interrupted run (130) leaves through ``os._exit`` after flushing: once, a run that printed ``interrupted``
    and returned 130 still died by SIGINT during the interpreter's finalisation (exit status -2; Ctrl-C had
    landed while torch was importing; the likely cause, CPython's "unhandled KeyboardInterrupt" mark set inside an
    extension's import, is not proven).  Nothing runs between the return and ``os._exit``.
    """
    import os

    if code == EXIT_INTERRUPTED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)

