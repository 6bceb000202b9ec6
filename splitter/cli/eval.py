"""``splitter eval TARGET --data digits|DIR``: accuracy and real payload bytes, against the
teacher on JPEG / WebP inputs.

TARGET is a bundle directory (``manifest.json``), a fit output directory (``config.yaml`` +
``split.safetensors``), a fit config (``.yaml``) whose output_dir holds the weights, or a
model (timm name / import path; teacher and input-codec rows only).
"""

from __future__ import annotations

import argparse
import os

from splitter.cli._common import add_model_args_option, model_args, parse_shape
from splitter.errors import InputShapeError, SplitterError

HELP = "measure accuracy and bytes per sample from real payloads, vs JPEG/WebP inputs"


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="MODEL_OR_BUNDLE",
                   help="bundle dir, fit output dir, fit config .yaml, or a model name")
    p.add_argument("--data", default="digits", help="'digits' (its test split) or an image folder")
    p.add_argument("--teacher", default=None,
                   help="model for the teacher / JPEG / WebP rows (default: the fit's model)")
    p.add_argument("--checkpoint", default=None, help="teacher weights (.safetensors or .pt)")
    p.add_argument("--num-classes", type=int, default=None, help="classes of the teacher's head")
    p.add_argument("--input-size", type=parse_shape, default=None, metavar="C,H,W")
    add_model_args_option(p)
    p.add_argument("--qualities", type=_ints, default=None, metavar="Q,Q,...",
                   help="JPEG / WebP qualities (default 1,5,10,20,30,50,75,90)")
    p.add_argument("--codecs", default="jpeg,webp", help="input codecs to compare, or 'none'")
    p.add_argument("--limit", type=int, default=None, help="only the first N samples")
    p.add_argument("--json", default=None, metavar="FILE", help="write the report as JSON")


def _teacher(args, name: str | None, checkpoint: str | None, margs: dict):
    from splitter.compile.trace import load_model

    if name is None:
        return None
    kw = dict(margs)
    if args.num_classes is not None:
        kw["num_classes"] = args.num_classes
    return load_model(name, checkpoint=checkpoint, **kw)[0].eval()


def run(args: argparse.Namespace) -> int:
    import torch

    from splitter.explore.evaluate import QUALITIES, evaluate
    from splitter.train.config import build, load_config
    from splitter.train.data import as_dataset

    torch.set_num_threads(1)
    target, teacher, shape, label = None, None, args.input_size, args.target
    if shape is not None and len(shape) != 3:
        raise InputShapeError(f"--input-size {','.join(map(str, shape))} has {len(shape)} dims; "
                              f"images are C,H,W (channels, height, width), e.g. 3,224,224")
    margs = model_args(args)
    path = args.target
    if os.path.isdir(path) and any(os.path.exists(os.path.join(path, *sub, "manifest.json"))
                                   for sub in ((), ("server",))):  # an export dir, or one half
        from splitter.deploy.runtime import load_bundle

        target = load_bundle(path)
        shape = shape or tuple(target.manifest.input.shape)
        teacher = _teacher(args, args.teacher, args.checkpoint, margs)
        label = f"bundle {path}"
    elif (os.path.isdir(path) and os.path.exists(os.path.join(path, "config.yaml"))) \
            or path.endswith((".yaml", ".yml")):
        from splitter.train.checkpoint import load_split

        cfg_path = os.path.join(path, "config.yaml") if os.path.isdir(path) else path
        cfg = load_config(cfg_path)
        if os.path.isdir(path):
            cfg.output_dir = path
        fit_teacher, target, _, _ = build(cfg)
        load_split(target, os.path.join(cfg.output_dir, "split.safetensors"))
        shape = shape or tuple(target.graph.input_shape)
        teacher = (_teacher(args, args.teacher, args.checkpoint, margs) if args.teacher
                   else fit_teacher)
        label = f"{cfg.bottleneck.kind} at {cfg.cut}"
    else:
        teacher = _teacher(args, path, args.checkpoint, margs)
        if shape is None:
            from splitter.compile.trace import default_input_shape

            shape = default_input_shape(teacher)
    if teacher is None and target is None:
        raise SplitterError(f"nothing to evaluate in {path!r}")
    data = as_dataset(args.data, split="test", model=teacher, input_size=shape)
    if args.limit is not None:
        data = _limited(data, args.limit)
    codecs = () if args.codecs == "none" or teacher is None else tuple(args.codecs.split(","))
    if teacher is None and target is not None:
        print("(no --teacher given: teacher and JPEG/WebP rows skipped)")
    report = evaluate(target, data, teacher=teacher, codecs=codecs,
                      qualities=args.qualities or QUALITIES, setting=label)
    print(f"{report.data}: {report.samples} samples")
    print(report.table())
    split_rows = report.by("split")
    if split_rows and codecs:
        r = split_rows[0]
        best = report.smallest_reaching(r.accuracy)
        if best is not None:
            print(f"\nsmallest input file reaching {100 * r.accuracy:.2f} %: {best.method} "
                  f"{best.setting}, {best.bytes_mean:.1f} B = {best.bytes_mean / r.bytes_mean:.2f}x "
                  f"the payload ({r.bytes_mean:.1f} B)")
        else:
            print(f"\nno JPEG/WebP setting reaches {100 * r.accuracy:.2f} %")
    if args.json:
        with open(args.json, "w") as f:
            f.write(report.model_dump_json(indent=2))
    return 0


def _limited(data, n: int):
    """The first ``n`` samples, keeping ``raw`` / ``transform`` / ``targets`` for the baselines."""
    from splitter.train.data import SourceImages

    if not isinstance(data, SourceImages):
        from torch.utils.data import Subset

        return Subset(data, range(min(n, len(data))))
    keep = list(range(min(n, len(data))))
    sub = SourceImages(lambda i: data.raw(keep[i]), [data.targets[i] for i in keep], data.transform,
                       data.classes, name=f"{data.name}[:{n}]")
    return sub
