"""costs: what a split costs the device, the link and the server, per sample.

::

    x ─► [ head: nodes ≤ i (+ bottleneck.encode) ] ─► payload bytes ─► [ tail: (decode +) nodes > i ]
         encoder params / bits / MACs                  cut / payload       tail params / MACs

Encoder size is the SC2 paper's Eq. 1: Σ over every head parameter and buffer of
``numel × bits(dtype)`` (fp32 32, fp16/bf16 16, int8/uint8 8, bool 1, int32 32, int64 64);
an entropy model's coder tables are counted apart, in ``table_bits``. MACs are
``torch.utils.flop_counter`` FLOPs / 2 (the counter counts a multiply-add as two FLOPs and
only counts matmul-like ops: convolutions, linear layers, attention).

Nothing here runs the model. :mod:`passes.annotate` already wrote every node's FLOPs and the
weights it reads in one run; :class:`CostTable` turns that into prefix sums once per graph,
so the cost of any cut is O(1):

- head FLOPs(i)  = Σ FLOPs of nodes at positions ≤ i;
- head params(i) = Σ weights whose *first* use is ≤ i;
- tail params(i) = Σ weights whose *last* use is > i (a weight read on both sides counts twice,
  once per machine that must hold it).

Input-independent nodes (``get_attr`` weights, tables computed from them) are recomputed by
whichever side reads them (see :mod:`passes.partition`), so they are charged at the positions
of the nodes that consume them.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import torch
import torch.fx as fx
from pydantic import BaseModel
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from passes._attention_flops import register_attention_flops
from passes.cuts import CutPoint, constant_nodes
from splitter.errors import SplitterError
from splitter.tensors import TensorSpec

__all__ = ["CostReport", "TensorSpec", "CostTable", "SideCost", "cost_report", "report_at",
           "cost_table", "dtype_bits", "bottleneck_costs", "BottleneckCost", "measure_payload"]


def dtype_bits(dtype: torch.dtype) -> int:
    """Bits one element of ``dtype`` takes in the encoder-size count (``bool`` is one bit)."""
    if dtype == torch.bool:
        return 1
    return int(dtype.itemsize) * 8


class CostReport(BaseModel):
    """What one split costs, per sample. MACs = FLOPs / 2; bits by dtype (Eq. 1 of SC2).

    ``payload_bytes`` is the mean measured size of ``split.encode(x)`` per sample when inputs
    were given (``payload_measured``); otherwise the raw size of what crosses: ``cut_bytes``
    for a plain split, the symbols' raw size (``symbol_bytes``) for a bottlenecked one.
    """

    cut: str
    cut_index: int
    mode: str = "plain"
    bottleneck: str | None = None
    tensors: list[TensorSpec]
    encoder_params: int
    encoder_bits: int
    table_bits: int = 0
    encoder_macs: int
    encoder_flops: int
    tail_params: int
    tail_macs: int
    tail_flops: int
    cut_bytes: int
    symbol_bytes: int | None = None
    payload_bytes: float
    payload_measured: bool = False

    @property
    def encoder_mb(self) -> float:
        """Encoder size in megabytes (tables excluded)."""
        return self.encoder_bits / 8 / 1e6


@dataclass(frozen=True)
class SideCost:
    """Params, bits (by dtype) and FLOPs of one side of a cut, for the traced batch."""

    params: int  # parameters only (what ``numel(module.parameters())`` counts)
    bits: int  # parameters and buffers
    flops: int


class _Items:
    """Costs charged to ``[first, last]`` use positions; O(1) head/tail sums after ``freeze``.

    head(i) = Σ costs with first ≤ i, tail(i) = Σ costs with last > i.
    """

    def __init__(self, n: int, width: int):
        self.n, self.width = n, width
        self._first = [[0] * n for _ in range(width)]
        self._last = [[0] * n for _ in range(width)]

    def add(self, first: int, last: int, costs: tuple[int, ...]) -> None:
        for k, c in enumerate(costs):
            self._first[k][first] += c
            self._last[k][last] += c

    def freeze(self) -> None:
        self._head = [list(accumulate(col)) for col in self._first]
        # _tail[k][i] = Σ_{b > i} col[b]
        self._tail = [list(accumulate(reversed(col)))[::-1][1:] + [0] for col in self._last]

    def head(self, i: int) -> tuple[int, ...]:
        return tuple(col[i] for col in self._head)

    def tail(self, i: int) -> tuple[int, ...]:
        return tuple(col[i] for col in self._tail)


class CostTable:
    """Prefix sums of an annotated graph's per-node costs: any cut's head/tail in O(1).

    Built once per graph from ``node.meta["flops"]`` and ``node.meta["weights"]`` (written by
    :mod:`passes.annotate`) and the graph's current parameter tensors (for numel and dtype, so
    a model cast to fp16 after tracing is counted at 16 bits). FLOPs are for the traced batch;
    ``batch`` divides them to per-sample figures in :func:`cost_report`.
    """

    def __init__(self, gm: fx.GraphModule):
        nodes = list(gm.graph.nodes)
        missing = [n.name for n in nodes if n.op != "output" and "flops" not in n.meta]
        if missing:
            raise SplitterError(f"graph nodes {missing[:3]} carry no costs; trace the model with "
                                f"splitter.trace (which runs passes.annotate) before costing it")
        self.n = len(nodes)
        pos = {n: i for i, n in enumerate(nodes)}
        consts = constant_nodes(gm)

        # [first, last] positions where each node's work is done. A computing node works at its
        # own position; a constant is recomputed next to every consumer, so it spans them.
        first: dict[fx.Node, int] = {}
        last: dict[fx.Node, int] = {}
        for n in reversed(nodes):
            if n.op == "output" or n.name not in consts:
                first[n] = last[n] = pos[n]
                continue
            users = [u for u in n.users if u in first]
            if users:  # constants read by nobody are dead code on both sides
                first[n] = min(first[u] for u in users)
                last[n] = max(last[u] for u in users)

        # Weights by tensor identity: tied weights count once per side, like named_parameters().
        tensors = dict(gm.named_parameters(remove_duplicate=False))
        is_param = {id(t) for t in tensors.values()}
        tensors.update(dict(gm.named_buffers(remove_duplicate=False)))
        span: dict[int, list[Any]] = {}  # id -> [first, last, tensor]
        for n in nodes:
            if n not in first:
                continue
            for w in n.meta.get("weights", ()):
                t = tensors.get(w)
                if t is None:
                    continue
                s = span.setdefault(id(t), [first[n], last[n], t])
                s[0], s[1] = min(s[0], first[n]), max(s[1], last[n])

        items = _Items(self.n, 3)  # (params, bits, flops)
        for n in nodes:
            if n in first and n.meta.get("flops"):
                items.add(first[n], last[n], (0, 0, int(n.meta["flops"])))
        for key, (a, b, t) in span.items():
            items.add(a, b, (t.numel() if key in is_param else 0, t.numel() * dtype_bits(t.dtype), 0))
        items.freeze()
        self._items = items
        self.total = SideCost(*items.head(self.n - 1))

    def head(self, index: int) -> SideCost:
        """Costs of the nodes at positions ≤ ``index`` (a :class:`CutPoint`'s ``index``)."""
        return SideCost(*self._items.head(index))

    def tail(self, index: int) -> SideCost:
        """Costs of the nodes after ``index``, constants they read included."""
        return SideCost(*self._items.tail(index))


_TABLES: weakref.WeakKeyDictionary[fx.GraphModule, tuple[tuple, CostTable]] = weakref.WeakKeyDictionary()


def cost_table(gm: fx.GraphModule) -> CostTable:
    """The graph's :class:`CostTable`, built on first use and kept while the graph lives.

    Rebuilt if a weight's dtype changed since (e.g. ``gm.half()`` after tracing).
    """
    key = tuple(str(t.dtype) for t in gm.state_dict(keep_vars=True).values())
    hit = _TABLES.get(gm)
    if hit is None or hit[0] != key:
        hit = (key, CostTable(gm))
        _TABLES[gm] = hit
    return hit[1]


@dataclass(frozen=True)
class BottleneckCost:
    """A bottleneck's own costs for one sample at its input shape."""

    encoder_params: int
    encoder_bits: int
    table_bits: int
    encoder_flops: int
    decoder_params: int
    decoder_flops: int
    symbol_bytes: int


def _unique(tensors: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    seen: dict[int, torch.Tensor] = {}
    for t in tensors:
        seen.setdefault(id(t), t)
    return list(seen.values())


_BN_CACHE: weakref.WeakKeyDictionary[nn.Module, BottleneckCost] = weakref.WeakKeyDictionary()


def bottleneck_costs(bn: nn.Module) -> BottleneckCost:
    """Count a bottleneck once: its encoder/table tensors and one ``encode``/``decode`` run.

    FLOPs come from ``FlopCounterMode`` on ``encode`` of one zero sample of ``bn.in_shape``
    (FLOPs do not depend on values). Decoder params are the bottleneck's parameters that are
    neither encoder tensors nor coder tables (e.g. the synthesis transform). A codec kind that
    runs outside torch (JPEG/WebP) shows zero encoder FLOPs.
    """
    if bn in _BN_CACHE:
        return _BN_CACHE[bn]
    register_attention_flops()
    enc = _unique(bn.encoder_tensors().values())
    tables = _unique(bn.table_tensors().values())
    taken = {id(t) for t in enc} | {id(t) for t in tables}
    params = {id(p) for p in bn.parameters()}
    dec = [p for p in _unique(bn.parameters()) if id(p) not in taken]
    ref = next((t for t in enc if t.is_floating_point()), None)
    x = torch.zeros(1, *bn.in_shape, dtype=ref.dtype if ref is not None else torch.float32)
    with torch.no_grad():
        with FlopCounterMode(display=False) as fc:
            symbols = bn.encode(x)
        with FlopCounterMode(display=False) as fd:
            bn.decode(symbols)
    out = BottleneckCost(
        encoder_params=sum(t.numel() for t in enc if id(t) in params),
        encoder_bits=sum(t.numel() * dtype_bits(t.dtype) for t in enc),
        table_bits=sum(t.numel() * dtype_bits(t.dtype) for t in tables),
        encoder_flops=int(fc.get_total_flops()),
        decoder_params=sum(p.numel() for p in dec),
        decoder_flops=int(fd.get_total_flops()),
        symbol_bytes=int(symbols[0].numel() * symbols.element_size()),
    )
    _BN_CACHE[bn] = out
    return out


def _batch(graph) -> int:
    return int(graph.example_input.shape[0]) if graph.example_input.dim() else 1


def _tensor_specs(cut: CutPoint) -> list[TensorSpec]:
    return list(cut.tensors)  # already per sample


def _samples(inputs: Any) -> Iterable[torch.Tensor]:
    """One sample at a time, batch dim kept, from a tensor or an iterable of batches / (x, y)."""
    batches = [inputs] if isinstance(inputs, torch.Tensor) else inputs
    for b in batches:
        if isinstance(b, (tuple, list)):
            b = b[0]
        if not isinstance(b, torch.Tensor):
            raise SplitterError(f"inputs must be tensors (B, C, H, W) or (x, y) batches, "
                                f"got {type(b).__name__}")
        for i in range(b.shape[0]):
            yield b[i:i + 1]


def measure_payload(split: nn.Module, inputs: Any) -> float | None:
    """Mean ``len(split.encode(x))`` per sample, each sample sent as its own payload.

    ``None`` when the split cannot encode (a plain split has no coder).
    """
    encode = getattr(split, "encode", None)
    if encode is None:
        return None
    total = count = 0
    for x in _samples(inputs):
        try:
            total += len(encode(x))
        except SplitterError:
            if getattr(split, "bottleneck", None) is None:
                return None  # plain: what crosses is the raw cut tensor
            raise
        count += 1
    return total / count if count else None


def cost_report(split: nn.Module, inputs: Any = None, *, table: CostTable | None = None) -> CostReport:
    """The :class:`CostReport` of ``split`` (a :class:`~splitter.compile.split.Split`), per sample.

    Plain splits read the traced graph's prefix sums (nothing runs). A bottleneck adds its
    encoder tensors, coder tables and one measured ``encode`` (see :func:`bottleneck_costs`);
    with ``mode="replace"`` the bottleneck encoder *is* the head. ``inputs`` (a tensor batch
    or an iterable of batches) makes ``payload_bytes`` a measured mean.
    """
    measured = measure_payload(split, inputs) if inputs is not None else None
    return report_at(split.graph, split.cut, getattr(split, "bottleneck", None),
                     getattr(split, "mode", "plain"), table=table, payload=measured)


def report_at(graph, cut: CutPoint, bottleneck: nn.Module | None = None, mode: str = "plain", *,
              table: CostTable | None = None, payload: float | None = None) -> CostReport:
    """The report of cutting ``graph`` (a :class:`~splitter.compile.trace.Graph`) at ``cut``.

    Needs no partitioned graph: a sweep calls this for every plain cut. ``payload`` is a
    measured per-sample payload size, if any.
    """
    table = table or cost_table(graph.gm)
    b = _batch(graph)
    head, tail = table.head(cut.index), table.tail(cut.index)
    specs = _tensor_specs(cut)
    cut_bytes = sum(t.nbytes for t in specs)
    extra: dict[str, Any] = {}
    enc_params, enc_bits, enc_flops = head.params, head.bits, head.flops // b
    tail_params, tail_flops = tail.params, tail.flops // b
    raw = cut_bytes
    if bottleneck is not None:
        c = bottleneck_costs(bottleneck)
        if mode == "replace":  # the learned encoder stands in for the model's whole head
            enc_params, enc_bits, enc_flops = 0, 0, 0
        enc_params += c.encoder_params
        enc_bits += c.encoder_bits
        enc_flops += c.encoder_flops
        tail_params += c.decoder_params
        tail_flops += c.decoder_flops
        raw = c.symbol_bytes
        extra = dict(table_bits=c.table_bits, symbol_bytes=c.symbol_bytes,
                     bottleneck=getattr(bottleneck, "kind", type(bottleneck).__name__))
    return CostReport(
        cut=cut.name, cut_index=cut.index, mode=mode if bottleneck is not None else "plain",
        tensors=specs, encoder_params=enc_params, encoder_bits=enc_bits,
        encoder_flops=enc_flops, encoder_macs=enc_flops // 2,
        tail_params=tail_params, tail_flops=tail_flops, tail_macs=tail_flops // 2,
        cut_bytes=cut_bytes, payload_bytes=float(payload if payload is not None else raw),
        payload_measured=payload is not None, **extra,
    )
