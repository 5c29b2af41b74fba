"""Running fuzz cases as real `popqorn` commands under a memory cap and a timeout, and judging how
they ended (issue 13): a one-line refusal with a documented exit code, or an answer. Exit 70
(internal error), a traceback, a hang, a crash or a memory blow-up (the cap turns one into a
MemoryError, hence exit 70, or kills the process) fail the case.

Most cases run in one warm worker process (tests/fuzz/worker.py) that calls the CLI's `main`;
a few run `python -m verifier.cli` as a fresh process each, the way a user starts it."""

from __future__ import annotations

import json
import os
import re
import resource
import select
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MEMORY_CAP_BYTES = 3 * 2**30  # address space: torch + onnxruntime take about 0.75 GiB of it at rest (2 GiB passes too)
CASE_TIMEOUT_S = 30.0  # generous for a loaded 2-core machine; the cases take well under a second
READY_TIMEOUT_S = 300.0
REFUSAL_CODES = (2, 3, 4, 5)  # usage, model file, unsupported operator, input (see `popqorn --help`)
ANSWER_CODES = (0, 1)
REFUSAL_LINE = re.compile(r"popqorn(?: [a-z]+)?: error: \S")


def _cap_memory() -> None:  # runs in the child between fork and exec
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP_BYTES, MEMORY_CAP_BYTES))


def _environment() -> dict[str, str]:
    """The commands' environment: CPU only (a CUDA context reserves far more address space than the
    cap), one OpenMP thread and few malloc arenas (each thread's arena reserves 64 MiB of address
    space: on a many-core machine `--threads 0` alone would reach the cap)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", MALLOC_ARENA_MAX="2")
    return env


@dataclass
class Outcome:
    argv: list[str]
    code: int | str | None  # None: killed at the timeout; a string: the worker crashed or main() raised
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        """'refusal', 'answer', or what went wrong: 'hang', 'crash', 'internal error', 'traceback',
        'bad refusal' (a documented code without one clean line), 'unexpected exit N'."""
        if self.code is None:
            return "hang"
        if isinstance(self.code, str):
            return "crash"
        if self.code == 70 or "internal error" in self.stderr:
            return "internal error"
        if "Traceback" in self.stderr or "MemoryError" in self.stderr:
            return "traceback"
        if self.code in REFUSAL_CODES:
            lines = self.stderr.strip().splitlines()
            return "refusal" if len(lines) == 1 and REFUSAL_LINE.match(lines[0]) else "bad refusal"
        if self.code in ANSWER_CODES:
            return "answer"
        return f"unexpected exit {self.code}"

    @property
    def message(self) -> str:
        return self.stderr.strip()

    def describe(self) -> str:
        return (f"popqorn {' '.join(self.argv)}\n-> {self.kind} (exit {self.code}, {self.seconds:.2f}s)\n"
                f"stderr: {self.stderr[-3000:]}\nstdout: {self.stdout[-1500:]}")


def ends_well(outcome: Outcome, *allowed: str) -> Outcome:
    """Assert the case ended in one of `allowed` ('refusal', 'answer'; both when none given)."""
    allowed = allowed or ("refusal", "answer")
    assert outcome.kind in allowed, outcome.describe()
    return outcome


def refused(outcome: Outcome, *fragments: str, code: int | None = None) -> Outcome:
    """A one-line refusal mentioning every fragment (and with this exit code, when given)."""
    ends_well(outcome, "refusal")
    assert all(f in outcome.message for f in fragments), outcome.describe()
    assert code is None or outcome.code == code, outcome.describe()
    return outcome


class Worker:
    """One warm `python -m tests.fuzz.worker` under the memory cap; replaced after a hang or crash."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.started = 0

    def _start(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "tests.fuzz.worker"], cwd=REPO, env=_environment(),
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                        preexec_fn=_cap_memory)
        self.started += 1
        reply = self._reply(READY_TIMEOUT_S)
        if not (isinstance(reply, dict) and reply.get("ready")):
            self.close()
            raise RuntimeError(f"the fuzz worker did not start: {reply!r}")

    def _reply(self, timeout: float) -> dict | str:
        """The next protocol line, 'timeout' or 'died'."""
        stream = self.process.stdout
        ready, _, _ = select.select([stream], [], [], timeout)
        if not ready:
            return "timeout"
        line = stream.readline()
        return json.loads(line) if line else "died"

    def run(self, argv: list, timeout: float = CASE_TIMEOUT_S, cwd: str | Path | None = None,
            env: dict[str, str] | None = None) -> Outcome:
        argv = [str(a) for a in argv]
        if self.process is None or self.process.poll() is not None:
            self._start()
        request = {"argv": argv, "cwd": None if cwd is None else str(cwd), "env": env or {}}
        started = time.perf_counter()
        try:
            self.process.stdin.write((json.dumps(request) + "\n").encode())
            self.process.stdin.flush()
            reply = self._reply(timeout)
        except (BrokenPipeError, OSError):
            reply = "died"
        if isinstance(reply, dict):
            return Outcome(argv, reply["code"], reply["stdout"], reply["stderr"], reply["seconds"])
        seconds = time.perf_counter() - started
        status = self.process.poll()
        self.close()
        if reply == "timeout":
            return Outcome(argv, None, seconds=seconds, notes=[f"no answer in {timeout:g}s: worker killed"])
        return Outcome(argv, f"worker died (status {status})", seconds=seconds)

    def close(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            stream.close()
        self.process = None


def run_fresh(argv: list, timeout: float = CASE_TIMEOUT_S, cwd: str | Path | None = None,
              env: dict[str, str] | None = None) -> Outcome:
    """One command as its own process (`python -m verifier.cli ...`) under the memory cap."""
    argv = [str(a) for a in argv]
    started = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "verifier.cli", *argv], cwd=cwd or REPO,
                              env={**_environment(), **(env or {})}, capture_output=True, text=True,
                              timeout=timeout, preexec_fn=_cap_memory)
    except subprocess.TimeoutExpired:
        return Outcome(argv, None, seconds=time.perf_counter() - started)
    code = done.returncode if done.returncode >= 0 else f"killed by signal {-done.returncode}"
    return Outcome(argv, code, done.stdout, done.stderr, time.perf_counter() - started)
