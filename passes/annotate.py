"""annotate: one run of the graph writes every node's shape, dtype, module path and cost.

Keys written to ``node.meta`` (later passes read these instead of recomputing):

- ``tensor_meta``: ``TensorMetadata`` (or a nested tuple of them) as ``ShapeProp`` writes it;
- ``module_path``: dotted path of the innermost module that produced the node (``""`` at root);
- ``flops``: FLOPs of this node, by ``torch.utils.flop_counter`` (MACs = FLOPs / 2);
- ``weights``: names of the parameters and buffers the node reads.

and to ``graph_module.meta["weights"]``: ``{name: (numel, dtype)}`` for every weight read.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
from torch.fx.node import map_aggregate
from torch.fx.passes.infra.pass_base import PassBase, PassResult
from torch.fx.passes.shape_prop import TensorMetadata, _extract_tensor_metadata
from torch.utils.flop_counter import FlopCounterMode

from passes._attention_flops import register_attention_flops

__all__ = ["Annotate", "AnnotatePass", "module_path", "is_tensor_node"]


def module_path(node: fx.Node) -> str:
    """The innermost module path that produced ``node`` (``""`` for top-level code)."""
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return _clean_path(path)


def _clean_path(path: str) -> str:
    # torch.export writes paths like "L['self'].layer1" or "L__self___layer1"; FX writes "layer1".
    for prefix in ("L['self'].", "L__self__.", "self."):
        if path.startswith(prefix):
            path = path[len(prefix):]
    return path


def is_tensor_node(node: fx.Node) -> bool:
    """True when the node's value (as annotated) is a single tensor."""
    return isinstance(node.meta.get("tensor_meta"), TensorMetadata)


class Annotate(fx.Interpreter):
    """Interpreter that records shapes, module paths, FLOPs and weights while it runs."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm, garbage_collect_values=True)
        register_attention_flops()
        self._weights: dict[str, tuple[int, torch.dtype]] = {}
        self._named = dict(gm.named_parameters(remove_duplicate=False))
        self._named.update(dict(gm.named_buffers(remove_duplicate=False)))

    def run(self, *args: Any, **kwargs: Any) -> Any:
        out = super().run(*args, **kwargs)
        self.module.meta["weights"] = dict(self._weights)
        return out

    def run_node(self, n: fx.Node) -> Any:
        with FlopCounterMode(display=False) as counter:
            result = super().run_node(n)
        n.meta["flops"] = int(counter.get_total_flops())
        n.meta["module_path"] = module_path(n)
        n.meta["weights"] = self._weights_of(n)

        found = False

        def extract(obj: Any) -> Any:
            nonlocal found
            if isinstance(obj, torch.Tensor):
                found = True
                return _extract_tensor_metadata(obj)
            return obj

        meta = map_aggregate(result, extract)
        if found:
            n.meta["tensor_meta"] = meta
        else:
            n.meta.pop("tensor_meta", None)
        n.meta["type"] = type(result)
        return result

    def _weights_of(self, n: fx.Node) -> tuple[str, ...]:
        names: list[str] = []
        if n.op == "call_module":
            prefix = f"{n.target}."
            names = [k for k in self._named if k.startswith(prefix)]
        elif n.op == "get_attr" and str(n.target) in self._named:
            names = [str(n.target)]
        for k in names:
            t = self._named[k]
            self._weights[k] = (t.numel(), t.dtype)
        return tuple(names)


class AnnotatePass(PassBase):
    """PassBase wrapper: ``AnnotatePass(example)(gm)`` annotates ``gm`` in place."""

    def __init__(self, *example_inputs: torch.Tensor):
        self.example_inputs = example_inputs

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        with torch.no_grad():
            Annotate(graph_module).run(*self.example_inputs)
        return PassResult(graph_module, False)

    def ensures(self, graph_module: fx.GraphModule) -> None:
        for n in graph_module.graph.nodes:
            if n.op not in ("output",) and "flops" not in n.meta:
                raise RuntimeError(f"annotate left node {n.name} without costs")


def annotate_node(graph_module: fx.GraphModule, node: fx.Node, env: dict[fx.Node, Any]) -> Any:
    """Run one node on the given input values and write its meta, as a full run would.

    Lets a pass that adds a few nodes (the bottleneck's encode/decode) annotate just those
    instead of re-running the whole model.
    """
    interp = Annotate(graph_module)
    interp.env = dict(env)
    with torch.no_grad():
        out = interp.run_node(node)
    graph_module.meta.setdefault("weights", {}).update(interp._weights)
    return out
