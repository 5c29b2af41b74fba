"""Instances run in a worker process that is killed at the deadline, and VNN-COMP instance lists.

Why a worker: the only hard guarantee on wall time is a process that can be killed. Importing
torch alone can hold the interpreter for seconds on a busy machine (shared libraries load with the
interpreter lock held), and interpreter teardown with torch loaded takes about as long, so the
`popqorn vnnlib` process itself stays light (no torch): it starts one worker, hands it the
instance with an absolute deadline, and answers `timeout` itself (killing the worker) when no
answer came by the deadline plus a grace. The worker stops cooperatively before the deadline, so
the kill is a backstop. `--instances` reuses one warm worker for every row of a list and starts a
fresh one only after a kill or a crash.

Protocol: one JSON object per line. Worker -> parent: {"ready": true} once, then one reply per
request. Parent -> worker: {"model", "property", "deadline" (time.time(), or null), options...}.
"""

from __future__ import annotations

import csv
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

from verifier import errors
from verifier.errors import InputError, PopqornError
from verifier.vnnlib.instance import result_text, write_result

GRACE_S = 0.5  # after the deadline the parent waits this long for the worker's answer, then kills it
READY_LIMIT_S = 300.0  # a worker that cannot even start in this time is broken


class Worker:
    """One worker process (python -m verifier.vnnlib.instances) and its reply queue."""

    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "verifier.vnnlib.instances"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, bufsize=1)
        self.replies: queue.Queue = queue.Queue()
        self.ready = False
        threading.Thread(target=self._read, daemon=True, name="vnnlib-worker-reader").start()

    def _read(self) -> None:
        for line in self.process.stdout:
            try:
                self.replies.put(json.loads(line))
            except json.JSONDecodeError:
                continue
        self.replies.put(None)  # the worker's output ended: it exited or died

    def _next(self, until: float | None) -> dict | None | str:
        """The next reply, None when the worker died, "late" when `until` passed first."""
        try:
            return self.replies.get(timeout=None if until is None else max(0.0, until - time.time()))
        except queue.Empty:
            return "late"

    def wait_ready(self, until: float | None) -> str:
        """"ready", "late" or "died"."""
        if self.ready:
            return "ready"
        reply = self._next(until)
        if reply == "late":
            return "late"
        if reply is None or not reply.get("ready"):
            return "died"
        self.ready = True
        return "ready"

    def ask(self, request: dict, until: float | None) -> dict | str:
        """The reply to `request`, or "late" (nothing by `until`) or "died"."""
        state = self.wait_ready(until)
        if state != "ready":
            return state
        try:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            return "died"
        reply = self._next(until)
        return "died" if reply is None else reply

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except OSError:
                pass

    def close(self) -> None:
        """Done with the worker: it holds no state worth a graceful exit (answers travel through
        the protocol), and interpreter teardown with torch loaded can take seconds."""
        self.kill()


def request_for(model: str, prop: str, deadline: float | None, options: dict) -> dict:
    return {"model": os.path.abspath(model), "property": os.path.abspath(prop), "deadline": deadline, **options}


def run_instance(worker: Worker | None, request: dict) -> tuple[dict, Worker | None]:
    """One instance in `worker` (a new one when None). Returns the reply (result "timeout" when
    the worker was killed at the deadline, "error" when it died) and the worker to reuse (None
    after a kill)."""
    worker = worker or Worker()
    until = None if request["deadline"] is None else request["deadline"] + GRACE_S
    reply = worker.ask(request, until)
    if reply == "late":
        worker.kill()
        return {"result": "timeout", "reason": "stopped at the deadline (worker killed)"}, None
    if reply == "died":
        try:
            code = worker.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            code = "none: it stopped answering"
        worker.kill()
        return {"result": "error", "error": f"the worker process ended unexpectedly (exit status {code})",
                "exit_code": 70}, None
    return reply, worker


def raise_reply_error(reply: dict) -> None:
    """Re-raise a worker's error as the same PopqornError class (same exit code and message)."""
    if reply.get("result") != "error":
        return
    cls = getattr(errors, reply.get("error_class") or "", None)
    if isinstance(cls, type) and issubclass(cls, PopqornError):
        error = cls.__new__(cls)  # the worker's message as is: not rebuilt from the constructor's fields
        Exception.__init__(error, reply["error"])
        raise error
    raise RuntimeError(reply.get("error", "worker error"))


# ---- the instance list --------------------------------------------------------------------------
def read_instances(path: Path, default_timeout: float | None) -> list[tuple[Path, Path, float]]:
    """Rows `onnx,vnnlib,timeout` (VNN-COMP instances.csv; paths relative to the CSV's folder)."""
    if not path.is_file():
        raise InputError(f"instance list not found: {path}")
    rows = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:  # -sig: a Windows byte order mark is no path
            lines = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read instance list {path}: {type(exc).__name__}: {exc}") from None
    for number, row in enumerate(lines, 1):
        cells = [cell.strip() for cell in row]
        if not any(cells) or cells[0].startswith("#"):
            continue
        if len(cells) < 2 or len(cells) > 3 or (len(cells) == 2 and default_timeout is None):
            raise InputError(f"{path}:{number}: expected onnx,vnnlib,timeout")
        try:
            timeout = float(cells[2]) if len(cells) == 3 and cells[2] else default_timeout
        except ValueError:
            raise InputError(f"{path}:{number}: timeout {cells[2]!r} is not a number") from None
        if timeout is None or not 0 < timeout < 1e7:
            raise InputError(f"{path}:{number}: timeout must be a positive number of seconds")
        rows.append((path.parent / cells[0], path.parent / cells[1], timeout))
    if not rows:
        raise InputError(f"{path}: no instances")
    return rows


def run_instances(args, default_timeout: float | None) -> int:
    """`popqorn vnnlib --instances CSV`: one result file per row, a summary CSV, a progress bar."""
    from tqdm import tqdm

    from verifier.commands.options import check_output_path

    csv_path = Path(args.instances)
    rows = read_instances(csv_path, default_timeout)
    results_dir = Path(args.results_dir) if args.results_dir else csv_path.parent / "results"
    if results_dir.exists() and not results_dir.is_dir():
        raise InputError(f"--results-dir {results_dir}: not a folder")
    summary_path = Path(args.summary) if args.summary else results_dir / "summary.csv"
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--results-dir {results_dir}: {exc.strerror or exc}") from None
    check_output_path(str(results_dir / "result.txt"), "--results-dir")
    check_output_path(str(summary_path), "--summary", (".csv",))
    options = worker_options(args)
    counts: dict[str, int] = {}
    records = []
    worker = None
    try:
        with tqdm(total=len(rows), file=sys.stderr, unit="instance", dynamic_ncols=True) as bar:
            for index, (model, prop, timeout) in enumerate(rows):
                bar.set_description(f"{model.name} {prop.name}"[-40:])
                name = f"{index:04d}_{model.stem}_{prop.name.split('.')[0]}.txt"
                worker = worker or Worker()
                state = worker.wait_ready(time.time() + READY_LIMIT_S)
                if state != "ready":
                    worker.kill()
                    raise PopqornError(f"the worker process could not start ({state})")
                begin = time.time()
                reply, worker = run_instance(worker, request_for(str(model), str(prop), begin + timeout, options))
                elapsed = time.time() - begin
                write_result(str(results_dir / name), result_text(reply))
                counts[reply["result"]] = counts.get(reply["result"], 0) + 1
                records.append({"onnx": str(model), "vnnlib": str(prop), "timeout": timeout,
                                "result": reply["result"], "time_s": f"{elapsed:.3f}", "result_file": str(results_dir / name),
                                "detail": reply.get("error") or reply.get("reason") or ""})
                _write_summary(summary_path, records)
                bar.set_postfix(counts, refresh=False)
                bar.update(1)
    finally:
        if worker is not None:
            worker.close()
    line = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    print(f"{len(rows)} instances: {line}; results in {results_dir}, summary {summary_path}")
    return 0


def _write_summary(path: Path, records: list[dict]) -> None:
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    os.replace(partial, path)


def worker_options(args) -> dict:
    from verifier.commands.options import parse_input_shapes

    return {"input_shapes": {k: list(v) for k, v in parse_input_shapes(args.input_shape).items()},
            "method": args.method, "max_boxes": args.max_boxes, "max_cases": args.max_cases, "seed": args.seed,
            "threads": args.threads}


# ---- the worker -----------------------------------------------------------------------------------
def worker_main() -> None:
    """Answer requests from stdin until it closes; stdout carries only protocol lines."""
    protocol = sys.stdout
    sys.stdout = sys.stderr  # anything else printed goes to stderr
    _die_with_parent()

    def send(message: dict) -> None:
        protocol.write(json.dumps(message) + "\n")
        protocol.flush()

    import torch  # noqa: F401  (warm: the first request should not pay for the import)

    import parsers  # noqa: F401
    from verifier.vnnlib import solve  # noqa: F401
    from verifier.vnnlib.deadline import Deadline
    from verifier.vnnlib.instance import decide, reply_of

    send({"ready": True})
    for line in sys.stdin:
        request = json.loads(line)
        try:
            shapes = {k: tuple(v) for k, v in request.get("input_shapes", {}).items()}
            answer, prop = decide(request["model"], request["property"], Deadline(request["deadline"]),
                                  input_shapes=shapes, method=request["method"], max_boxes=request["max_boxes"],
                                  max_cases=request["max_cases"], seed=request["seed"], threads=request["threads"])
            reply = reply_of(answer, prop)
        except PopqornError as exc:
            reply = {"result": "error", "error": str(exc), "error_class": type(exc).__name__, "exit_code": exc.exit_code}
        except Exception as exc:  # noqa: BLE001 - reported to the parent as an internal error
            reply = {"result": "error", "error": f"internal error: {type(exc).__name__}: {exc}", "exit_code": 70}
        send(reply)


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when its parent dies (e.g. a harness killed
    `popqorn vnnlib`), so no orphan keeps computing. Elsewhere the deadline ends it."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError, TypeError):
        pass


if __name__ == "__main__":
    worker_main()
