"""``splitter export BUNDLE --triton DIR``: write a bundle's server half for another serving engine."""

from __future__ import annotations

import argparse

HELP = "write a bundle's server half as a Triton Inference Server model repository (--triton DIR)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="directory written by `splitter split ... --out DIR` (or its server/)")
    p.add_argument("--triton", required=True, metavar="DIR",
                   help="write a Triton model repository here (ensemble + Python-backend decoder "
                        "+ onnxruntime tail)")
    p.add_argument("--name", default=None, help="the ensemble's model name (default: the bundle's model)")
    p.add_argument("--instance-kind", default=None, choices=["KIND_CPU", "KIND_GPU"],
                   help="where Triton runs the tail (default: Triton decides)")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it is not empty")


def run(args: argparse.Namespace) -> int:
    from splitter.deploy.runtime import load_bundle
    from targets.triton import write_repository

    bundle = load_bundle(args.bundle)
    out = write_repository(bundle, args.triton, name=args.name, instance_kind=args.instance_kind,
                           overwrite=args.overwrite)
    names = sorted(p.name for p in out.iterdir() if (p / "config.pbtxt").exists())
    print(f"wrote Triton model repository {out}: {', '.join(names)}")
    print(f"run: tritonserver --model-repository {out}   (the Python backend needs "
          f"`pip install sc2-splitter` in its environment)")
    return 0
