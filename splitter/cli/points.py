"""``splitter points MODEL``: the cut points of a model as a table."""

from __future__ import annotations

import argparse

from splitter.cli._common import STAGES_HELP, add_model_args, table, trace_from_args

HELP = "list every place a model can be cut, with the tensors that cross it"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--stages", action="store_true", help=STAGES_HELP)


def run(args: argparse.Namespace) -> int:
    g = trace_from_args(args)
    cuts = g.cut_points()
    if args.stages:
        cuts = [cuts[0], *g.stages(), cuts[-1]]
    rows = []
    for c in cuts:
        shapes = " + ".join("x".join(map(str, t.shape)) for t in c.tensors)
        rows.append([c.name, shapes, str(len(c.tensors)), f"{c.nbytes / 1024:,.1f}"])
    what = "stages and ends" if args.stages else "cut points"
    print(f"{g.name}: {len(cuts)} {what}, input {(1, *g.input_shape)}, traced by {g.frontend}")
    print(table(rows, ["name", "shape (per sample)", "tensors", "KB"]))
    return 0
