"""partition: cut an annotated graph into a head and a tail GraphModule at a cut point.

::

    x ──► [ nodes 0..i ] ──► wire (one tensor, or a tuple of every live tensor)
    wire ──► [ nodes i+1..end ] ──► model output

Constants (weights and input-independent nodes, see :mod:`passes.cuts`) are recomputed on
whichever side reads them, so only activations cross. Python values live across the cut
(``cut.scalars``) are re-created in the tail: a batch-independent one as its traced value,
behind a check that the wire has its traced per-sample shape; a batch-dependent one as
``wire[k].shape[d]``. The tail takes one argument, the
head's output as it is, so ``tail(head(x)) == model(x)`` holds for multi-tensor cuts too.

Written by hand rather than with ``torch.fx.passes.split_module`` because that sends
input-independent values across the cut and names the wire by its own scheme; here the
wire is exactly the cut point's tensor list.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from passes.cuts import CutPoint, constant_nodes

__all__ = ["partition", "PartitionPass"]


def _copy_meta(src: fx.Node, dst: fx.Node) -> None:
    dst.meta.update(src.meta)


@torch.fx.wrap
def _expect_shape(t: torch.Tensor, shape: tuple[int, ...], name: str) -> torch.Tensor:
    """``t`` unchanged, after checking it has ``shape`` (``-1``: any size, the batch's dims).

    Guards a tail that holds traced shape values: another per-sample shape would run with
    stale sizes, so it fails here, by name, instead of somewhere (or nowhere) downstream.
    """
    if t.dim() != len(shape) or any(n != -1 and t.shape[d] != n for d, n in enumerate(shape)):
        want = ", ".join("B" if n == -1 else str(n) for n in shape)
        raise ValueError(
            f"wire tensor {name!r} has shape {tuple(t.shape)}, but this tail was traced for "
            f"({want}); feed inputs of the traced per-sample shape or trace again with that "
            f"input_shape."
        )
    return t


def partition(gm: fx.GraphModule, cut: CutPoint) -> tuple[fx.GraphModule, fx.GraphModule]:
    """``(head, tail)`` with ``tail(head(x))`` computing exactly what ``gm(x)`` computes."""
    nodes = list(gm.graph.nodes)
    consts = constant_nodes(gm)
    wire = [t.name for t in cut.tensors]
    i = cut.index

    # Head: everything up to the cut, returning the wire.
    head = fx.Graph()
    env: dict[str, fx.Node] = {}
    for k, n in enumerate(nodes):
        if n.op == "output" or (k > i and n.op != "placeholder"):
            continue
        env[n.name] = head.node_copy(n, lambda a: env[a.name])  # node_copy keeps meta
    outs = [env[w] for w in wire]
    head.output(outs[0] if len(outs) == 1 else tuple(outs))

    # Tail: the wire as its one input, constants recomputed, everything after the cut.
    tail = fx.Graph()
    tenv: dict[str, fx.Node] = {}
    if len(wire) == 1:
        tenv[wire[0]] = tail.placeholder(wire[0])
        _copy_meta(_node(nodes, wire[0]), tenv[wire[0]])
    else:
        packed = tail.placeholder("wire")
        for k, w in enumerate(wire):
            tenv[w] = tail.call_function(operator.getitem, (packed, k))
            _copy_meta(_node(nodes, w), tenv[w])
    if cut.fixed_shape:  # check every dimension that does not follow the batch size
        for t in cut.tensors:
            node = _node(nodes, t.name)
            probe = node.meta.get("probe") or ()
            traced = tuple(int(d) for d in node.meta["tensor_meta"].shape)  # batch included
            # A dimension that changed in the batch probe follows the batch size: left free.
            want = tuple(n if d < len(probe) and probe[d] == n else -1 for d, n in enumerate(traced))
            src = tenv[t.name]
            tenv[t.name] = tail.call_function(_expect_shape, (src, want, t.name))
            _copy_meta(src, tenv[t.name])
    for s in cut.scalars:
        if s.how == "const":
            tenv[s.name] = s.value  # node_copy below writes it into the code as a literal
        else:
            k, d = s.value
            tenv[s.name] = tail.call_method("size", (tenv[wire[k]], d))
            _copy_meta(_node(nodes, s.name), tenv[s.name])
    for k, n in enumerate(nodes):
        if n.name in tenv or (n.op == "placeholder" and n.name not in consts):
            continue
        if k > i or n.name in consts:
            tenv[n.name] = tail.node_copy(n, lambda a: tenv[a.name])

    return _module(gm, head, "Head"), _module(gm, tail, "Tail")


def _module(root: fx.GraphModule, graph: fx.Graph, name: str) -> fx.GraphModule:
    """GraphModule holding only the weights and submodules ``graph`` reads after DCE."""
    draft = fx.GraphModule(root, graph, name)  # DCE's purity checks need an owning module
    draft.graph.eliminate_dead_code()  # drops constants this side does not read
    gm = fx.GraphModule(root, draft.graph, name)  # copies only what is still referenced
    gm.meta.update(root.meta)
    return gm


def _node(nodes: list[fx.Node], name: str) -> fx.Node:
    for n in nodes:
        if n.name == name:
            return n
    raise KeyError(name)


class PartitionPass(PassBase):
    """PassBase form: ``PartitionPass(cut)(gm).graph_module`` is the head; ``.tail`` holds the tail."""

    def __init__(self, cut: CutPoint):
        self.cut = cut
        self.tail: fx.GraphModule | None = None

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        head, self.tail = partition(graph_module, self.cut)
        return PassResult(head, True)
