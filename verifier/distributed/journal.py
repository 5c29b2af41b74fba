"""The audit journal: a header line naming the audit, then one JSON line per finished sample.

Why a journal rather than one report at the end: a dataset audit runs for hours on machines that
fail. Each batch of lines goes out in one write followed by fsync, so a kill or Ctrl-C leaves only
complete lines; a torn last line (power cut, full disk) is cut off on the next open and its samples
are redone. Rerunning the same command skips the samples already there. The header's `config` must
equal the rerun's, so results of different models, samples, threat models or methods never mix."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from verifier.errors import InputError

FORMAT = "popqorn-audit/1"


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_arrays(*arrays: np.ndarray | None) -> str:
    """Content hash of the samples (dtype, shape and values), independent of how the file was
    written: re-saving the same arrays gives the same hash, changing one value does not."""
    digest = hashlib.sha256()
    for array in arrays:
        if array is None:
            digest.update(b"none;")
            continue
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


@dataclass
class Journal:
    """An open journal: `rows` maps sample index -> its latest line (a result or an error)."""

    path: str
    config: dict
    rows: dict[int, dict] = field(default_factory=dict)
    dropped_torn_line: bool = False
    _fd: int | None = None

    @classmethod
    def open(cls, path: str, config: dict, extra_header: dict | None = None) -> Journal:
        """Open `path` for appending, locked against a second audit writing it at the same time:
        read what is there (refusing another audit's file) or start it with a header line."""
        if os.path.isdir(path):
            raise InputError(f"--out {path} is a folder; give a file name such as audit.jsonl")
        if os.path.exists(path) and not os.path.isfile(path):  # /dev/full reads zeros forever
            raise InputError(f"--out {path} is not a regular file (a device, pipe or socket); give a file name "
                             f"such as audit.jsonl")
        journal = cls(path, json.loads(json.dumps(config)))  # as it reads back: tuples become lists
        try:
            journal._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise InputError(f"cannot write the audit journal {path}: {exc.strerror}") from None
        try:
            _lock(journal._fd, path)
            journal._read()
            if os.path.getsize(path) == 0:
                journal._write([{"popqorn_audit": FORMAT, "config": journal.config,
                                 "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                 **(extra_header or {})}])
        except BaseException:
            journal.close()
            raise
        return journal

    def append(self, rows: list[dict]) -> None:
        """Add finished samples durably (one write, then fsync)."""
        self._write(rows)
        for row in rows:
            self.rows[row["index"]] = row

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _write(self, entries: list[dict]) -> None:
        data = memoryview("".join(json.dumps(entry) + "\n" for entry in entries).encode())
        try:
            while data:
                data = data[os.write(self._fd, data):]
            os.fsync(self._fd)
        except OSError as exc:  # a full disk, a device that refuses writes: the user's to fix
            raise InputError(f"cannot write the audit journal {self.path}: {exc.strerror or exc}") from None

    def _read(self) -> None:
        with open(self.path, "rb") as handle:
            content = handle.read()
        complete, _, torn = content.rpartition(b"\n")
        if torn:  # an interrupted write: keep the complete lines only
            with open(self.path, "r+b") as handle:
                handle.truncate(len(complete) + 1 if complete else 0)
            self.dropped_torn_line = True
        lines = complete.decode("utf-8", errors="replace").split("\n") if complete else []
        for number, line in enumerate(lines, 1):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                entry = None
            if number == 1:
                self._check_header(entry)
            elif not isinstance(entry, dict) or not isinstance(entry.get("index"), int) \
                    or not ("radius" in entry or "error" in entry):
                raise InputError(f"{self.path}:{number}: not a line written by popqorn audit; "
                                 f"give another --out or repair the file")
            else:
                self.rows[entry["index"]] = entry

    def _check_header(self, entry) -> None:
        if not isinstance(entry, dict) or entry.get("popqorn_audit") != FORMAT:
            raise InputError(f"{self.path} is not an audit journal written by popqorn audit ({FORMAT}); "
                             f"give another --out")
        theirs = entry.get("config", {})
        if theirs != self.config:
            changed = sorted(key for key in set(theirs) | set(self.config) if theirs.get(key) != self.config.get(key))
            details = "; ".join(f"{key}: {theirs.get(key)!r} there, {self.config.get(key)!r} now" for key in changed)
            raise InputError(f"{self.path} belongs to another audit ({details}); give another --out to start a new one")


def _lock(fd: int, path: str) -> None:
    """An exclusive advisory lock for as long as the journal is open (POSIX; elsewhere none)."""
    try:
        import fcntl
    except ImportError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise InputError(f"{path} is being written by another popqorn audit; wait for it or give another --out") from None
