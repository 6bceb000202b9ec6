"""annotate: one run of the graph writes every node's shape, dtype, module path and cost.

::

    GraphModule + example input ─► Annotate (torch's ShapeProp + FlopCounterMode) ─► node.meta
                                ─► BatchProbe (a plain run at another batch size) ─► meta["probe"]

Keys written to ``node.meta`` (later passes read these instead of recomputing):

- ``tensor_meta``, ``type``: written by ``torch.fx.passes.shape_prop.ShapeProp`` itself
  (``TensorMetadata`` or a nested tuple of them);
- ``module_path``: dotted path of the innermost module that produced the node (``""`` at root);
- ``flops``: FLOPs of this node, by ``torch.utils.flop_counter`` (MACs = FLOPs / 2);
- ``weights``: names of the parameters and buffers the node reads;
- ``value``: the value itself, for a plain Python result (an int from a shape, a ``None``
  mask, a dtype); see :func:`plain_value`.

:class:`BatchProbe` adds ``probe``: the same node in a second run at another batch size.

and to ``graph_module.meta["weights"]``: ``{name: (numel, dtype)}`` for every weight read.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
from collections.abc import Iterator
from typing import Any

import torch
import torch.fx as fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata
from torch.utils.flop_counter import FlopCounterMode

from passes._attention_flops import register_attention_flops

__all__ = ["Annotate", "AnnotatePass", "BatchProbe", "module_path", "is_tensor_node", "plain_value",
           "held_stderr"]

log = logging.getLogger("splitter.trace")


@contextlib.contextmanager
def held_stderr(what: str) -> Iterator[None]:
    """Hold what the block writes to ``sys.stderr``: passed on when the block succeeds, sent
    to the ``splitter.trace`` logger at DEBUG when it raises.

    torch prints diagnostics to stderr before raising (``ShapeProp``'s traceback,
    ``torch.export``'s partial graph: 1,690 lines for a torchvision Faster R-CNN); the
    exception that follows says what failed, the dump is for ``splitter --verbose``.
    """
    buf = io.StringIO()
    ok = False
    try:
        with contextlib.redirect_stderr(buf):
            yield
        ok = True
    finally:
        text = buf.getvalue()
        if text and ok:
            sys.stderr.write(text)
        elif text:
            log.debug("%s failed; it wrote:\n%s", what, text)


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


def plain_value(obj: Any) -> bool:
    """True for a value FX can write into generated code as a literal (ints, None, dtypes, ...)."""
    if isinstance(obj, (tuple, list)):  # torch.Size is a tuple
        return all(plain_value(o) for o in obj)
    return obj is None or isinstance(obj, (bool, int, float, str, torch.dtype))


class Annotate(ShapeProp):
    """``ShapeProp`` that also records module paths, FLOPs, weights and plain Python values.

    ``ShapeProp.run_node`` writes ``tensor_meta`` and ``type``; this class wraps it in a
    ``FlopCounterMode`` and adds the other keys. Two things ShapeProp does are undone here:
    it keeps a stale ``tensor_meta`` on a node whose new value holds no tensor (popped first),
    and on a failing node it prints the traceback to stderr and raises a ``RuntimeError``
    carrying the whole ``node.meta``; the print goes to the ``splitter`` logger at DEBUG
    (``splitter --verbose`` shows it) and the original exception is re-raised, so callers
    see the failing op and its source line rather than the wrapper.
    """

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        register_attention_flops()
        self._weights: dict[str, tuple[int, torch.dtype]] = {}
        self._named = dict(gm.named_parameters(remove_duplicate=False))
        self._named.update(dict(gm.named_buffers(remove_duplicate=False)))

    def run(self, *args: Any, **kwargs: Any) -> Any:
        out = super().run(*args, **kwargs)
        self.module.meta["weights"] = dict(self._weights)
        return out

    def run_node(self, n: fx.Node) -> Any:
        n.meta.pop("tensor_meta", None)  # ShapeProp only writes it when the value has tensors
        with held_stderr(f"running node {n.name}"), FlopCounterMode(display=False) as counter:
            try:
                result = super().run_node(n)
            except RuntimeError as e:
                cause = e.__cause__
                if cause is None or not str(e).startswith("ShapeProp error"):
                    raise
                raise cause from None  # the op's own error and traceback, not ShapeProp's wrapper
        n.meta["flops"] = int(counter.get_total_flops())
        n.meta["module_path"] = module_path(n)
        n.meta["weights"] = self._weights_of(n)
        n.meta.pop("value", None)
        if "tensor_meta" not in n.meta and plain_value(result):
            n.meta["value"] = result  # lets a tail re-create it instead of receiving it
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


class BatchProbe(fx.Interpreter):
    """Run the graph again at another batch size and write ``meta["probe"]``.

    ``probe`` is the shape of a tensor node, or the value of a plain Python node (see
    :func:`plain_value`), at the probe's batch size. :mod:`passes.cuts` compares it with the
    annotated value to tell a Python value that follows the batch size (``B = x.shape[0]``)
    from one that does not (``H = x.shape[2]``, a ``None`` mask).

    A plain forward run, without cost counting: on small inputs it is far cheaper than a
    ``FakeTensorMode`` run (whose Python dispatch costs ~1 ms per node). That a Python value
    depends on shapes alone, not on data, is checked on the graph by :mod:`passes.cuts`.
    When the run fails no node gets ``probe``. Not a ``ShapeProp``: that would overwrite the
    annotated ``tensor_meta`` with the probe's shapes.
    """

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm, garbage_collect_values=True)

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if isinstance(result, torch.Tensor):
            n.meta["probe"] = tuple(int(d) for d in result.shape)
        elif plain_value(result):
            n.meta["probe"] = result
        return result

    def probe(self, example: torch.Tensor) -> bool:
        """Run on ``example`` (another batch size than annotated); False when it fails."""
        for n in self.module.graph.nodes:
            n.meta.pop("probe", None)
        try:
            with torch.no_grad():
                self.run(example)
        except Exception:  # noqa: BLE001 - a graph the probe cannot run just gets no probe
            for n in self.module.graph.nodes:
                n.meta.pop("probe", None)
            return False
        return True


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
