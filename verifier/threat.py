"""Threat models as typed values: what a certificate covers, built once at the edge (CLI or API
entry) and passed down unchanged.

A sequence X = (x_1 ... x_T) is perturbed around a clean X0:
  * per-frame balls (`Ball.FRAME`, POPQORN's model): every perturbed frame t has ||x_t - x0_t||_p <= eps;
  * a whole-sequence ball (`Ball.SEQUENCE`): ||X - X0||_p <= eps over the perturbed frames jointly;
  * frames outside `frames` (None = all) stay at X0;
  * an optional `Domain` (e.g. pixels in [0, 1]) intersected with the ball.
p is 1, 2 or inf. Every spelling the public API and the CLI accept ("2", 2, 2.0, "inf", math.inf;
"frame", Ball.FRAME; "0,3", [0, 3]) is normalised here, and anything else is an InputError.

Torch-free: the engine's view of a threat model (element bounds, exact minima of linear functions
over the set) lives in verifier.regions.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from verifier import ir
from verifier.errors import InputError


class Word(str, enum.Enum):
    """A closed vocabulary whose members compare and print as their plain string value."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    @classmethod
    def parse(cls, value: Any, what: str):
        if isinstance(value, cls):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            raise InputError(f"{what} must be one of {', '.join(m.value for m in cls)}, not {value!r}") from None


class Ball(Word):
    FRAME = "frame"
    SEQUENCE = "sequence"


BALLS = tuple(b.value for b in Ball)
NORMS = (1.0, 2.0, math.inf)


def parse_norm(value: str | float | int) -> float:
    """'1', '2', 'inf' (or numbers) -> 1.0, 2.0, math.inf; anything else is refused."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and float(value) in NORMS:
        return float(value)
    text = str(value).strip().lower()
    table = {"1": 1.0, "1.0": 1.0, "l1": 1.0, "2": 2.0, "2.0": 2.0, "l2": 2.0,
             "inf": math.inf, "linf": math.inf, "infinity": math.inf}
    if text not in table:
        raise InputError(f"norm must be 1, 2 or inf, not {value!r}")
    return table[text]


def dual_norm(p: float) -> float:
    return {1.0: math.inf, 2.0: 2.0, math.inf: 1.0}[p]


def norm_label(p: float) -> str:
    return "inf" if math.isinf(p) else str(int(p))


def parse_frames(value: str | Sequence[int] | None) -> tuple[int, ...] | None:
    """'0,3' / [0, 3] -> (0, 3); None, 'all' or '' -> None (every frame)."""
    if value is None:
        return None
    if isinstance(value, str):
        if value.strip().lower() in ("", "all"):
            return None
        try:
            values = [int(part) for part in value.split(",") if part.strip()]
        except ValueError:
            raise InputError(f"frames must be comma-separated integers, not {value!r}") from None
    else:
        try:
            values = [int(v) for v in value]
        except (TypeError, ValueError):
            raise InputError(f"frames must be integers, not {value!r}") from None
        if any(isinstance(v, (bool, np.bool_)) for v in value):
            raise InputError(f"frames must be integers, not {value!r}")
        if any(float(v) != int(v) for v in value):
            raise InputError(f"frames must be integers, not {value!r}")
    if not values:
        raise InputError("frames must name at least one frame")
    if len(set(values)) != len(values):
        raise InputError(f"frames {values} repeat a frame")
    return tuple(values)


@dataclass(frozen=True, eq=False)
class Domain:
    """The valid range of the perturbed input, intersected with every ball (e.g. pixels in [0, 1]).

    `low` and `high` are scalars or arrays broadcastable to one sample's shape (the input's shape
    without its batch axis); bounds may be -inf/+inf. `label` says where it came from, for reports."""

    low: float | np.ndarray
    high: float | np.ndarray
    label: str = ""

    def __post_init__(self) -> None:
        low, high = np.asarray(self.low, dtype=np.float64), np.asarray(self.high, dtype=np.float64)
        if np.isnan(low).any() or np.isnan(high).any():
            raise InputError("the domain's bounds must not be NaN")
        try:
            np.broadcast(low, high)
        except ValueError:
            raise InputError(f"domain low {low.shape} and high {high.shape} do not broadcast") from None
        if (low > high).any():
            raise InputError("the domain's low bound exceeds its high bound")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)
        if not self.label:
            scalar = low.ndim == 0 and high.ndim == 0
            object.__setattr__(self, "label", f"[{float(low):g}, {float(high):g}]" if scalar else "per-feature")

    @classmethod
    def parse(cls, value: Domain | tuple | str | None) -> Domain | None:
        """None, a Domain, (low, high) or the CLI text 'LOW,HIGH'."""
        if value is None or isinstance(value, Domain):
            return value
        if isinstance(value, str):
            parts = value.split(",")
            try:
                low, high = (float(p) for p in parts)
            except ValueError:
                raise InputError(f"domain must be LOW,HIGH (two numbers), not {value!r}") from None
            return cls(low, high)
        try:
            low, high = value
        except (TypeError, ValueError):
            raise InputError(f"domain must be (low, high), not {value!r}") from None
        return cls(low, high)

    def flat(self, node: ir.Input) -> tuple[np.ndarray, np.ndarray]:
        """low and high as flat per-sample vectors of `node` (C order, like the engine's vectors)."""
        sample = tuple(d for k, d in enumerate(node.shape) if k != node.batch_axis)
        try:
            return (np.broadcast_to(self.low, sample).reshape(-1), np.broadcast_to(self.high, sample).reshape(-1))
        except ValueError:
            raise InputError(f"domain bounds of shape {self.low.shape} / {self.high.shape} do not fit one sample "
                             f"of input {node.onnx_name!r}, shaped {sample}") from None

    def describe(self) -> str | dict:
        """For reports: the label, or low/high when both are scalars."""
        if self.low.ndim == 0 and self.high.ndim == 0:
            return {"low": float(self.low), "high": float(self.high)}
        return self.label


class Default:
    """A keyword argument the caller left out, standing for `value` (its repr, so signatures read as
    usual): lets an API function tell a norm left at its default from one spelled out."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return repr(self.value)


@dataclass(frozen=True)
class ThreatModel:
    """What is perturbed and how: the norm, the ball kind, the perturbed frames of one input
    (None = all frames) and the input domain (None = unbounded). Radii are per sample and passed
    separately. Any accepted spelling is normalised on construction."""

    norm: float = math.inf
    ball: Ball = Ball.FRAME
    frames: tuple[int, ...] | None = None
    domain: Domain | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", parse_norm(self.norm))
        object.__setattr__(self, "ball", Ball.parse(self.ball, "ball"))
        object.__setattr__(self, "frames", parse_frames(self.frames))
        object.__setattr__(self, "domain", Domain.parse(self.domain))

    @classmethod
    def of(cls, threat: ThreatModel | None = None, **spellings: Any) -> ThreatModel:
        """`threat` itself, or one built from the API's keyword spellings (norm, ball, frames,
        domain; a `Default` is a keyword the caller left out; frames/domain None = all frames /
        unbounded, a norm or ball of None is a mistake, refused by name). Spellings given with
        `threat` must say what it says: preferring either silently would certify a set the caller
        did not ask for (an l_inf request answered with l1 radii that l_inf points break)."""
        given = {k: v for k, v in spellings.items()
                 if not isinstance(v, Default) and (v is not None or k in ("norm", "ball"))}
        if threat is None:
            return cls(**{**{k: v.value for k, v in spellings.items() if isinstance(v, Default)}, **given})
        if not isinstance(threat, ThreatModel):
            raise InputError(f"threat must be a ThreatModel, not {type(threat).__name__}")
        if given:
            spelled = cls(**{"norm": threat.norm, "ball": threat.ball, "frames": threat.frames,
                             "domain": threat.domain, **given}).describe()
            said = threat.describe()
            clash = [f"{k}={spelled[k]!r} (threat says {said[k]!r})" for k in given if spelled[k] != said[k]]
            if clash:
                raise InputError(f"both threat= and {', '.join(clash)} given: give the threat model one way")
        return threat

    def frame_mask(self, node: ir.Input) -> np.ndarray:
        """Which frames of `node` are perturbed, as a bool vector over its frames."""
        count = node.num_frames
        mask = np.zeros(count, dtype=bool)
        if self.frames is None:
            mask[:] = True
            return mask
        bad = [t for t in self.frames if not 0 <= t < count]
        if bad:
            raise InputError(f"frames {bad} out of range: input {node.onnx_name!r} has {count} frames (0..{count - 1})")
        mask[list(self.frames)] = True
        return mask

    def describe(self) -> dict:
        """The JSON fields every report carries."""
        return {"norm": norm_label(self.norm), "ball": self.ball.value,
                "frames": "all" if self.frames is None else list(self.frames),
                "domain": None if self.domain is None else self.domain.describe()}


def __getattr__(name: str) -> Any:
    """The engine-side classes moved to verifier.regions; old imports keep working."""
    if name in ("Region", "BallRegion", "BoxRegion", "PointRegion", "project"):
        from verifier import regions
        return getattr(regions, name)
    raise AttributeError(f"module 'verifier.threat' has no attribute {name!r}")
