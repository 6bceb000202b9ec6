"""bd: Bjøntegaard deltas of accuracy-vs-bytes curves, the way codec papers compare curves.

::

    curves {name: [(bytes, accuracy), ...]} ─► each curve's upper envelope (more bytes never
    less accurate) ─► bjontegaard.bd_rate / bd_psnr (piecewise cubic, PCHIP) vs the anchor
    ─► BDRow(curve, anchor, bd_rate %, bd_accuracy points) ─► CSV / JSON

BD-rate: the mean change in bytes at equal accuracy, in percent (−50 %: half the bytes).
BD-accuracy: the mean change in accuracy at equal bytes, in percentage points (the
"BD-PSNR" of the bjontegaard package with accuracy in place of PSNR). Both integrate over
the accuracy (resp. log-rate) range the two curves share; ``overlap`` says how much of it
that is, and a pair that shares none gets no figure and a reason.

The default anchor is the best input codec: the one whose BD-rate against JPEG is the
lowest (JPEG itself when no other codec beats it).
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from pydantic import BaseModel

from splitter.errors import ConfigError

__all__ = ["BDRow", "bd_rate", "bd_accuracy", "envelope", "compare", "best_codec", "to_csv", "to_json"]

Curve = Sequence[tuple[float, float]]  # (bytes, accuracy in [0, 1])


class BDRow(BaseModel):
    curve: str
    anchor: str
    points: int
    bd_rate: float | None = None  # percent
    bd_accuracy: float | None = None  # percentage points
    note: str = ""


def envelope(curve: Curve) -> list[tuple[float, float]]:
    """Points sorted by bytes, keeping those more accurate than every smaller one (the
    curve a user can operate on); duplicates of bytes keep the most accurate."""
    pts = sorted((float(b), float(a)) for b, a in curve if b > 0 and math.isfinite(a))
    out: list[tuple[float, float]] = []
    for b, a in pts:
        if out and b == out[-1][0]:
            if a > out[-1][1]:
                out[-1] = (b, a)
            continue
        if not out or a > out[-1][1]:
            out.append((b, a))
    return out


def _arrays(curve: Curve) -> tuple[np.ndarray, np.ndarray]:
    env = envelope(curve)
    return np.array([p[0] for p in env]), np.array([100 * p[1] for p in env])


def _delta(kind: str, anchor: Curve, test: Curve) -> float:
    import bjontegaard

    ra, da = _arrays(anchor)
    rt, dt = _arrays(test)
    if len(ra) < 2 or len(rt) < 2:
        raise ValueError("needs at least two points of distinct bytes and accuracy on each curve")
    fn = bjontegaard.bd_rate if kind == "rate" else bjontegaard.bd_psnr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # partial overlap is reported by compare(), not warned
        value = float(fn(ra, da, rt, dt, method="pchip", require_matching_points=False, min_overlap=0))
    if not math.isfinite(value):
        raise ValueError("the curves do not overlap")
    return value


def bd_rate(anchor: Curve, test: Curve) -> float:
    """Mean bytes change of ``test`` vs ``anchor`` at equal accuracy, percent."""
    return _delta("rate", anchor, test)


def bd_accuracy(anchor: Curve, test: Curve) -> float:
    """Mean accuracy change of ``test`` vs ``anchor`` at equal bytes, percentage points."""
    return _delta("accuracy", anchor, test)


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    lo, hi = max(a.min(), b.min()), min(a.max(), b.max())
    span = max(a.max(), b.max()) - min(a.min(), b.min())
    return max(0.0, hi - lo) / span if span > 0 else 0.0


def compare(curves: Mapping[str, Curve], anchor: str) -> list[BDRow]:
    """BD-rate and BD-accuracy of every curve against ``curves[anchor]``."""
    if anchor not in curves:
        raise ConfigError(f"anchor {anchor!r} is not one of the curves: {sorted(curves)}")
    rows = []
    for name, c in curves.items():
        n = len(envelope(c))
        if name == anchor:
            rows.append(BDRow(curve=name, anchor=anchor, points=n, bd_rate=0.0, bd_accuracy=0.0,
                              note="anchor"))
            continue
        row = BDRow(curve=name, anchor=anchor, points=n)
        notes = []
        for what, fn in (("rate", bd_rate), ("accuracy", bd_accuracy)):
            try:
                setattr(row, f"bd_{what}", fn(curves[anchor], c))
            except ValueError as e:
                notes.append(f"no BD-{what}: {e}")
        if row.bd_rate is not None:
            acc_ov = _overlap(_arrays(curves[anchor])[1], _arrays(c)[1])
            notes.insert(0, f"accuracy ranges overlap {100 * acc_ov:.0f} %")
        row.note = "; ".join(notes)
        rows.append(row)
    return rows


def best_codec(curves: Mapping[str, Curve], codecs: Sequence[str]) -> str | None:
    """The input codec with the lowest BD-rate against JPEG (or the first codec given)."""
    have = [c for c in codecs if c in curves and len(envelope(curves[c])) >= 2]
    if not have:
        return None
    base = "jpeg" if "jpeg" in have else have[0]
    scores = {base: 0.0}
    for c in have:
        if c != base:
            try:
                scores[c] = bd_rate(curves[base], curves[c])
            except ValueError:
                pass
    return min(scores, key=lambda c: (scores[c], have.index(c)))


def to_csv(rows: Sequence[BDRow], path: str | None = None) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(BDRow.model_fields), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in r.model_dump().items()})
    text = buf.getvalue()
    if path:
        with open(path, "w", newline="") as f:
            f.write(text)
    return text


def to_json(rows: Sequence[BDRow], path: str | None = None) -> str:
    text = json.dumps([r.model_dump() for r in rows], indent=1)
    if path:
        with open(path, "w") as f:
            f.write(text)
    return text
