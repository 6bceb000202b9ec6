"""``splitter sweep MODEL``: cost every split point, predict latencies, name the best split."""

from __future__ import annotations

import argparse
import sys

from splitter.cli._common import STAGES_HELP, add_model_args, trace_from_args
from splitter.errors import ConfigError

HELP = "cost every split point (plain and with bottlenecks), predict latency, plot the trade-offs"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--at", metavar="A,B,C", help="these points (module paths or node names)")
    which.add_argument("--stages", action="store_true", help=STAGES_HELP + " (the default)")
    which.add_argument("--all", action="store_true", help="every cut point")
    p.add_argument("--bottleneck", metavar="KIND[:k=v,...]", action="append", default=[],
                   help="also try this bottleneck at each point, e.g. crbq:channels=12 or "
                        "entropy:mode=replace (repeatable)")
    net = p.add_mutually_exclusive_group()
    net.add_argument("--link", choices=["lora", "lte", "wifi"], default=None,
                     help="a preset uplink (default lte: 10 Mbit/s, 50 ms RTT)")
    net.add_argument("--bandwidth", metavar="MBPS", type=float, help="uplink bandwidth in Mbit/s")
    p.add_argument("--rtt", metavar="MS", type=float, help="round-trip time in ms (overrides the preset's)")
    p.add_argument("--device-gflops", metavar="X", type=float, help="device throughput (default 10 GFLOP/s)")
    p.add_argument("--server-gflops", metavar="Y", type=float, help="server throughput (default 1000 GFLOP/s)")
    p.add_argument("--csv", metavar="FILE", help="write the rows as CSV")
    p.add_argument("--json", metavar="FILE", help="write the rows and conditions as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="draw the R-D, ExR-D, three-way and latency views")


def _conditions(args: argparse.Namespace):
    from splitter.explore.latency import DEVICE, LINKS, LTE, SERVER, Link, Machine

    link = LINKS[args.link] if args.link else LTE
    if args.bandwidth is not None:
        if args.bandwidth <= 0:
            raise ConfigError(f"--bandwidth must be a positive number of Mbit/s, not {args.bandwidth:g}")
        link = Link(bandwidth_mbps=args.bandwidth, rtt_ms=link.rtt_ms, name=f"{args.bandwidth:g} Mbit/s")
    if args.rtt is not None:
        link = link.model_copy(update={"rtt_ms": max(0.0, args.rtt)})
    device = Machine(gflops=args.device_gflops, name="device") if args.device_gflops else DEVICE
    server = Machine(gflops=args.server_gflops, name="server") if args.server_gflops else SERVER
    return link, device, server


def run(args: argparse.Namespace) -> int:
    from splitter.explore.sweep import BottleneckSpec, sweep

    link, device, server = _conditions(args)
    specs = [BottleneckSpec.parse(b) for b in args.bottleneck]  # bad specs fail before tracing
    graph = trace_from_args(args)
    points = "all" if args.all else (args.at if args.at else "stages")
    many = points == "all" or bool(specs)
    res = sweep(graph, points, specs, link=link, device=device, server=server,
                progress=many and sys.stderr.isatty())
    print(f"{res.model} {(1, *res.input_shape)}: {len(res.rows)} splits; link {link.name} "
          f"{link.bandwidth_mbps:g} Mbit/s + {link.rtt_ms:g} ms RTT, device {device.gflops:g} "
          f"GFLOP/s, server {server.gflops:g} GFLOP/s")
    print(res.table())
    if res.skipped:
        print(f"skipped {len(res.skipped)} (point, bottleneck) pairs where the bottleneck cannot go"
              + ("" if args.json else " (--json lists them all)") + ", e.g.:")
        for s in res.skipped[:3]:
            print(f"  {s.point} [{s.config}]: {s.reason}")
    b = res.best
    print(f"best split: {b.point}" + ("" if b.config == "plain" else f" with {b.config}")
          + f" -> {b.latency_ms:,.1f} ms predicted ({b.encoder_macs / 1e9:.3f} GMACs on the device, "
          f"{b.payload_bytes:,.0f} B sent, {b.tail_macs / 1e9:.3f} GMACs on the server)")
    if args.csv:
        res.to_csv(args.csv)
        print(f"wrote {args.csv}")
    if args.json:
        res.to_json(args.json)
        print(f"wrote {args.json}")
    if args.plot:
        res.plot(args.plot)
        print(f"wrote {args.plot}")
    return 0
