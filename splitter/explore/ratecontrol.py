"""ratecontrol: find the β at which a fitted bottleneck lands at a target payload size.

::

    target bytes ─► β = √(lo·hi) ─► trial (fit + measure, stored) ─► mean payload bytes
        too many bytes: lo = β (more rate weight)      too few: hi = β
        ─► stop within ``tol`` of the target, or after ``max_iter`` trials
        ─► the probe nearest the target from below (else the nearest one)

Bytes fall as β grows (β weighs the rate term of stage 1), so bisection on log β
converges; the relation is monotone only in expectation (training noise), which is why
the answer is the best *measured* probe, not an interpolation. Every probe is a stored
trial: a resumed rate search replays the same path from the store.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from pydantic import BaseModel

from splitter.errors import ConfigError

__all__ = ["parse_size", "bisect_beta", "RateSearch"]

_UNITS = {"": 1, "b": 1, "kb": 1000, "kib": 1024, "mb": 1000_000, "mib": 1024 ** 2}


def parse_size(text: str | float | int) -> float:
    """``"2kB"`` -> 2000, ``"1.5KiB"`` -> 1536, ``"500"`` / ``"500B"`` -> 500 (bytes)."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
        unit = m.group(2).lower() if m else None
        if not m or unit not in _UNITS:
            raise ConfigError(f"cannot read the size {text!r}; write e.g. 2kB, 1.5KiB or 300B")
        value = float(m.group(1)) * _UNITS[unit]
    if value <= 0:
        raise ConfigError(f"a target payload size must be positive, not {text!r}")
    return value


class RateSearch(BaseModel):
    target: float
    beta: float
    bytes: float
    probes: list[tuple[float, float]]  # (β, measured mean bytes), in the order tried
    converged: bool


def bisect_beta(measure: Callable[[float], float], target: float, *, lo: float = 1e-5,
                hi: float = 1.0, tol: float = 0.05, max_iter: int = 8) -> RateSearch:
    """Bisection on log β so that ``measure(β)`` (mean payload bytes) lands within ``tol``
    (relative) of ``target``."""
    if not 0 < lo < hi:
        raise ConfigError(f"β range must satisfy 0 < lo < hi, got {lo}, {hi}")
    probes: list[tuple[float, float]] = []
    a, b = math.log(lo), math.log(hi)
    for _ in range(max_iter):
        beta = float(f"{math.exp((a + b) / 2):.6g}")  # a short, stable float: part of the trial id
        got = float(measure(beta))
        probes.append((beta, got))
        if abs(got - target) <= tol * target:
            break
        if got > target:
            a = math.log(beta)
        else:
            b = math.log(beta)
    under = [p for p in probes if p[1] <= target * (1 + tol)]
    beta, got = (max(under, key=lambda p: p[1]) if under
                 else min(probes, key=lambda p: abs(p[1] - target)))
    return RateSearch(target=target, beta=beta, bytes=got, probes=probes,
                      converged=abs(got - target) <= tol * target)
