"""Does a quick fit rank split points the way a full fit does? Digits, the demo's teacher.

::

    demo teacher (test_resnet 3×16×16, cached) ─► sweep its stage points with one bottleneck
    at one β, fit="quick" and fit="full" (same seeds, same held-out digits)
    ─► per point: accuracy and measured bytes under each ─► Spearman / Kendall rank
       correlations between the two orderings, and whether both pick the same best point

    python bench/quick_vs_full.py [--bottleneck entropy:channels=8] [--beta 0.004] [--out runs/qvf]
"""

from __future__ import annotations

import argparse
import time

import torch
from scipy.stats import kendalltau, spearmanr

import splitter
from splitter.cli.demo_run import INPUT_SIZE, digits_teacher


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bottleneck", default="entropy:channels=8")
    ap.add_argument("--beta", type=float, default=0.004)
    ap.add_argument("--points", default="stages")
    ap.add_argument("--out", default="runs/qvf")
    args = ap.parse_args()
    torch.set_num_threads(1)
    teacher, _ = digits_teacher(progress=False)
    got = {}
    for mode in ("quick", "full"):
        t0 = time.time()
        res = splitter.sweep(teacher, args.points, [args.bottleneck], input_shape=INPUT_SIZE,
                             data="digits", fit=mode, betas=[args.beta], store=f"{args.out}/store",
                             export=False, codecs=[], plain=False)
        got[mode] = {r.point: r for r in res.rows}
        print(f"fit={mode}: {time.time() - t0:.0f} s (trials already in the store are read back)")
    points = list(got["full"])
    from splitter._text import table

    print(table([[p, f"{100 * got['quick'][p].accuracy:.2f}", f"{100 * got['full'][p].accuracy:.2f}",
                  f"{got['quick'][p].payload_bytes:.1f}", f"{got['full'][p].payload_bytes:.1f}"]
                 for p in points], ["point", "acc quick %", "acc full %", "bytes quick", "bytes full"]))
    for what, f in (("accuracy", lambda r: r.accuracy), ("bytes", lambda r: r.payload_bytes),
                    ("bytes/accuracy", lambda r: r.payload_bytes / max(r.accuracy, 1e-9))):
        q = [f(got["quick"][p]) for p in points]
        full = [f(got["full"][p]) for p in points]
        rho = spearmanr(q, full).statistic
        tau = kendalltau(q, full).statistic
        best_q = points[q.index(max(q) if what == "accuracy" else min(q))]
        best_f = points[full.index(max(full) if what == "accuracy" else min(full))]
        print(f"{what}: Spearman {rho:+.3f}, Kendall {tau:+.3f}; best point quick {best_q}, full {best_f}")


if __name__ == "__main__":
    main()
