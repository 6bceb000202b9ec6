"""``splitter encode BUNDLE IMAGE... -o payload.bin``: the device side from the shell."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "encode image files into one payload with a bundle's device head (ONNX + entropy coding)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="directory written by `splitter split ... --out DIR`")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG/PNG/WebP files (one payload holds them all)")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="where to write the payload bytes")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: all cores)")


def run(args: argparse.Namespace) -> int:
    from splitter.deploy.runtime import load_bundle

    device = load_bundle(args.bundle).device(threads=args.threads)
    data = device.encode_images(args.images)
    out = Path(args.output)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(out)  # a reader never sees half a payload
    n = len(args.images)
    print(f"{out}: {len(data):,} bytes for {n} image{'s' if n != 1 else ''} "
          f"({len(data) / n:,.0f} B per image, {device.kind})")
    return 0
