"""``splitter points MODEL``: the cut points of a model as a table."""

from __future__ import annotations

import argparse

from splitter.cli._common import add_model_args, table, trace_from_args

HELP = "list every place a model can be cut, with the tensors that cross it"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--stages", action="store_true", help="only the timm feature_info stage outputs and the ends")


def run(args: argparse.Namespace) -> int:
    g = trace_from_args(args)
    cuts = g.cut_points()
    if args.stages:
        keep = {"input", "output", *g.stage_names()}
        cuts = [c for c in cuts if c.name in keep]
    rows = []
    for c in cuts:
        shapes = " + ".join("x".join(map(str, t.shape[1:])) for t in c.tensors)
        rows.append([c.name, shapes, str(len(c.tensors)), f"{c.nbytes / 1024:,.1f}"])
    print(f"{g.name}: {len(cuts)} cut points, input {(1, *g.input_shape)}, traced by {g.frontend}")
    print(table(rows, ["name", "shape (per sample)", "tensors", "KB"]))
    return 0
