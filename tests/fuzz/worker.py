"""The child side of the fuzz runner: `python -m tests.fuzz.worker` runs `popqorn` commands
(`verifier.cli.main(argv)`) one after another in one warm process, so the suite pays for the torch
import once instead of once per case.

Protocol: one JSON line per request on stdin ({"argv", "cwd", "env"}), one JSON line per reply on
the process's original stdout ({"code", "stdout", "stderr", "seconds"}; {"ready": true} once at
start). During a case, file descriptors 1 and 2 point at temporary files, so whatever the command
(or a library under it) prints is captured exactly as a user would see it. The parent sets the
memory cap (RLIMIT_AS) before this process starts, and kills it when a case overruns its time.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import warnings

MAX_CAPTURED_CHARS = 20_000


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when the test process dies."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError, TypeError):
        pass


def _read_back(handle) -> str:
    handle.seek(0)
    text = handle.read().decode("utf-8", "replace")
    return text if len(text) <= MAX_CAPTURED_CHARS else text[:MAX_CAPTURED_CHARS // 2] + "\n...\n" + text[-MAX_CAPTURED_CHARS // 2:]


def _warnings_as_in_a_fresh_process() -> None:
    """Python's default filters, but every warning shown every time: in a fresh `popqorn` process a
    warning is shown at least once, and a refusal with a warning above it is not one line."""
    warnings.resetwarnings()
    warnings.simplefilter("always")
    for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
        warnings.filterwarnings("ignore", category=category)


def run_case(argv: list[str], cwd: str | None, env: dict[str, str] | None) -> dict:
    """One command with stdout/stderr captured at the file-descriptor level; SystemExit (argparse's
    usage errors) counts as the exit code it carries."""
    from verifier.cli import main

    saved_env = {name: os.environ.get(name) for name in (env or {})}
    saved_cwd = os.getcwd()
    saved_fds = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        started = time.perf_counter()
        try:
            _warnings_as_in_a_fresh_process()
            os.environ.update(env or {})
            if cwd:
                os.chdir(cwd)
            try:
                code = main(argv)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
                if not isinstance(exc.code, (int, type(None))):
                    print(exc.code, file=sys.stderr)
            except BaseException as exc:  # noqa: BLE001 - main() must never raise: reported as a crash
                import traceback

                traceback.print_exc()
                code = f"raised {type(exc).__name__}"
        finally:
            seconds = time.perf_counter() - started
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved_fds[0], 1)
            os.dup2(saved_fds[1], 2)
            for fd in saved_fds:
                os.close(fd)
            os.chdir(saved_cwd)
            for name, value in saved_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        return {"code": code, "stdout": _read_back(out), "stderr": _read_back(err), "seconds": seconds}


def serve() -> None:
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # nothing but protocol lines reaches the parent's pipe
    os.close(devnull)
    _die_with_parent()
    import torch

    torch.set_num_threads(1)  # as in the test session (see tests/conftest.py)
    import parsers  # noqa: F401  (warm: the first case should not pay for the imports)
    import verifier.attack  # noqa: F401
    import verifier.certify  # noqa: F401
    import verifier.onnx_runtime  # noqa: F401

    protocol.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        reply = run_case(request["argv"], request.get("cwd"), request.get("env"))
        protocol.write(json.dumps(reply) + "\n")
    protocol.flush()
    os._exit(0)  # interpreter teardown with torch loaded takes seconds and proves nothing


if __name__ == "__main__":
    serve()
