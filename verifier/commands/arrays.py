"""Reading sample and label files (.npy, .npz) from untrusted sources.

Why not `np.load`: it decompresses a whole .npz member before anyone can look at its size (a 3 MB
file can inflate to gigabytes), and its errors are tracebacks. Here every member's header is read
first; dtype, shape and size are checked against a byte budget and against the bytes actually
present before anything is allocated. Pickles are never loaded (object arrays are refused)."""

from __future__ import annotations

import os
import zipfile
from typing import BinaryIO

import numpy as np

from verifier.errors import InputError

BUDGET_VARIABLE = "POPQORN_MAX_INPUT_MB"
DEFAULT_BUDGET_MB = 1024


def input_budget() -> int:
    """Bytes that one command may read from sample/label files (all arrays together)."""
    text = os.environ.get(BUDGET_VARIABLE, "")
    try:
        megabytes = float(text) if text.strip() else DEFAULT_BUDGET_MB
    except ValueError:
        raise InputError(f"{BUDGET_VARIABLE}={text!r} is not a number of megabytes") from None
    if not np.isfinite(megabytes) or megabytes <= 0:
        raise InputError(f"{BUDGET_VARIABLE}={text!r} must be a positive number of megabytes")
    return int(megabytes * 2**20)


class _Budget:
    def __init__(self, path: str, limit: int) -> None:
        self.path, self.limit, self.used = path, limit, 0

    def take(self, nbytes: int, member: str) -> None:
        self.used += nbytes
        if self.used > self.limit:
            raise InputError(f"{self.path}: array {member!r} needs {_size(nbytes)} "
                             f"({_size(self.used)} in all), over the input budget of {_size(self.limit)}; "
                             f"set {BUDGET_VARIABLE} to raise it")


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


def read_arrays(path: str, what: str, keys: list[str] | None = None) -> np.ndarray | dict[str, np.ndarray]:
    """A .npy file as an array, or the members of a .npz as {name: array} (only `keys` when given,
    read in that order; absent keys are left out). Everything wrong is a one-line InputError."""
    if not str(path).lower().endswith((".npy", ".npz")):
        raise InputError(f"{what} file {path}: expected a .npy or .npz file (numpy.save / numpy.savez)")
    if not os.path.exists(path):
        raise InputError(f"{what} file not found: {path}")
    if not os.path.isfile(path):
        raise InputError(f"{what} file {path} is not a regular file")
    budget = _Budget(path, input_budget())
    try:
        if zipfile.is_zipfile(path):
            return _read_npz(path, keys, budget, what)
        with open(path, "rb") as handle:
            return _read_npy(handle, os.path.getsize(path), path, None, budget, what)
    except OSError as exc:
        raise InputError(f"cannot read {what} file {path}: {exc.strerror or exc}") from None


def list_members(path: str) -> list[str]:
    """Array names of a .npz (empty for a .npy), without reading any array."""
    if not zipfile.is_zipfile(path):
        return []
    try:
        with zipfile.ZipFile(path) as archive:
            return [info.filename[:-4] for info in archive.infolist() if info.filename.endswith(".npy")]
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InputError(f"cannot read {path}: not a readable .npz archive ({exc})") from None


def _read_npz(path: str, keys: list[str] | None, budget: _Budget, what: str) -> dict[str, np.ndarray]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InputError(f"cannot read {what} file {path}: not a readable .npz archive ({exc})") from None
    with archive:
        members = {info.filename[:-4]: info for info in archive.infolist() if info.filename.endswith(".npy")}
        wanted = list(members) if keys is None else [key for key in keys if key in members]
        arrays = {}
        for key in wanted:
            info = members[key]
            # the declared size bounds what zipfile will inflate (it stops there and checks the CRC)
            if info.file_size > budget.limit - budget.used:
                budget.take(info.file_size, key)
            try:
                with archive.open(info) as member:
                    arrays[key] = _read_npy(member, info.file_size, path, key, budget, what)
            except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError) as exc:
                if isinstance(exc, InputError):
                    raise
                raise InputError(f"cannot read {what} file {path}: array {key!r} is damaged "
                                 f"({type(exc).__name__}: {exc})") from None
        return arrays


def _read_npy(stream: BinaryIO, available: int, path: str, member: str | None, budget: _Budget,
              what: str) -> np.ndarray:
    """One .npy stream (an .npz `member`, or the whole file when None): header checked (numeric
    dtype, no pickle, size within budget and within the `available` bytes) before the data is
    allocated and read."""
    it = "the file" if member is None else f"array {member!r}"
    start = stream.tell() if stream.seekable() else 0
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except (ValueError, SyntaxError, EOFError, TypeError) as exc:
        raise InputError(f"cannot read {what} file {path}: {it} is not a valid .npy array ({exc})") from None
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise InputError(f"cannot read {what} file {path}: {it} has dtype {dtype}; popqorn reads "
                         "plain numeric arrays (never pickled objects)")
    if any(int(dim) < 0 for dim in shape):
        raise InputError(f"cannot read {what} file {path}: {it} declares a negative dimension "
                         f"{tuple(shape)}")
    count = 1
    for dim in shape:
        count *= int(dim)
    nbytes = count * dtype.itemsize
    header = (stream.tell() if stream.seekable() else 0) - start
    if nbytes > budget.limit - budget.used:
        budget.take(nbytes, member or "array")
    if stream.seekable() and nbytes > available - header:
        raise InputError(f"cannot read {what} file {path}: {it} is truncated: its header announces "
                         f"shape {tuple(shape)} "
                         f"({nbytes} bytes) but only {max(available - header, 0)} bytes follow")
    budget.take(nbytes, member or "array")
    array = np.empty(count, dtype=dtype)
    view = memoryview(array.view(np.uint8).reshape(-1))
    filled = 0
    while filled < nbytes:
        got = stream.readinto(view[filled:])
        if not got:
            raise InputError(f"cannot read {what} file {path}: {it} is truncated: {filled} of {nbytes} "
                             "data bytes present")
        filled += got
    return array.reshape(shape, order="F" if fortran else "C")
