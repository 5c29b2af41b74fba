"""Wall-clock deadlines for `popqorn vnnlib`.

Why: VNN-COMP (and any script with a time budget) counts everything from the moment the process
starts: interpreter start-up, parsing, model loading and every solver phase. So one absolute
deadline is shared by all phases and each checks it between steps of bounded cost; the process
that holds the deadline also kills the worker that does the work if a step overruns it
(verifier.vnnlib.instances).
"""

from __future__ import annotations

import os
import sys
import time


class Timeout(Exception):
    """Raised by Deadline.check once time is up; the command turns it into the answer `timeout`."""


class Deadline:
    """An absolute time.time() deadline (None = no limit)."""

    def __init__(self, at: float | None) -> None:
        self.at = at

    @classmethod
    def after(cls, seconds: float | None, start: float | None = None) -> Deadline:
        if seconds is None:
            return cls(None)
        return cls((time.time() if start is None else start) + seconds)

    def remaining(self) -> float:
        return float("inf") if self.at is None else self.at - time.time()

    def expired(self) -> bool:
        return self.remaining() <= 0

    def check(self) -> None:
        if self.expired():
            raise Timeout()


def process_start_time() -> float:
    """time.time() at which this process started (from /proc on Linux; elsewhere: now)."""
    try:
        with open("/proc/self/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as handle:
            uptime = float(handle.read().split()[0])
        started_ticks = int(fields[19])  # field 22 of stat; fields[0] is field 3 (after the command name)
        return time.time() - (uptime - started_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.time()


def owns_process(command: str = "vnnlib") -> bool:
    """Whether this process was launched to run this command (`popqorn vnnlib ...` from a shell
    or a script) rather than hosting it as a library (tests, notebooks)."""
    return command in sys.argv[1:3]


def command_start_time(command: str = "vnnlib") -> float:
    """When this command's clock starts: the process start when the process was launched for it,
    else now (library use, where the process has been running for other reasons)."""
    if owns_process(command):
        return min(process_start_time(), time.time())
    return time.time()
