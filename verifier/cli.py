"""`popqorn` command line. Each subcommand lives in verifier/commands/<name>.py and exposes
`add_arguments(parser)` and `run(args) -> int`; this module only dispatches and turns
PopqornError into one line on stderr with the error's exit code.

Start-up is kept light: only the chosen command's module is imported (to add its arguments), and
command modules import torch, onnxruntime and matplotlib inside `run`, so `--help`, `--version`,
argument errors and `inspect` answer without loading them."""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import os
import sys

from verifier.errors import (
    InputError,
    ModelFileError,
    PopqornError,
    UnsupportedOperator,
)

COMMANDS = {
    "inspect": "show what the front end found in an ONNX model",
    "check": "compare the IR forward pass with onnxruntime on random inputs",
    "bounds": "certified lower/upper bounds of the outputs over a perturbation set",
    "certify": "largest certified perturbation radius per sample",
    "attack": "search for counterexamples (PGD) within a perturbation radius",
    "vnnlib": "answer a VNN-LIB property: sat / unsat / unknown / timeout",
    "audit": "certify a whole sample file on Ray workers into a resumable JSONL journal",
}

EXIT_CODES = f"""exit codes:
  0  success (check: outputs agree; certify: ran to completion)
  1  check found a mismatch / a command's own negative answer
  {PopqornError.exit_code}  bad command-line usage or option value
  {ModelFileError.exit_code}  model file missing, unreadable, too large, malformed or unsafe
  {UnsupportedOperator.exit_code}  the model uses an ONNX operator or attribute popqorn cannot convert
  {InputError.exit_code}  inputs, labels, output paths or threat-model options do not fit the model
 70  internal error (a bug: rerun with --debug and report it)
130  interrupted
141  the output's reader went away (e.g. piped into head)"""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (like every other refusal), exit code 2."""

    def error(self, message: str):
        self.exit(PopqornError.exit_code, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _VersionAction(argparse.Action):
    """--version, reading the installed distribution's metadata only when asked."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"popqorn {version()}")
        parser.exit(0)


def version() -> str:
    from importlib import metadata
    try:
        return metadata.version("popqorn")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _chosen_command(argv: list[str]) -> str | None:
    """The subcommand named on the command line: the first word that is not an option (the
    top-level options take no values)."""
    for word in argv:
        if word == "--":
            return None
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the command chosen in `argv` (all when None) gets its full arguments,
    so a command module is imported only when it runs."""
    chosen = None if argv is None else _chosen_command(argv)
    parser = _Parser(
        prog="popqorn", description="Certify robustness of recurrent networks exported to ONNX.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks")
    parser.add_argument("--version", action=_VersionAction, help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, help_text in COMMANDS.items():
        if argv is not None and name != chosen:
            sub.add_parser(name, help=help_text, description=help_text)
            continue
        module = _command_module(name)
        if module is None:
            continue
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show Python tracebacks")
        module.add_arguments(command)
        command.set_defaults(handler=module.run)
    return parser


def _command_module(name: str):
    try:
        return importlib.import_module(f"verifier.commands.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"verifier.commands.{name}":
            return None
        raise


class _CheckedStdout:
    """Standard output whose write failures (a full disk, `> /dev/full`) end the command as one
    InputError line instead of an internal error. A closed pipe stays a BrokenPipeError (exit 141).
    Everything but write and flush goes to the real stream."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        with _stdout_errors():
            return self._stream.write(text)

    def flush(self) -> None:
        with _stdout_errors():
            self._stream.flush()

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


@contextlib.contextmanager
def _stdout_errors():
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise InputError(f"cannot write to standard output: {exc.strerror or exc}") from None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return PopqornError.exit_code
    stdout, sys.stdout = sys.stdout, _CheckedStdout(sys.stdout)
    try:
        code = int(args.handler(args) or 0)
        sys.stdout.flush()  # a full disk shows now, while the exit code can still say so
        return code
    except PopqornError as exc:
        if args.debug:
            raise
        print(f"popqorn: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("popqorn: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`popqorn ... | head`): not a bug, nothing left to say
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the final flush cannot fail
        except (OSError, ValueError):
            pass
        return 141  # what a shell reports for a process ended by SIGPIPE (128 + 13)
    except Exception as exc:  # a bug: say so in one line unless debugging
        if args.debug:
            raise
        print(f"popqorn: internal error: {type(exc).__name__}: {exc} (rerun with --debug)", file=sys.stderr)
        return 70
    finally:
        sys.stdout = stdout


def entry() -> None:
    """The `popqorn` console script: main(), then a fast exit. Tearing down an interpreter that
    imported torch takes about 0.5 s (module finalisers), a quarter of a short run; every output
    is written and closed by then, so once the streams are flushed the process ends at once.
    Ray's atexit shutdown is still needed where Ray was imported, so those runs exit normally.
    The cyclic garbage collector is off until the model is loaded (options.startup_finished)."""
    gc.disable()
    code = main()
    if "ray" in sys.modules:
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing left to say
            pass
    os._exit(code)


if __name__ == "__main__":
    entry()
