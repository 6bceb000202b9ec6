"""The ``Split`` object and ``split()``: a traced model cut into a device head and a server tail.

::

    plain:    x ─► head (layers ≤ cut) ─► wire ─────────────────────────► tail ─► y
    insert:   x ─► head (layers ≤ cut ─► bn.encode) ─► symbols ─► tail (bn.decode ─► rest) ─► y
    replace:  x ─► head (bn.encode: learned encoder on the image) ─► symbols ─► tail (bn.decode ─► rest)

``head`` and ``tail`` are ``torch.fx.GraphModule``s. ``pre`` / ``post`` are the model's own
layers before / after the cut (without the bottleneck), kept for training.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
from torch import nn

from bottlenecks.spec import KINDS, BottleneckSpec
from passes.cuts import CutPoint
from passes.partition import partition
from splitter.compile.trace import Graph, trace
from splitter.deploy import payload
from splitter.errors import CutError, InputValueError, PayloadError

__all__ = ["Split", "split"]


class Split(nn.Module):
    """A model split at ``cut``: ``tail(head(x))`` is the model's output.

    With a bottleneck, ``head`` ends at the integer symbols and ``tail`` starts from them;
    ``encode(x) -> bytes`` and ``decode(bytes) -> y`` add the entropy coder and the payload.
    """

    def __init__(
        self,
        graph: Graph,
        cut: CutPoint,
        head: fx.GraphModule,
        tail: fx.GraphModule,
        *,
        pre: fx.GraphModule | None = None,
        post: fx.GraphModule | None = None,
        bottleneck: nn.Module | None = None,
        mode: str = "plain",
        spec: BottleneckSpec | None = None,
        layout: str | None = None,
    ):
        super().__init__()
        self.graph = graph
        self.cut = cut
        self.head = head
        self.tail = tail
        self.pre = pre if pre is not None else head
        self.post = post if post is not None else tail
        self.bottleneck = bottleneck
        self.mode = mode
        self.spec = spec  # None for a plain split or a bottleneck passed as a module
        self.layout = layout
        self._costs = None

    @property
    def options(self) -> dict[str, Any]:
        """The bottleneck's options as given (validated), plus the layout it was built for."""
        opts = dict(self.spec.options) if self.spec is not None else {}
        return opts | ({"layout": self.layout} if self.layout else {})

    # -- running -------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> Any:
        self.graph.check_input(x, fixed=self.cut.fixed_shape)
        try:
            return self.tail(self._through_coder(self.head(x)))
        except Exception as e:  # a model fixed to its traced size fails deep inside: say so
            err = self.graph.input_error(x, e)
            if err is None:
                raise
            raise err from e

    def _through_coder(self, symbols: torch.Tensor) -> torch.Tensor:
        """What the server gets: the symbols themselves for a lossless coder, and what the
        codec makes of them for a lossy one (jpeg/webp), so ``split(x)`` computes exactly
        ``split.decode(split.encode(x))``."""
        bn = self.bottleneck
        if bn is None or KINDS[bn.kind].lossless:
            return symbols
        with torch.no_grad():
            return bn.decompress(bn.compress(symbols), bn.spatial(symbols)).to(symbols.dtype)

    def train_forward(self, x: torch.Tensor) -> tuple[Any, torch.Tensor | None, dict[str, torch.Tensor]]:
        """Training pass: ``(output, reconstructed cut tensor, likelihoods)``.

        Goes through ``bottleneck.forward`` (noise / straight-through) instead of the
        integer symbols, so gradients reach the encoder.
        """
        if self.bottleneck is None:
            wire = self.pre(x)
            return self.post(wire), wire, {}
        feat = self.pre(x)
        out = self.bottleneck(feat)
        return self.post(out.features), out.features, dict(out.likelihoods)

    # -- bytes on the wire ------------------------------------------------------------------
    def _bottleneck_or_raise(self):
        if self.bottleneck is None:
            raise CutError(
                f"a plain split has no coder; split with bottleneck='identity' (raw fp32/fp16) or "
                f"a compressing kind ('crbq', 'entropy', ...) to encode {self.cut.name!r} to bytes"
            )
        return self.bottleneck

    def encode(self, x: torch.Tensor) -> bytes:
        """Device side: ``x`` (B, *input_shape) or one sample (*input_shape) -> payload bytes."""
        bn = self._bottleneck_or_raise()
        if isinstance(x, torch.Tensor) and x.dim() == len(self.graph.input_shape):
            x = x.unsqueeze(0)
        # the bottleneck was built for the traced shape: other sizes cannot be coded
        self.graph.check_input(x, fixed=True)
        check_values(x)
        expected = self._expected_spatial()
        with torch.no_grad():
            return payload.encode_symbols(bn, self.head(x), expected)

    def decode_symbols(self, data: bytes, limits: payload.Limits | None = None) -> torch.Tensor:
        """Server side, first half: validate the payload and entropy-decode it to symbols."""
        bn = self._bottleneck_or_raise()
        expected = self._expected_spatial()
        p = payload.unpack(data, limits, kind=bn.kind, expected=expected)
        if len(p.spatial) != len(expected) or (expected and p.spatial[0] != expected[0]):
            raise PayloadError(f"payload symbol dims {p.spatial} do not fit this bottleneck "
                               f"(expects {expected})")
        # Same dtype as the head's symbols, so the tail computes exactly what it would in-process.
        return payload.decode_strings(bn, p).to(self._symbol_dtype)

    def decode(self, data: bytes, limits: payload.Limits | None = None) -> Any:
        """Server side: payload bytes -> model output for every sample in it."""
        symbols = self.decode_symbols(data, limits)
        with torch.no_grad():
            return self.tail(symbols)

    def _expected_spatial(self) -> tuple[int, ...]:
        if not hasattr(self, "_spatial"):
            with torch.no_grad():
                symbols = self.head(self.graph.example_input[:1])
            self._spatial = tuple(self.bottleneck.spatial(symbols))
            self._symbol_dtype = symbols.dtype
        return self._spatial

    @property
    def costs(self):
        """The split's :class:`~splitter.compile.costs.CostReport` (computed once, on first use)."""
        if self._costs is None:
            from splitter.compile.costs import cost_report

            self._costs = cost_report(self)
        return self._costs

    @property
    def name(self) -> str:
        return self.cut.name

    def __repr__(self) -> str:  # nn.Module's repr would print both graphs in full
        kind = getattr(self.bottleneck, "kind", None)
        return (f"Split({self.graph.name!r}, at={self.cut.name!r}, mode={self.mode!r}, "
                f"bottleneck={kind!r}, wire={[t.shape for t in self.cut.tensors]})")


def check_values(x: torch.Tensor) -> None:
    """Raise :class:`InputValueError` unless ``x`` is float32 with only finite values.

    Checked before any compute: a uint8 image would be coded as if it were normalised, and
    a NaN either passes through a quantizer silently or fails deep in the entropy coder.
    """
    if x.dtype != torch.float32:
        hint = ("scale and normalise it first (x.float() / 255, then the model's mean/std; "
                "Device.preprocess does this for image files)" if not x.is_floating_point()
                else "convert it with x.float()")
        raise InputValueError(f"input dtype is {str(x.dtype).replace('torch.', '')}; the head takes "
                         f"float32: {hint}")
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise InputValueError(f"input has {bad} non-finite value(s) (NaN or inf); clean or drop those "
                         f"samples before encoding")


def split(
    model: nn.Module | str | Graph,
    at: str,
    *,
    bottleneck: str | BottleneckSpec | nn.Module | None = None,
    mode: str | None = None,
    input_shape: tuple[int, ...] | None = None,
    **options: Any,
) -> Split:
    """Split ``model`` right after ``at`` (a module path, FX node name or ``input``/``output``).

    Without ``bottleneck`` the split is exact: ``s.tail(s.head(x))`` equals ``model(x)``.
    With one (a registered kind such as ``"crbq"``, ``"entropy"``, a ``"kind:k=v"`` string,
    a :class:`~bottlenecks.spec.BottleneckSpec` or a module), it is inserted after the cut
    (``mode="insert"``, the default) or replaces the head (``mode="replace"``, the Entropic
    Student: an encoder on the image with ``min(24, C)`` latent channels unless
    ``channels=`` says otherwise). ``options`` (``channels=``, ``quality=``, ...) are the
    kind's own and are validated before the model is traced: an unknown or mistyped option
    raises :class:`~splitter.errors.BottleneckError` naming what is allowed.
    """
    if bottleneck is None:
        if options or mode not in (None, "plain"):
            given = sorted(options) + (["mode"] if mode not in (None, "plain") else [])
            raise CutError(f"options {given} need a bottleneck=; a plain split takes none")
    elif not isinstance(bottleneck, nn.Module):
        bottleneck = BottleneckSpec.of(bottleneck, mode=mode, **options)  # fails before tracing
    elif options:
        raise CutError(f"options {sorted(options)} go to a bottleneck kind; a ready module "
                       f"takes none (build it with them instead)")
    graph = model if isinstance(model, Graph) else trace(model, input_shape)
    cut = graph.cut(at)
    if bottleneck is None:
        head, tail = partition(graph.gm, cut)
        return Split(graph, cut, head, tail, mode="plain")
    from splitter.compile.bottleneck import build_bottleneck_split

    return build_bottleneck_split(graph, cut, bottleneck, mode=mode or "insert")
