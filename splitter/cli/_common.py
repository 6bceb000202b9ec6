"""Arguments every model-taking command shares, and small terminal helpers.

::

    MODEL [--pretrained] [--checkpoint FILE] [--input-size C,H,W] [--model-args k=v,...]
        ─► trace_from_args ─► splitter.compile.trace.trace(model, shape, model_args=...)
"""

from __future__ import annotations

import argparse
from typing import Any

from splitter._text import table
from splitter.errors import SplitterError

STAGES_HELP = ("the model's stages and the ends: timm feature_info modules (nested ones "
               "included), else the top-level children whose output is a single tensor "
               "(Graph.stages)")
MODEL_ARGS_HELP = ("arguments of the model's factory / timm.create_model, e.g. "
                   "num_classes=10,weights=None (values: int, float, true/false, None, or text; "
                   "repeatable)")


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="timm model name (resnet50) or import path package.module:factory")
    p.add_argument("--pretrained", action="store_true", help="load timm's pretrained weights (needs the network)")
    p.add_argument("--checkpoint", metavar="FILE", help="state dict (.safetensors or .pt) to load")
    p.add_argument("--input-size", metavar="C,H,W", type=parse_shape, default=None,
                   help="one sample's input shape, e.g. 3,224,224 (default: the model's own)")
    add_model_args_option(p)


def add_model_args_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-args", metavar="K=V[,K=V]", type=parse_model_args, action="append",
                   default=[], help=MODEL_ARGS_HELP)


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected C,H,W such as 3,224,224, got {text!r}") from e
    if not shape or any(v <= 0 for v in shape):
        raise argparse.ArgumentTypeError(f"expected positive sizes such as 3,224,224, got {text!r}")
    return shape


def parse_value(text: str) -> Any:
    """``"10"`` -> 10, ``"0.5"`` -> 0.5, ``"true"``/``"false"`` -> bool, ``"None"`` -> None,
    anything else stays text."""
    low = text.strip().lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_model_args(text: str) -> dict[str, Any]:
    """``"k=v,k2=v2"`` -> ``{"k": v, "k2": v2}`` with :func:`parse_value` values."""
    out: dict[str, Any] = {}
    for item in (t for t in text.split(",") if t.strip()):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise argparse.ArgumentTypeError(
                f"expected KEY=VALUE[,KEY=VALUE] such as num_classes=10,weights=None, got {text!r}")
        out[key] = parse_value(value.strip())
    if not out:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE[,KEY=VALUE], got {text!r}")
    return out


def model_args(args: argparse.Namespace) -> dict[str, Any]:
    """The merged ``--model-args`` of a command (later ones win)."""
    merged: dict[str, Any] = {}
    for d in getattr(args, "model_args", None) or []:
        merged.update(d)
    return merged


def trace_from_args(args: argparse.Namespace):
    from splitter.compile.trace import trace

    return trace(args.model, args.input_size, pretrained=args.pretrained, checkpoint=args.checkpoint,
                 model_args=model_args(args))


__all__ = ["STAGES_HELP", "add_model_args", "add_model_args_option", "parse_shape", "parse_value",
           "parse_model_args", "model_args", "trace_from_args", "table", "SplitterError"]
