"""`popqorn` command line. Each subcommand lives in verifier/commands/<name>.py and exposes
`add_arguments(parser)` and `run(args) -> int`; this module only dispatches and turns
PopqornError into one line on stderr with the error's exit code."""

from __future__ import annotations

import argparse
import importlib
import sys

from verifier.errors import InputError, ModelFileError, PopqornError, UnsupportedOperator

COMMANDS = {
    "inspect": "show what the front end found in an ONNX model",
    "check": "compare the IR forward pass with onnxruntime on random inputs",
    "bounds": "certified lower/upper bounds of the outputs over a perturbation set",
    "certify": "largest certified perturbation radius per sample",
    "attack": "search for counterexamples (PGD) within a perturbation radius",
    "vnnlib": "answer a VNN-LIB property: sat / unsat / unknown / timeout",
}

EXIT_CODES = f"""exit codes:
  0  success (check: outputs agree; certify: ran to completion)
  1  check found a mismatch / a command's own negative answer
  {PopqornError.exit_code}  bad command-line usage or option value
  {ModelFileError.exit_code}  model file missing, unreadable, too large, malformed or unsafe
  {UnsupportedOperator.exit_code}  the model uses an ONNX operator or attribute popqorn cannot convert
  {InputError.exit_code}  inputs, labels or threat-model options do not fit the model
 70  internal error (a bug: rerun with --debug and report it)"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="popqorn", description="Certify robustness of recurrent networks exported to ONNX.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return PopqornError.exit_code
    try:
        return int(args.handler(args) or 0)
    except PopqornError as exc:
        if args.debug:
            raise
        print(f"popqorn: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("popqorn: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: say so in one line unless debugging
        if args.debug:
            raise
        print(f"popqorn: internal error: {type(exc).__name__}: {exc} (rerun with --debug)", file=sys.stderr)
        return 70


if __name__ == "__main__":
    sys.exit(main())
