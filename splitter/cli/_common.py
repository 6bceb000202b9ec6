"""Arguments every model-taking command shares, and small terminal helpers."""

from __future__ import annotations

import argparse

from splitter._text import table
from splitter.errors import SplitterError


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="timm model name (resnet50) or import path package.module:factory")
    p.add_argument("--pretrained", action="store_true", help="load timm's pretrained weights (needs the network)")
    p.add_argument("--checkpoint", metavar="FILE", help="state dict (.safetensors or .pt) to load")
    p.add_argument("--input-size", metavar="C,H,W", type=parse_shape, default=None,
                   help="one sample's input shape, e.g. 3,224,224 (default: the model's own)")


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected C,H,W such as 3,224,224, got {text!r}") from e
    if not shape or any(v <= 0 for v in shape):
        raise argparse.ArgumentTypeError(f"expected positive sizes such as 3,224,224, got {text!r}")
    return shape


def trace_from_args(args: argparse.Namespace):
    from splitter.compile.trace import trace

    return trace(args.model, args.input_size, pretrained=args.pretrained, checkpoint=args.checkpoint)


__all__ = ["add_model_args", "parse_shape", "trace_from_args", "table", "SplitterError"]
