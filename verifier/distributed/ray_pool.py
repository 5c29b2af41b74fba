"""Audit batches on Ray: one actor per worker holds the parsed graph (sent once through the object
store, so the model is parsed once, by the driver, and no worker needs the model file), batches go to
whichever actor is free, rows come back as they finish.

Faults: a worker that dies (process killed, out of memory, node lost) loses only the batch it was
running; that batch is queued again and a fresh actor takes the dead one's place. A batch that
kills workers twice is split into single samples, and a single sample that does is recorded as an
error, so one poisonous sample cannot stall the audit. Workers that die again and again without any
batch finishing (e.g. popqorn missing on a cluster node) end the audit with that cause."""

from __future__ import annotations

import logging
import math
import os
from collections import deque
from collections.abc import Callable

import ray

from verifier.distributed.worker import AuditJob, BatchCertifier, Shard
from verifier.errors import InputError

# Fault injection for the tests: path of a marker file. The first batch to create it (exactly one
# in the whole audit) kills its worker process, as a crash or an OOM kill would.
CRASH_ONCE_ENV = "POPQORN_AUDIT_CRASH_ONCE"
LOSSES_PER_BATCH = 2


class _Worker:
    """The actor: holds the parsed graph and certifies the batches sent to it."""

    def __init__(self, graph, job: AuditJob, threads: int, crash_marker: str | None) -> None:
        import torch
        torch.set_num_threads(threads)
        self.certifier = BatchCertifier(graph, job)
        self.crash_marker = crash_marker

    def certify(self, indices, x, labels) -> list[dict]:
        if self.crash_marker and _claim(self.crash_marker):
            os._exit(1)
        return self.certifier.certify(indices, x, labels)


def _claim(path: str) -> bool:
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


class GraphNotPortable(Exception):
    """The parsed graph does not survive pickling, so it cannot be sent to workers."""


def check_portable(graph) -> None:
    """Round-trip the graph through Ray's serializer here, before any worker depends on it."""
    try:
        ray.cloudpickle.loads(ray.cloudpickle.dumps(graph))
    except Exception as exc:  # noqa: BLE001 -- any failure means the same thing: not portable
        raise GraphNotPortable(f"{type(exc).__name__}: {exc}") from None


def connect(address: str | None, workers: int, threads: int) -> bool:
    """Join the Ray session: the one already running in this process, the cluster at `address`,
    or a new embedded local one (quietly, no dashboard). True when this call started it."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None  # Ray's own way of naming a cluster
    quiet = {"logging_level": logging.ERROR, "log_to_driver": False}
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        if address is None:
            ray.init(num_cpus=max(os.cpu_count() or 1, math.ceil(workers * threads)), include_dashboard=False, **quiet)
        else:
            ray.init(address=address, **quiet)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = "start a local Ray session" if address is None else f"join the Ray cluster at --address {address}"
        raise InputError(f"cannot {where}: {type(exc).__name__}: {str(exc).strip().splitlines()[0]}") from None
    return True


def check_resources(workers: int, threads: int, gpus_per_worker: float) -> None:
    """Refuse up front what the cluster can never place (Ray would otherwise wait forever)."""
    total = ray.cluster_resources()
    for name, per_worker, flag in (("CPU", threads, "--threads"), ("GPU", gpus_per_worker, "--gpus-per-worker")):
        need, have = workers * per_worker, total.get(name, 0)
        if need > have:
            raise InputError(f"--workers {workers} x {flag} {per_worker:g} needs {need:g} {name}s; "
                             f"the Ray cluster has {have:g}")


def run_on_ray(graph, job: AuditJob, shards: list[Shard], take: Callable, record: Callable[[list[dict]], None], *,
               workers: int, threads: int, gpus_per_worker: float, address: str | None) -> None:
    """Certify every shard on `workers` actors; `record(rows)` gets each batch's rows as it finishes."""
    started_here = connect(address, workers, threads)
    actors: list = []
    try:
        check_resources(workers, threads, gpus_per_worker)
        actor_class = ray.remote(_Worker).options(num_cpus=threads, num_gpus=gpus_per_worker,
                                                 max_restarts=0, max_task_retries=0)
        graph_ref = ray.put(graph)
        crash_marker = os.environ.get(CRASH_ONCE_ENV)

        def spawn():
            return actor_class.remote(graph_ref, job, threads, crash_marker)

        queue = deque(shards)
        actors = [spawn() for _ in range(min(workers, len(shards)))]
        running: dict = {}

        def submit_to_idle() -> None:
            busy = {slot for slot, _ in running.values()}
            for slot in range(len(actors)):
                if queue and slot not in busy:
                    shard = queue.popleft()
                    running[actors[slot].certify.remote(shard.indices, *take(shard))] = (slot, shard)

        submit_to_idle()
        losses_in_a_row = 0
        while running:
            (ref,), _ = ray.wait(list(running), num_returns=1)
            slot, shard = running.pop(ref)
            try:
                rows = ray.get(ref)
            except ray.exceptions.RayError as exc:  # the worker died: replace it, requeue its batch
                if getattr(exc, "actor_init_failed", False):  # it cannot even start: no use retrying
                    raise InputError(f"a Ray worker could not start: {_last_line(exc)}") from None
                losses_in_a_row += 1
                if losses_in_a_row > 2 * workers + LOSSES_PER_BATCH:
                    raise InputError(f"Ray workers died {losses_in_a_row} times in a row; last: {_first_line(exc)} "
                                     f"(is popqorn installed, same version, on every node?)") from None
                ray.kill(actors[slot])
                actors[slot] = spawn()
                rows = _requeue(queue, shard, exc)
            else:
                losses_in_a_row = 0
                if rows is None:  # the batch failed: its samples go again one by one
                    queue.extendleft(reversed(shard.singles()))
            if rows:
                record(rows)
            submit_to_idle()  # requeued samples may go to any idle worker
    finally:
        for actor in actors:
            ray.kill(actor)
        if started_here:
            ray.shutdown()


def _requeue(queue: deque, shard: Shard, exc: Exception) -> list[dict]:
    """Put a lost batch back (split into samples after its second loss); a single sample lost
    twice becomes an error row instead."""
    shard.losses += 1
    if shard.losses < LOSSES_PER_BATCH:
        queue.appendleft(shard)
        return []
    if len(shard.indices) > 1:
        queue.extendleft(reversed(shard.singles()))
        return []
    return [{"index": shard.indices[0],
             "error": f"worker lost {shard.losses} times on this sample ({_first_line(exc)})"}]


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def _last_line(exc: Exception) -> str:
    """The original error at the end of a remote traceback (e.g. 'InputError: ...')."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    last = lines[-1] if lines else type(exc).__name__
    return last.split("verifier.errors.", 1)[-1]
