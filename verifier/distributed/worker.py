"""What one audit worker does with one batch: `verifier.certify.certify` on the samples, each
result tagged with its global sample index. No Ray here: Ray actors wrap this class, and the
in-process path (Ray absent) uses it directly, so both give the same answers."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from verifier.errors import PopqornError


@dataclass(frozen=True)
class AuditJob:
    """Everything the batches of one audit share (the threat model, the method, the engine);
    sent once to each worker with the parsed graph."""

    norm: float
    ball: str
    frames: tuple[int, ...] | None
    per_frame: bool
    target: int | None
    method: str
    tol: float
    output: int | str
    input_name: str | None
    device: str
    dtype: str
    domain: object = None  # verifier.threat.Domain or None: the valid input range
    optimize: object = None  # verifier.optimize.OptimizeOptions for method alpha (None: defaults)


@dataclass
class Shard:
    """A batch of the audit: global sample indices, their positions in the loaded samples, and
    how often a worker died while running it."""

    indices: list[int]
    positions: list[int]
    losses: int = 0

    def singles(self) -> list[Shard]:
        return [Shard([index], [position]) for index, position in zip(self.indices, self.positions)]


def describe_error(exc: BaseException) -> str:
    """One line for the journal: a refusal as the CLI would print it, anything else as a bug."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, PopqornError):
        return f"{type(exc).__name__}: {text}"
    return f"internal error: {type(exc).__name__}: {text}"


class BatchCertifier:
    """Certifies batches of one audit with one parsed graph (loaded once per worker)."""

    def __init__(self, graph, job: AuditJob) -> None:
        import torch

        from verifier.bounds import resolve_device
        from verifier.certify import SearchOptions

        self.graph, self.job = graph, job
        self.device = resolve_device(job.device)
        self.dtype = getattr(torch, job.dtype)
        self.search = SearchOptions(method=job.method, tol=job.tol, **({"optimize": job.optimize} if job.optimize else {}))

    def certify(self, indices: list[int], x, labels: np.ndarray | None) -> list[dict] | None:
        """One JSON row per sample, or None when a batch of several fails: the caller then sends
        each of its samples alone, so the error is recorded against the sample that caused it and
        the others still get their radius."""
        from verifier.certify import certify
        from verifier.commands.certify import _skip_target_labels

        job = self.job
        try:
            results = certify(self.graph, x, job.norm, labels=labels, target=job.target, ball=job.ball,
                              frames=job.frames, domain=job.domain, per_frame=job.per_frame, options=self.search, output=job.output,
                              input_name=job.input_name, device=self.device, dtype=self.dtype)
        except Exception as exc:  # noqa: BLE001 -- recorded, never fatal: the audit goes on
            if len(indices) > 1:
                return None
            return [{"index": indices[0], "error": describe_error(exc)}]
        _skip_target_labels(results, job.target)  # as certify reports them
        rows = []
        for index, result in zip(indices, results):
            result.index = index
            rows.append(result.to_json())
        return rows


def run_in_process(graph, job: AuditJob, shards: list[Shard], take, record, threads: int) -> None:
    """The audit without Ray: the same batches, in order, in this process (`threads` torch threads,
    restored afterwards)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        certifier = BatchCertifier(graph, job)
        queue = deque(shards)
        while queue:
            shard = queue.popleft()
            rows = certifier.certify(shard.indices, *take(shard))
            if rows is None:
                queue.extendleft(reversed(shard.singles()))
            else:
                record(rows)
    finally:
        torch.set_num_threads(previous)
