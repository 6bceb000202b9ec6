"""Device-side cost per image: the exported ONNX head + entropy coding vs the torch head,
and vs plain Pillow JPEG encoding of the same image. Prints times and ratios.

Default: ResNet-50's Entropic Student (``entropy`` bottleneck replacing the head up to
``layer1``) at 224×224, one thread for torch and onnxruntime alike, JPEG quality 85.
The image is synthetic (smooth gradients, shapes and mild noise, no download); pass
``--image FILE`` for a real one. Weights are random, so payload sizes are only indicative.

    python bench/device_encode.py [--model resnet50 --at layer1 --bottleneck entropy --mode replace]
                                  [--channels 24] [--n 50] [--threads 1] [--image FILE]
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time

import numpy as np
import torch

import splitter


def synthetic_image(size: int, seed: int = 0):
    """A 'natural-ish' RGB image: gradients, a few discs, low noise (JPEG-friendly content)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    arr = np.stack([120 + 100 * xx, 80 + 120 * yy, 160 - 90 * xx * yy], -1)
    arr += rng.normal(0, 6, arr.shape)
    im = Image.fromarray(arr.clip(0, 255).astype("uint8"))
    draw = ImageDraw.Draw(im)
    for _ in range(6):
        x0, y0, r = rng.integers(0, size, 2).tolist() + [int(rng.integers(size // 12, size // 4))]
        draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=tuple(rng.integers(0, 255, 3).tolist()))
    return im


def per_call(fns: dict, n: int, warmup: int = 3) -> dict[str, float]:
    """Median seconds per call of each function, timed round-robin so that load from other
    processes falls on all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(n):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--at", default="layer1")
    ap.add_argument("--bottleneck", default="entropy")
    ap.add_argument("--mode", default="replace", choices=["insert", "replace"])
    ap.add_argument("--channels", type=int, default=24)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--quality", type=int, default=85)
    ap.add_argument("--n", type=int, default=50, help="timed runs per method (median reported)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--image", help="an image file instead of the synthetic one")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    shape = (3, args.size, args.size)
    s = splitter.split(args.model, at=args.at, bottleneck=args.bottleneck, mode=args.mode,
                       channels=args.channels, input_shape=shape)
    with tempfile.TemporaryDirectory() as d:
        bundle = splitter.export(s, f"{d}/bundle", threads=args.threads)
        device = bundle.device(threads=args.threads)
    m = bundle.manifest

    from PIL import Image

    im = Image.open(args.image).convert("RGB").resize((args.size, args.size)) if args.image \
        else synthetic_image(args.size)
    x = torch.from_numpy(device.preprocess(im))[None]  # what the head sees for this image
    bn = s.bottleneck

    def torch_head():
        with torch.no_grad():
            return s.head(x)

    def torch_encode():  # torch head + the same coder: Split.encode
        return s.encode(x)

    def onnx_head():
        return device.symbols(x)

    def onnx_encode():  # what the device runs: head.onnx + compress + payload framing
        return device.encode(x)

    def jpeg():
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=args.quality)
        return buf.getvalue()

    sym = torch.from_numpy(onnx_head())  # the device runtime returns numpy
    t = per_call({
        "onnx head": onnx_head,
        "onnx head + coding": onnx_encode,
        "torch head": torch_head,
        "torch head + coding": torch_encode,
        "coding only": lambda: bn.compress(sym),
        f"JPEG q{args.quality}": jpeg,
    }, args.n)
    payload_b, jpeg_b = len(onnx_encode()), len(jpeg())

    print(f"{m.model} {args.mode} {m.bottleneck.kind}(channels={args.channels}) at {m.cut.name}, "
          f"input {args.size}x{args.size}, {args.threads} thread(s), median of {args.n}; "
          f"head exported by {m.export.head.exporter}, symbols {m.symbols.shape} {m.symbols.dtype}")
    for k, v in t.items():
        print(f"  {k:22s} {v * 1e3:9.3f} ms/image")
    print(f"  payload {payload_b:,} B vs JPEG {jpeg_b:,} B (random weights: sizes only indicative)")
    base = t["onnx head + coding"]
    print("ratios:")
    print(f"  torch head / onnx head                     = {t['torch head'] / t['onnx head']:.2f}x")
    print(f"  torch head + coding / onnx head + coding   = {t['torch head + coding'] / base:.2f}x")
    print(f"  onnx head + coding / JPEG q{args.quality}              = {base / t[f'JPEG q{args.quality}']:.2f}x")
    print(f"  torch head / JPEG q{args.quality}                      = "
          f"{t['torch head'] / t[f'JPEG q{args.quality}']:.2f}x")


if __name__ == "__main__":
    main()
