"""``splitter demo``: teacher on digits ─► measured sweep of its stage points (fits in
``--jobs`` processes) vs five input codecs ─► BD-rates ─► the LoRa plan ─► bundle, one payload."""

from __future__ import annotations

import argparse

HELP = "run the whole pipeline on real handwritten digits, offline, in minutes"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.add_argument("--quick", action="store_true", help="a few steps per stage (smoke test)")
    p.add_argument("--no-export", action="store_true", help="skip the bundle export")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--jobs", type=int, default=2, help="processes running the sweep's trials (default 2)")
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from splitter.cli.demo_run import run_demo

    result = run_demo(args.out, quick=args.quick, progress=not args.no_progress,
                      export=not args.no_export, seed=args.seed, jobs=args.jobs)
    return 0 if result.report.rows else 1
