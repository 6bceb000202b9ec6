"""``splitter fit CONFIG.yaml``: distil a bottleneck as the config says, then measure it."""

from __future__ import annotations

import argparse
import os

from splitter.cli._common import model_args, parse_model_args

HELP = "fit (distil) a bottleneck from a YAML config; resumable, torchrun-aware"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config (see examples/digits_entropy.yaml)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint in the config's output_dir")
    p.add_argument("--max-steps", type=int, default=None, metavar="N",
                   help="stop after N optimizer steps (a checkpoint is written; --resume continues)")
    p.add_argument("--output-dir", default=None, help="override the config's output_dir")
    p.add_argument("--device", default=None, help="override the config's device (cpu, cuda, auto)")
    p.add_argument("--model-args", metavar="K=V[,K=V]", type=parse_model_args, action="append",
                   default=[], help="override or add to the config's model_args, e.g. num_classes=10")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-eval", action="store_true", help="skip measuring real payloads at the end")


def run(args: argparse.Namespace) -> int:
    import torch

    from splitter.explore.evaluate import evaluate_payloads
    from splitter.train.config import load_config, run_config

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cfg = load_config(args.config)
    if args.output_dir:
        cfg.output_dir = args.output_dir
    if args.device:
        cfg.device = args.device
    if args.model_args:
        cfg.model_args = {**cfg.model_args, **model_args(args)}
    with open(args.config) as f:
        text = f.read()
    if args.model_args:  # the saved config.yaml must rebuild this model: write the merged one
        text = None
    split, report, _, test = run_config(cfg, resume=args.resume, max_steps=args.max_steps,
                                        progress=not args.no_progress, config_text=text)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    if report.stopped_at is not None:
        again = f"splitter fit {args.config} --resume" + (
            f" --output-dir {cfg.output_dir}" if args.output_dir else "")
        print(f"stopped at step {report.stopped_at}; the checkpoint is in {cfg.output_dir}; "
              f"continue with: {again}")
        return 0
    print(f"fitted {cfg.bottleneck.kind} at {cfg.cut}: weights in "
          f"{os.path.join(cfg.output_dir, 'split.safetensors')}")
    if test is not None and not args.no_eval:
        row = evaluate_payloads(split, test)
        print(f"test: top-1 {100 * row.accuracy:.2f} %, {row.bytes_mean:.1f} bytes/sample "
              f"(real payloads, header included; {row.bytes_min}-{row.bytes_max})")
    return 0
