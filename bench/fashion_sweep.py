"""Measured sweep on Fashion-MNIST: a ResNet teacher, every stage point fitted with an entropy
bottleneck at a few rates, against JPEG / WebP / AVIF / HEIF / JPEG XL on the same images.

::

    Debian dataset-fashion-mnist (60,000 train / 10,000 test, 28×28 gray)
      ─► timm test_resnet at 3×28×28, trained here once (cached under $SPLITTER_CACHE)
      ─► splitter.sweep(teacher, "stages", [entropy], data=(train, test), betas=..., fit=...)
      ─► per point: accuracy, bytes (measured payloads); input codecs; BD-rate vs every codec

Not part of the test suite (minutes to an hour on a laptop CPU). Prints the teacher's
accuracy, the per-point table, the codec table and the BD-rate of each bottleneck curve
against every input codec. Needs ``apt-get install dataset-fashion-mnist``.

    python bench/fashion_sweep.py [--epochs 4] [--limit 1000] [--fit quick] [--betas 0.001,0.004,0.016]
                                  [--points stages] [--jobs 1] [--export] [--out runs/fashion]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import splitter
from splitter.cli.demo_run import cache_dir, train_classifier
from splitter.explore import bd
from splitter.train.data import fashion_mnist

SHAPE = (3, 28, 28)
ARCH = "test_resnet"


def teacher(train, test, epochs: int, seed: int = 0):
    import timm
    from safetensors.torch import load_file, save_file

    path = cache_dir() / f"fashion_{ARCH}_{SHAPE[1]}_e{epochs}_s{seed}.safetensors"
    torch.manual_seed(seed)
    model = timm.create_model(ARCH, num_classes=10)
    if path.exists():
        model.load_state_dict(load_file(str(path)))
        print(f"teacher: loaded {path}")
        return model.eval(), path
    t0 = time.time()
    acc = train_classifier(model, train, test, epochs=epochs, lr=3e-3, batch_size=128, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"arch": ARCH, "test_accuracy": f"{acc:.6f}"})
    print(f"teacher: trained {epochs} epochs in {time.time() - t0:.0f} s, test accuracy "
          f"{100 * acc:.2f} %, cached at {path}")
    return model.eval(), path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=4, help="teacher epochs (cached per value)")
    ap.add_argument("--limit", type=int, default=1000, help="held-out test images measured")
    ap.add_argument("--fit", choices=["quick", "full"], default="quick")
    ap.add_argument("--betas", default="0.001,0.004,0.016")
    ap.add_argument("--channels", type=int, default=8)
    ap.add_argument("--steps", default="600,200", help="quick schedule: features,kd steps of 64 "
                                                       "(full: 5x)")
    ap.add_argument("--points", default="stages")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--export", action="store_true", help="export each trial and time its device encode")
    ap.add_argument("--qualities", default="1,5,10,20,30,50,75,90")
    ap.add_argument("--codecs", default=None, help="input codecs, comma-separated (default: every "
                                                   "one installed; AVIF, HEIF and JPEG XL take 9-26 ms "
                                                   "per 28x28 image, so minutes per quality on 10,000)")
    ap.add_argument("--out", default="runs/fashion")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    train = fashion_mnist("train", SHAPE)
    test = fashion_mnist("test", SHAPE)
    model, _ = teacher(train, test, args.epochs)
    from splitter.explore.evaluate import evaluate_model

    print(f"teacher: {100 * evaluate_model(model, test).accuracy:.2f} % on all 10,000 test images")
    # quick: --steps (default 600 + 200 steps of 64, ~1.4 epochs of 60k); full: 5x that
    k = 5 if args.fit == "full" else 1
    feat, kd = (int(v) for v in args.steps.split(","))
    sched = [dict(kind="features", steps=feat * k, lr=3e-3, match_output=10, tau=1),
             dict(kind="kd", steps=kd * k, lr=3e-4, tau=1)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = splitter.sweep(model, args.points, [f"entropy:channels={args.channels}"], input_shape=SHAPE,
                         data=(train, test), fit=args.fit, betas=[float(b) for b in args.betas.split(",")],
                         schedules={args.fit: sched}, batch_size=64, store=str(out / "store"),
                         eval_limit=args.limit, export=args.export, jobs=args.jobs, threads=args.threads,
                         qualities=[int(q) for q in args.qualities.split(",")], progress=True,
                         codecs=args.codecs.split(",") if args.codecs else None)
    print(f"\nmeasured on the first {args.limit} of Fashion-MNIST's test images; teacher "
          f"{100 * res.teacher_accuracy:.2f} % on them")
    print(res.table())
    from splitter._text import table

    print("\ninput codecs (teacher on decoded images):")
    print(table([[c.method, c.setting, f"{100 * c.accuracy:.2f}", f"{c.bytes_mean:,.1f}", f"{c.bpp:.3f}"]
                 for c in res.codecs], ["codec", "quality", "acc %", "bytes mean", "bpp"]))
    from splitter.explore.measure import curves_of

    cs = curves_of(res.rows, res.codecs)
    codecs = list(dict.fromkeys(c.method for c in res.codecs))
    rows = []
    for name in (n for n in cs if n not in codecs):
        for c in codecs:
            [r] = [x for x in bd.compare({c: cs[c], name: cs[name]}, c) if x.curve == name]
            rows.append([name, c, "" if r.bd_rate is None else f"{r.bd_rate:+.1f}",
                         "" if r.bd_accuracy is None else f"{r.bd_accuracy:+.2f}", r.note])
    print(f"\nBD vs every input codec (best codec by BD-rate vs JPEG: {res.anchor}):")
    print(table(rows, ["curve", "anchor", "BD-rate %", "BD-acc points", "note"]))
    res.to_csv(str(out / "sweep.csv"))
    res.to_json(str(out / "sweep.json"))
    res.plot(str(out / "sweep.png"))
    bd.to_csv(res.bd, str(out / "bd_best_codec.csv"))
    print(f"\nwrote {out}/sweep.csv, sweep.json, sweep.png (+ .bd.csv/.bd.json); total "
          f"{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
