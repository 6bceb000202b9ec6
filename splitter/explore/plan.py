"""plan: pick the split for a device and a link from a measured sweep.

::

    measured SweepResult ─► re-predict latencies for the link (+ device profile)
        ─► keep rows whose measured accuracy drop ≤ max_drop (points vs the teacher)
        ─► rank by predicted end-to-end latency (or by measured bytes) ─► choice + runners-up
        ─► the choice's bundle (exported by its trial) copied to the output directory

Only measured rows are candidates: a row without held-out accuracy cannot be shown to stay
within the bound. A plain split (no bottleneck) can win; it sends the raw cut tensor and
has no bundle to write (``export`` needs a coder), which the plan says.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from splitter.errors import ConfigError, SplitterError
from splitter.explore.latency import LINKS, Link
from splitter.explore.sweep import PLAIN, SweepResult, SweepRow

__all__ = ["Plan", "plan", "parse_link", "write_bundle"]


class Plan(BaseModel):
    objective: Literal["latency", "bytes"]
    max_drop: float
    link: Link
    teacher_accuracy: float | None
    choice: SweepRow | None
    runners_up: list[SweepRow] = []
    candidates: int = 0
    rejected: list[SweepRow] = []  # measured rows over the accuracy bound, best first

    def table(self) -> str:
        from splitter._text import table

        rows = []
        for k, r in enumerate(([self.choice] if self.choice else []) + self.runners_up):
            rows.append(["*" if k == 0 else str(k + 1), r.point, r.config,
                         "" if r.beta is None else f"{r.beta:g}", f"{100 * (r.accuracy or 0):.2f}",
                         f"{r.accuracy_drop:+.2f}", f"{r.payload_bytes:,.1f}",
                         "~est" if r.device_ms is None else f"{r.device_ms:.3f}", f"{r.latency_ms:,.1f}"])
        return table(rows, ["", "point", "bottleneck", "β", "acc %", "drop", "bytes", "device ms",
                            "latency ms"])


def parse_link(text: str) -> Link:
    """``lora``, ``lte``, ``wifi`` or ``BW,RTT`` (Mbit/s, ms)."""
    if text in LINKS:
        return LINKS[text]
    parts = [p.strip() for p in text.split(",")]
    try:
        bw, rtt = (float(parts[0]), float(parts[1]) if len(parts) > 1 else 0.0)
    except (ValueError, IndexError):
        bw = rtt = -1.0
    if len(parts) > 2 or bw <= 0 or rtt < 0:
        raise ConfigError(f"--link {text!r}: use lora, lte, wifi, or BW,RTT in Mbit/s and ms "
                          f"(e.g. 2,40)")
    return Link(bandwidth_mbps=bw, rtt_ms=rtt, name=f"{bw:g} Mbit/s")


def plan(result: SweepResult, *, max_drop: float = 1.0, objective: str = "latency",
         link: Link | None = None, top: int = 4) -> Plan:
    """The measured row with the lowest predicted latency (or bytes) whose accuracy drop is
    at most ``max_drop`` points; ties go to the earlier cut, then the fewer bytes."""
    if objective not in ("latency", "bytes"):
        raise ConfigError(f"objective must be 'latency' or 'bytes', not {objective!r}")
    res = result.under(link=link) if link is not None else result
    measured = [r for r in res.rows if r.measured and r.accuracy_drop is not None]
    if not measured:
        raise SplitterError("the sweep has no measured rows; run it with data= (splitter sweep "
                            "--data DATA) so accuracy and bytes come from held-out samples")

    def key(r: SweepRow):
        main = r.latency_ms if objective == "latency" else r.payload_bytes
        return (main, r.cut_index, r.payload_bytes)

    ok = sorted((r for r in measured if r.accuracy_drop <= max_drop + 1e-9), key=key)
    over = sorted((r for r in measured if r.accuracy_drop > max_drop + 1e-9), key=key)
    return Plan(objective=objective, max_drop=max_drop, link=res.link,
                teacher_accuracy=res.teacher_accuracy, choice=ok[0] if ok else None,
                runners_up=ok[1:1 + top], candidates=len(ok), rejected=over[:top])


def write_bundle(row: SweepRow, out: str | Path) -> Path | None:
    """Copy the chosen trial's bundle to ``out`` (replacing an older one); None for a plain row."""
    if row.config == PLAIN:
        return None
    if not row.bundle or not Path(row.bundle).exists():
        raise SplitterError(f"the trial for {row.point} {row.label} kept no bundle (was it run with "
                            f"export off?); run the plan again without --no-export")
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(row.bundle, out)
    return out
