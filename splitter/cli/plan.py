"""``splitter plan MODEL --data DATA --link L --max-drop D``: the split to deploy, measured.

::

    MODEL + DATA ─► measured sweep (trials it lacks run now; finished ones are read back)
        ─► latencies for --link (+ --device-profile) ─► rows within --max-drop points of the teacher
        ─► lowest predicted latency (or --fewest-bytes) ─► choice, runners-up ─► --out bundle
"""

from __future__ import annotations

import argparse
import os
import sys

from splitter.cli._common import add_model_args
from splitter.cli.sweep import add_measure_args, load_from_args, measure_kwargs

HELP = ("pick the split, bottleneck and beta with the lowest predicted latency for a link within "
        "an accuracy-drop bound, from a measured sweep; write its bundle")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--at", metavar="A,B,C", help="these points (default: the model's stages)")
    which.add_argument("--all", action="store_true", help="every cut point")
    p.add_argument("--bottleneck", metavar="KIND[:k=v,...]", action="append", default=[],
                   help="bottlenecks to try at each point (default: entropy and crbq)")
    p.add_argument("--link", default="lte", help="lora, lte, wifi, or BW,RTT in Mbit/s and ms (default lte)")
    p.add_argument("--max-drop", metavar="POINTS", type=float, default=1.0,
                   help="largest accuracy drop vs the teacher, in percentage points (default 1.0)")
    p.add_argument("--fewest-bytes", action="store_true",
                   help="rank by measured payload bytes instead of predicted latency")
    p.add_argument("--server-gflops", metavar="Y", type=float, help="server throughput (default 1000 GFLOP/s)")
    p.add_argument("--out", metavar="DIR", help="write the chosen bundle here (default runs/plan/MODEL/bundle)")
    add_measure_args(p)


def run(args: argparse.Namespace) -> int:
    from splitter.errors import ConfigError
    from splitter.explore.latency import SERVER, Machine
    from splitter.explore.plan import parse_link, plan, write_bundle
    from splitter.explore.sweep import BottleneckSpec, sweep

    if not args.data:
        raise ConfigError("splitter plan needs --data (digits, fashion-mnist or an image folder): "
                          "a choice within an accuracy bound must be measured")
    link = parse_link(args.link)
    server = Machine(gflops=args.server_gflops, name="server") if args.server_gflops else SERVER
    specs = [BottleneckSpec.parse(b) for b in (args.bottleneck or ["entropy", "crbq"])]
    points = "all" if args.all else (args.at or "stages")
    name = args.model.replace("/", "_").replace(":", "_")
    kw = measure_kwargs(args)
    kw["store"] = kw["store"] or os.path.join("runs", "sweep", name)
    res = sweep(load_from_args(args), points, specs, input_shape=args.input_size, link=link,
                server=server, progress=sys.stderr.isatty(), **kw)
    p = plan(res, max_drop=args.max_drop, objective="bytes" if args.fewest_bytes else "latency")
    print(f"{res.model}: {len(res.rows)} measured rows on {res.data} (fit {res.fit}); teacher "
          f"{100 * (res.teacher_accuracy or 0):.2f} % {res.metric}; link {link.name} "
          f"{link.bandwidth_mbps:g} Mbit/s + {link.rtt_ms:g} ms RTT; objective "
          f"{'fewest bytes' if args.fewest_bytes else 'lowest predicted latency'} within "
          f"{args.max_drop:g} points")
    if p.choice is None:
        print(f"no measured row stays within {args.max_drop:g} points of the teacher; the closest:")
        for r in p.rejected[:3]:
            print(f"  {r.point} {r.label}: drop {r.accuracy_drop:+.2f} points, {r.payload_bytes:,.1f} B")
        return 1
    print(p.table())
    c = p.choice
    dev = (f"{c.device_ms:.3f} ms device ({c.device_ms_source})" if c.device_ms is not None
           else "device time estimated from FLOPs")
    print(f"\nchoice: {c.point} {c.label}: {100 * c.accuracy:.2f} % (drop {c.accuracy_drop:+.2f} points), "
          f"{c.payload_bytes:,.1f} B per sample measured, {dev}, {c.latency_ms:,.1f} ms predicted "
          f"end to end")
    if p.rejected:
        r = p.rejected[0]
        print(f"fastest over the bound: {r.point} {r.label} ({r.latency_ms:,.1f} ms, drop "
              f"{r.accuracy_drop:+.2f} points)")
    out = args.out or os.path.join("runs", "plan", name, "bundle")
    written = write_bundle(c, out)
    if written is None:
        print("the choice is a plain split (the raw cut tensor crosses): no bundle to write; "
              "splitter split --bottleneck identity --out DIR exports one that sends it")
    else:
        print(f"bundle: {written}")
    return 0
