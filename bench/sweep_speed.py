"""How fast is costing every cut point? Prints two ratios per model.

1. (trace + cost every cut point) / (trace + one forward): a sweep reads prefix sums of
   per-node costs written in the tracing run, so it should cost about one forward (target ≤ 3).
2. Speed-up over the naive way: for every point, split the graph, run FlopCounterMode over
   the head and the tail and sum their parameters (target ≥ 10×). Both ways trace once.
   By default the naive time is measured on an evenly spaced sample of points and scaled
   to all of them; ``--full`` runs every point.

    python bench/sweep_speed.py [--models resnet50,vit_small_patch16_224] [--sample 16 | --full]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import splitter


def _naive_point(g, name: str) -> tuple[int, int, int, int]:
    s = splitter.split(g, name)
    s.requires_grad_(False)
    x = g.example_input
    with torch.no_grad(), FlopCounterMode(display=False) as fh:
        wire = s.head(x)
    with torch.no_grad(), FlopCounterMode(display=False) as ft:
        s.tail(wire)
    return (fh.get_total_flops(), ft.get_total_flops(),
            sum(p.numel() for p in s.head.parameters()), sum(p.numel() for p in s.tail.parameters()))


def bench(name: str, sample: int | None) -> dict[str, float]:
    t0 = time.perf_counter()
    g = splitter.trace(name)
    t_trace = time.perf_counter() - t0

    x = g.example_input
    with torch.no_grad():
        g.gm(x)  # warm-up
        t0 = time.perf_counter()
        g.gm(x)
        t_fwd = time.perf_counter() - t0

    t0 = time.perf_counter()
    res = splitter.sweep(g, "all")
    t_sweep = time.perf_counter() - t0
    n = len(res.rows)

    cuts = g.cut_points()
    picked = cuts if sample is None or sample >= n else [cuts[round(i * (n - 1) / (sample - 1))] for i in range(sample)]
    t0 = time.perf_counter()
    for c in picked:
        _naive_point(g, c.name)
    t_naive = (time.perf_counter() - t0) * n / len(picked)

    return dict(points=n, trace=t_trace, forward=t_fwd, sweep=t_sweep, naive=t_naive,
                sampled=len(picked), macs=res.rows[-1].encoder_macs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet50,vit_small_patch16_224")
    ap.add_argument("--sample", type=int, default=16, help="naive points timed (scaled to all)")
    ap.add_argument("--full", action="store_true", help="time the naive way at every point")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), CPU")
    for name in args.models.split(","):
        r = bench(name, None if args.full else args.sample)
        ratio = (r["trace"] + r["sweep"]) / (r["trace"] + r["forward"])
        speedup = (r["trace"] + r["naive"]) / (r["trace"] + r["sweep"])
        note = "" if r["sampled"] == r["points"] else f" (naive timed on {r['sampled']} points, scaled)"
        print(f"{name}: {r['points']} cut points, {r['macs'] / 1e9:.3f} GMACs; trace {r['trace']:.2f} s, "
              f"forward {r['forward']:.3f} s, cost all points {r['sweep']:.3f} s, "
              f"naive {r['naive']:.1f} s{note}")
        print(f"  (trace + cost every point) / (trace + forward) = {ratio:.2f}   (target <= 3)")
        print(f"  speed-up over split + recount per point = {speedup:.1f}x   (target >= 10x); "
              f"costing alone {r['naive'] / r['sweep']:.0f}x")


if __name__ == "__main__":
    main()
