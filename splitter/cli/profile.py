"""``splitter profile BUNDLE [--threads N] [-o FILE]``: time the device side, write a device profile."""

from __future__ import annotations

import argparse

HELP = ("time a bundle's device side (head and coder p50/p95, peak RSS, payload bytes) and write "
        "a device profile JSON the latency model and sweep read")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="directory written by `splitter split ... --out DIR` (or its device/)")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime threads (default 1)")
    p.add_argument("--runs", type=int, default=50, help="timed runs after 5 warm-up runs (default 50)")
    p.add_argument("--image", metavar="FILE", help="profile on this image (default: a synthetic one)")
    p.add_argument("-o", "--output", default="device_profile.json", metavar="FILE",
                   help="where to write the profile (default device_profile.json)")


def run(args: argparse.Namespace) -> int:
    from splitter.deploy.profile import profile, save_profile

    prof = profile(args.bundle, threads=args.threads, runs=args.runs, image=args.image)
    path = save_profile(prof, args.output)
    print(f"{prof.model} at {prof.cut} ({prof.kind}{', int8 head' if prof.head_int8 else ''}), "
          f"{'x'.join(map(str, prof.input_shape))}, {prof.threads or 'all'} thread(s), {prof.runs} runs:")
    for name in ("head", "coder", "encode"):
        print(f"  {name:7s} p50 {getattr(prof, f'{name}_ms_p50'):8.3f} ms   "
              f"p95 {getattr(prof, f'{name}_ms_p95'):8.3f} ms")
    gf = f", {prof.device_gflops:.1f} GFLOP/s effective" if prof.device_gflops else ""
    print(f"  coder {prof.coder_fraction:.0%} of encode; payload {prof.payload_bytes:,} B; "
          f"peak RSS {prof.peak_rss_mb:.0f} MB{gf}")
    print(f"wrote {path}")
    return 0
