"""Build a bottlenecked :class:`~splitter.compile.split.Split`: validate options, create the
bottleneck, run the insert pass, re-annotate, partition at the symbols."""

from __future__ import annotations

import torch
import torch.fx as fx
from torch import nn

import bottlenecks
from bottlenecks.base import Bottleneck, infer_layout
from bottlenecks.spec import BottleneckSpec
from passes.annotate import AnnotatePass, annotate_node
from passes.cuts import CutPoint, find_cut_points
from passes.insert import InsertBottleneck, inserted
from passes.partition import partition
from splitter.compile.trace import Graph
from splitter.errors import BottleneckError, CutError, closest

__all__ = ["build_bottleneck_split"]


def _identity_graph(example: torch.Tensor) -> fx.GraphModule:
    """``x -> x`` as a GraphModule: the device-side layers before a replacing encoder."""
    g = fx.Graph()
    x = g.placeholder("x")
    g.output(x)
    gm = fx.GraphModule(nn.Module(), g, "Pre")
    AnnotatePass(example)(gm)
    return gm


def _probe_new_nodes(bn: Bottleneck, enc: fx.Node, dec: fx.Node) -> None:
    """Give encode/decode the ``probe`` meta (their shapes at the batch-probe size) that
    :mod:`passes.cuts` reads to re-create batch-sized Python values from the wire."""
    probe = enc.args[0].meta.get("probe")
    if not (isinstance(probe, tuple) and all(isinstance(d, int) for d in probe)):
        return
    with torch.no_grad():
        symbols = bn.encode(torch.zeros(probe))
        enc.meta["probe"] = tuple(int(d) for d in symbols.shape)
        dec.meta["probe"] = tuple(int(d) for d in bn.decode(symbols).shape)


def _single_tensor_cuts(graph: Graph) -> list[CutPoint]:
    """Cuts inside the model where exactly one tensor crosses (where a bottleneck can go)."""
    return [c for c in graph.cut_points() if c.single and c.name not in ("input", "output")]


def _single_tensor_names(graph: Graph) -> list[str]:
    return [c.name for c in _single_tensor_cuts(graph)]


def _check_cut(graph: Graph, cut: CutPoint) -> None:
    if cut.name in ("input", "output"):
        raise CutError(f"a bottleneck needs a cut inside the model, not {cut.name!r}; try one of "
                       f"{closest(cut.name, _single_tensor_names(graph), 5)}")
    if not cut.single:
        near = sorted(_single_tensor_cuts(graph), key=lambda c: abs(c.index - cut.index))[:5]
        raise CutError(
            f"a bottleneck needs a single-tensor cut; {cut.name!r} sends {len(cut.tensors)} tensors "
            f"({', '.join(t.name for t in cut.tensors)}). The nearest single-tensor cuts are "
            f"{[c.name for c in near]}."
        )


def _create(graph: Graph, cut: CutPoint, spec: BottleneckSpec, layout: str) -> Bottleneck:
    """The kind's module for this cut, from a validated spec."""
    cut_shape = cut.tensors[0].shape
    channels = spec.options.get("channels")
    c_at_cut = cut_shape[-1] if layout in ("nhwc", "nlc") else cut_shape[0]
    if channels is not None and spec.kind != "identity" and channels > c_at_cut:
        raise BottleneckError(
            f"channels={channels} is larger than the {c_at_cut} channels at {cut.name!r}; "
            f"use at most {c_at_cut} (a bottleneck should shrink the tensor)."
        )
    options = {k: v for k, v in spec.options.items() if k != "layout"}
    try:
        if spec.mode == "replace":
            return bottlenecks.create(spec.kind, in_shape=tuple(graph.input_shape), layout=layout,
                                      out_shape=cut_shape, mode="replace", **options)
        return bottlenecks.create(spec.kind, in_shape=cut_shape, layout=layout, **options)
    except (ValueError, TypeError) as e:
        if isinstance(e, BottleneckError):
            raise
        raise BottleneckError(f"{spec.kind} bottleneck at {cut.name!r} ({cut_shape}, "
                              f"{layout}): {e}") from e


def build_bottleneck_split(graph: Graph, cut: CutPoint, bottleneck: BottleneckSpec | Bottleneck,
                           *, mode: str = "insert"):
    """A :class:`~splitter.compile.split.Split` with ``bottleneck`` (a validated spec, or a
    ready module placed in ``mode``) at ``cut``."""
    from splitter.compile.split import Split

    _check_cut(graph, cut)
    cut_shape = cut.tensors[0].shape
    if isinstance(bottleneck, BottleneckSpec):
        spec = bottleneck
        try:
            layout = spec.options.get("layout") or infer_layout(cut_shape)
        except ValueError as e:
            raise BottleneckError(f"no bottleneck fits {cut.name!r}: {e}. Pick a cut with a feature "
                                  f"map or token sequence, e.g. {_single_tensor_names(graph)[:5]}") from e
        bn = _create(graph, cut, spec, layout)
    elif isinstance(bottleneck, Bottleneck):
        bn = bottleneck
        spec = None
        layout = bn.layout
    else:
        raise BottleneckError(f"bottleneck= takes a kind name, a BottleneckSpec or a Bottleneck "
                              f"module, not {type(bottleneck).__name__}")
    mode = spec.mode if spec is not None else mode
    bn.eval()

    if mode == "insert":
        pre, post = partition(graph.gm, cut)
    else:
        pre, post = _identity_graph(graph.example_input), partition(graph.gm, cut)[1]

    # on the tensor that crosses the cut: usually the cut node's output, but not always
    # (PiT's stage returns (x, cls); its cut node x is dead and the cls token crosses)
    gm = InsertBottleneck(bn, cut.tensors[0].name, mode)(graph.gm).graph_module
    # Every other node keeps the meta it had; only the two new nodes are run and annotated.
    enc, dec = inserted(gm)
    with torch.no_grad():
        source = pre(graph.example_input)
    symbols = annotate_node(gm, enc, {enc.args[0]: source})
    annotate_node(gm, dec, {enc: symbols})
    _probe_new_nodes(bn, enc, dec)
    sym_cut = next((c for c in find_cut_points(gm) if c.node == enc.name), None)
    if sym_cut is None or not sym_cut.single:
        raise CutError(f"after inserting the bottleneck at {cut.name!r} the symbols are not the "
                       f"only tensor crossing; pick a single-tensor cut")
    head, tail = partition(gm, sym_cut)
    s = Split(graph, cut, head, tail, pre=pre, post=post, bottleneck=bn, mode=mode, spec=spec,
              layout=layout)
    s.symbols_cut = sym_cut
    return s
