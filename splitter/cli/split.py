"""``splitter split MODEL --at X [--bottleneck K] [--out DIR]``: split, and export a bundle."""

from __future__ import annotations

import argparse

from splitter.cli._common import add_model_args, parse_value, trace_from_args

HELP = "split a model at a layer (optionally with a bottleneck); with --out, export a deployable bundle"


def _option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE such as quality=50, got {text!r}")
    return key, parse_value(value)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--at", required=True,
                   help="cut after this module path or FX node (`splitter points MODEL --stages` lists the stages)")
    p.add_argument("--bottleneck", metavar="KIND", help="identity, crbq, entropy, hyperprior, jpeg, webp")
    p.add_argument("--channels", type=int, help="latent channels of the bottleneck")
    p.add_argument("--mode", choices=["insert", "replace"], default="insert",
                   help="insert after the cut, or replace the head (Entropic Student)")
    p.add_argument("--option", action="append", type=_option, default=[], metavar="KEY=VALUE",
                   help="another bottleneck option, e.g. --option quality=50 (repeatable)")
    p.add_argument("--out", metavar="DIR", help="export a bundle here (head.onnx, tail, tables, manifest.json)")
    p.add_argument("--overwrite", action="store_true", help="replace a bundle already in --out")
    p.add_argument("--exporter", choices=["auto", "dynamo", "torchscript"], default="auto",
                   help="ONNX exporter (auto: dynamo, then torchscript)")
    p.add_argument("--int8", action="store_true",
                   help="with --out: quantize head.onnx to int8 (static QDQ), calibrated on --calibration")
    p.add_argument("--calibration", metavar="DATA",
                   help="real images for --int8: a folder of JPEG/PNG files or a .npy (N, C, H, W) array")
    p.add_argument("--int8-min-top1", type=float, default=0.98, metavar="F",
                   help="refuse an int8 head whose top-1 agreement with fp32 is below F (default 0.98)")


def run(args: argparse.Namespace) -> int:
    from splitter.compile.split import split

    options = dict(args.option)
    if args.channels is not None:
        options["channels"] = args.channels
    if args.int8 and not (args.out and args.calibration):
        from splitter.errors import BundleError

        raise BundleError("--int8 quantizes the exported head: add --out DIR and --calibration "
                          "DATA (a folder of real images or a .npy array)")
    if args.out:
        from splitter.deploy.export import check_out_dir

        check_out_dir(args.out, overwrite=args.overwrite)  # before the minutes of tracing
    g = trace_from_args(args)
    kw = {"bottleneck": args.bottleneck, "mode": args.mode} if args.bottleneck else {}
    s = split(g, args.at, **kw, **options)
    print(s)
    stages = g.stage_names()
    if s.cut.name in stages:
        print(f"  stage {stages.index(s.cut.name) + 1} of {len(stages)} (`splitter points --stages`)")
    for t in s.cut.tensors:
        print(f"  wire at {s.cut.name}: {t.name} {t.shape} {t.dtype} ({t.nbytes:,} B)")
    try:
        c = s.costs
        print(f"  encoder: {c.encoder_params:,} params, {c.encoder_mb:.3f} MB, {c.encoder_macs:,} MACs; "
              f"tail: {c.tail_macs:,} MACs")
        if s.bottleneck is not None:  # a coded size is only ever shown measured
            print("  payload: not measured here (it depends on the data and the fit); measure "
                  "it with `splitter eval BUNDLE --data DATA` or `splitter sweep ... --data DATA`")
    except ImportError:
        pass
    if not args.out:
        return 0
    from splitter.deploy.export import export

    b = export(s, args.out, exporter=args.exporter, overwrite=args.overwrite, int8=args.int8,
               calibration=args.calibration, int8_min_top1=args.int8_min_top1)
    m = b.manifest
    print(f"bundle {b.path}:")
    for half in (b.device_half, b.server_half):  # device/ and server/, each with its manifest
        for name, f in sorted(half.manifest.files.items()):
            print(f"  {half.prefix + name:26s} {f.size:>12,} B  sha256 {f.sha256[:12]}")
    p = m.parity
    print(f"  exporters: head {m.export.head.exporter}, tail {m.export.tail.exporter}; parity on "
          f"{p.n_inputs} inputs: {p.symbols_identical:.4%} symbols identical, top-1 agreement "
          f"{p.top1_agreement:.2%}, {'passed' if p.passed else 'FAILED'}")
    q = b.device_half.manifest.int8
    if q is not None:
        print(f"  int8 head: top-1 agreement {q.top1_agreement:.2%} on {q.n_eval} calibration "
              f"images, {q.symbols_identical:.2%} symbols identical, weights {q.weight_bits_ratio:.2f}x "
              f"the fp32 bits; {q.latency_ms_int8:.2f} ms vs fp32 {q.latency_ms_fp32:.2f} ms "
              f"({q.threads} thread): {q.faster} is faster"
              + ("" if q.faster == "int8" else "; export without --int8 to keep fp32"))
    return 0
