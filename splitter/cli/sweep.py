"""``splitter sweep MODEL``: cost every split point, predict latencies, name the best split.

::

    MODEL ─► costs of every point (analytic: raw cut sizes, FLOPs; estimates marked)
    MODEL --data DATA [--fit quick|full] ─► every (point, bottleneck, β) fitted and measured on
        held-out data (splitter.explore.trials) + input codecs + BD-rates ─► table, CSV/JSON, plot
"""

from __future__ import annotations

import argparse
import os
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
    p.add_argument("--plot", metavar="FILE.png", help="draw the R-D, ExR-D, three-way and latency views "
                                                      "(with --data, BD figures go beside it as .bd.csv/.bd.json)")
    add_measure_args(p)


def add_measure_args(p: argparse.ArgumentParser) -> None:
    """Options of a measured sweep (shared with ``splitter plan``)."""
    m = p.add_argument_group("measured sweep (needs --data)")
    m.add_argument("--data", metavar="DATA", help="digits, fashion-mnist, or an image folder (DIR/train "
                                                   "and DIR/test, or DIR/<class>/ with 20%% held out)")
    m.add_argument("--fit", choices=["quick", "full", "none"], default="quick",
                   help="fit each bottleneck by two-stage distillation: quick (15%% of full), full, "
                        "or none (measure it untrained); default quick")
    m.add_argument("--fit-steps", metavar="FEATURES,KD",
                   help="optimizer steps of the two fit stages instead of the --fit mode's own "
                        "(quick: 270,90; full: 1800,540), e.g. 60,20 for a smoke run")
    m.add_argument("--beta", metavar="B[,B...]", action="append", default=[],
                   help="rate weights to fit entropy-coded bottlenecks at (default 0.004)")
    m.add_argument("--rate", metavar="SIZE", help="instead of --beta: bisect β so each entropy-coded "
                                                  "bottleneck lands at this payload size, e.g. 2kB")
    m.add_argument("--jobs", metavar="N", type=int, default=1, help="trials in parallel (local processes)")
    m.add_argument("--ray", metavar="ADDRESS", nargs="?", const=True, default=None,
                   help="run the trials on Ray Tune (a local Ray, or the cluster at ADDRESS)")
    m.add_argument("--threads", metavar="T", type=int, default=1,
                   help="onnxruntime (and torch) threads for the device encode timing (default 1)")
    m.add_argument("--device-profile", metavar="FILE",
                   help="measured device encode times to use instead of timing here")
    m.add_argument("--store", metavar="DIR", help="trial results (default runs/sweep/MODEL); finished "
                                                  "trials are never rerun")
    m.add_argument("--codecs", metavar="C,C", default=None,
                   help="input codecs to compare with (default every installed one of jpeg,webp,"
                        "avif,heif,jxl; 'none' for none)")
    m.add_argument("--qualities", metavar="Q,Q", default=None, help="codec qualities (default 1..90)")
    m.add_argument("--anchor", metavar="CURVE", help="BD anchor curve (default: the best input codec)")
    m.add_argument("--limit", metavar="N", type=int, help="measure on the first N held-out samples")
    m.add_argument("--no-export", action="store_true",
                   help="skip the bundle export of each trial (device time is then an estimate)")
    m.add_argument("--exporter", choices=["auto", "dynamo", "torchscript"], default="auto",
                   help="ONNX exporter of each trial's bundle (auto: dynamo, then torchscript)")


def measure_kwargs(args: argparse.Namespace) -> dict:
    """``sweep(...)`` keyword arguments from the measured-sweep options."""
    betas = [float(v) for text in args.beta for v in text.split(",") if v.strip()]
    if betas and args.rate:
        raise ConfigError("give --beta or --rate, not both")
    codecs = None if args.codecs is None else [c.strip() for c in args.codecs.split(",")
                                                if c.strip() and c.strip() != "none"]
    qualities = None if args.qualities is None else [int(q) for q in args.qualities.split(",") if q.strip()]
    if args.jobs < 1 or args.threads < 1:
        raise ConfigError("--jobs and --threads must be at least 1")
    return dict(data=args.data, fit=None if args.fit == "none" else args.fit, betas=betas or None,
                schedules=_fit_steps(args.fit, args.fit_steps), exporter=args.exporter,
                rate=args.rate, jobs=args.jobs, ray=args.ray, threads=args.threads,
                device_profile=args.device_profile, store=args.store, codecs=codecs, qualities=qualities,
                anchor=args.anchor, eval_limit=args.limit, export=not args.no_export)


def _fit_steps(fit: str, text: str | None) -> dict[str, list[dict]] | None:
    """``--fit-steps F,K``: the ``fit`` mode's schedule with F and K optimizer steps."""
    if text is None:
        return None
    from splitter.explore.trials import schedule

    try:
        steps = [int(v) for v in text.split(",")]
    except ValueError:
        steps = []
    if len(steps) != 2 or min(steps) < 0:
        raise ConfigError(f"--fit-steps {text!r}: give the steps of both stages, e.g. 60,20")
    if fit == "none":
        raise ConfigError("--fit-steps needs --fit quick or full (--fit none trains nothing)")
    return {fit: [dict(st, steps=n) for st, n in zip(schedule(fit, 0.0), steps)]}


def load_from_args(args: argparse.Namespace):
    """The model as a module with its weights (a measured sweep fits and runs it)."""
    from splitter.cli._common import model_args
    from splitter.compile.trace import load_model

    return load_model(args.model, pretrained=args.pretrained, checkpoint=args.checkpoint,
                      **model_args(args))[0]


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
    points = "all" if args.all else (args.at if args.at else "stages")
    if args.data:
        kw = measure_kwargs(args)
        if kw["store"] is None:
            kw["store"] = os.path.join("runs", "sweep", args.model.replace("/", "_").replace(":", "_"))
        res = sweep(load_from_args(args), points, specs, input_shape=args.input_size, link=link,
                    device=device, server=server, progress=sys.stderr.isatty(), **kw)
    else:
        graph = trace_from_args(args)
        many = points == "all" or bool(specs)
        res = sweep(graph, points, specs, link=link, device=device, server=server,
                    progress=many and sys.stderr.isatty())
    print(f"{res.model} {(1, *res.input_shape)}: {len(res.rows)} splits; link {link.name} "
          f"{link.bandwidth_mbps:g} Mbit/s + {link.rtt_ms:g} ms RTT, device {device.gflops:g} "
          f"GFLOP/s, server {server.gflops:g} GFLOP/s")
    if res.data:
        print(f"measured on {res.data} ({res.rows[0].metric if res.rows else ''}; teacher "
              f"{100 * (res.teacher_accuracy or 0):.2f} %), fit {res.fit}; bytes: 'pay' = mean "
              f"measured payload, 'raw' = the raw cut tensor; device ms measured unless ~est")
    print(res.table())
    if not res.data and any(r.config != "plain" for r in res.rows):
        print("raw ≤N: the raw size of an untrained bottleneck's symbols, not a payload; "
              "give --data to fit and measure. ~: latency from the 10 GFLOP/s-class estimate.")
    if res.codecs:
        from splitter._text import table

        print("\ninput codecs on the same held-out samples (teacher on decoded images):")
        print(table([[c.method, c.setting, f"{100 * c.accuracy:.2f}", f"{c.bytes_mean:,.1f}",
                      f"{c.bytes_p95:,.0f}", f"{c.bpp:.3f}"] for c in res.codecs],
                    ["codec", "quality", "acc %", "bytes mean", "p95", "bpp"]))
    if res.bd:
        print("\n" + res.bd_table())
    elif res.data:
        print("\nno BD figures: no input codec curve with two points of distinct accuracy")
    if res.skipped:
        print(f"skipped {len(res.skipped)} (point, bottleneck) pairs where the bottleneck cannot go"
              + ("" if args.json else " (--json lists them all)") + ", e.g.:")
        for s in res.skipped[:3]:
            print(f"  {s.point} [{s.config}]: {s.reason}")
    b = res.best
    sent = (f"{b.payload_bytes:,.1f} B measured" if b.payload_measured
            else f"{b.payload_bytes:,.0f} B raw cut")
    print(f"best split: {b.point}" + ("" if b.config == "plain" else f" with {b.config}")
          + ("" if b.beta is None else f" β={b.beta:g}")
          + f" -> {b.latency_ms:,.1f} ms predicted ({b.encoder_macs / 1e9:.3f} GMACs on the device"
          + ("" if b.device_ms is None else f", {b.device_ms:.3f} ms measured")
          + f", {sent}, {b.tail_macs / 1e9:.3f} GMACs on the server)"
          + ("" if b.accuracy is None else f", {100 * b.accuracy:.2f} % {b.metric or 'accuracy'}"))
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
