"""The one interface every bottleneck implements (modelled on CompressAI's latent codecs).

::

    training:  x ──► forward ──► (x̂, likelihoods)            noise / straight-through
    device:    x ──► encode ──► symbols (integer tensor)      exportable (ONNX / torch.export)
               symbols ──► compress ──► [[bytes per stream] per sample]
    server:    strings ──► decompress ──► symbols ──► decode ──► x̂  (same shape/layout as x)

``x`` is the tensor at the cut, in its own layout: ``nchw`` feature maps ``(B, C, H, W)``,
``nhwc`` channels-last maps ``(B, H, W, C)`` or ``nlc`` token sequences ``(B, N, C)``.
In ``mode="replace"`` the input is the image and ``decode`` reconstructs the cut tensor
(``out_shape``), as the Entropic Student does.

``decode(decompress(compress(encode(x)), spatial(encode(x))))`` equals ``decode(encode(x))``
exactly: symbols survive the coder bit for bit.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

__all__ = ["Bottleneck", "BottleneckOutput", "REGISTRY", "register", "create", "infer_layout",
           "to_nchw", "from_nchw"]


@dataclass
class BottleneckOutput:
    """Training-time output: reconstructed features and the likelihoods of each latent."""

    features: torch.Tensor
    likelihoods: dict[str, torch.Tensor] = field(default_factory=dict)


REGISTRY: dict[str, type[Bottleneck]] = {}


def register(name: str):
    """Class decorator: the class that implements kind ``name`` of :data:`bottlenecks.KINDS`.

    Wire id, stream count and options are declared once, in :mod:`bottlenecks.spec`; the
    class takes its ``n_streams`` from there.
    """
    from bottlenecks.spec import kind_info

    info = kind_info(name)

    def deco(cls: type[Bottleneck]) -> type[Bottleneck]:
        cls.kind = name
        cls.n_streams = info.streams
        REGISTRY[name] = cls
        return cls

    return deco


def create(name: str, *, in_shape: tuple[int, ...], layout: str = "nchw",
           out_shape: tuple[int, ...] | None = None, mode: str | None = None,
           **options: Any) -> Bottleneck:
    """Build a registered bottleneck by name, as ``timm.create_model`` does for models.

    ``in_shape`` (one sample, no batch), ``layout``, ``out_shape`` and ``mode`` say where it
    sits; ``options`` are the kind's own (``channels``, ``quality``, ...), validated against
    its options model: an unknown or mistyped option raises
    :class:`~splitter.errors.BottleneckError` naming what is allowed.
    """
    import importlib

    from bottlenecks.spec import BottleneckSpec

    options.pop("in_layout", None)  # older manifests: implied by mode="replace"
    mode = mode or ("replace" if out_shape is not None and tuple(out_shape) != tuple(in_shape)
                    else "insert")
    spec = BottleneckSpec(kind=name, mode=mode, options=options)
    importlib.import_module(spec.info.module)
    opts = spec.resolved().model_dump()
    opts.pop("layout")
    cls = REGISTRY[name]
    if mode == "replace":
        return cls(in_shape, layout=layout, out_shape=out_shape, mode=mode, **opts)
    return cls(in_shape, layout=layout, out_shape=out_shape, **opts)


def infer_layout(shape: tuple[int, ...]) -> str:
    """Guess the layout of one sample's cut tensor shape (no batch dimension).

    ``(C, H, W)`` -> ``nchw``; ``(H, W, C)`` with ``H == W != C`` -> ``nhwc`` (Swin, ConvNeXt
    internals); ``(N, C)`` -> ``nlc``.
    """
    if len(shape) == 2:
        return "nlc"
    if len(shape) == 3:
        c, h, w = shape
        if h == w:
            return "nchw"
        if c == h and w != h:
            return "nhwc"
        return "nchw"
    raise ValueError(f"cannot place a bottleneck on a tensor of shape {shape}; "
                     f"expected (C, H, W), (H, W, C) or (N, C)")


def to_nchw(x: torch.Tensor, layout: str) -> torch.Tensor:
    """Any supported layout -> (B, C, H, W); token sequences become (B, C, N, 1)."""
    if layout == "nchw":
        return x
    if layout == "nhwc":
        return x.permute(0, 3, 1, 2)
    if layout == "nlc":
        return x.transpose(1, 2).unsqueeze(-1)
    raise ValueError(f"unknown layout {layout!r}")


def from_nchw(x: torch.Tensor, layout: str) -> torch.Tensor:
    """Inverse of :func:`to_nchw`."""
    if layout == "nchw":
        return x
    if layout == "nhwc":
        return x.permute(0, 2, 3, 1)
    if layout == "nlc":
        return x.squeeze(-1).transpose(1, 2)
    raise ValueError(f"unknown layout {layout!r}")


class Bottleneck(nn.Module, ABC):
    """Base class. Subclasses set ``n_streams`` and implement the five methods.

    Constructor options every kind accepts:

    - ``in_shape``: one sample's input shape (no batch), in ``layout``;
    - ``layout``: ``nchw`` | ``nhwc`` | ``nlc``;
    - ``out_shape``: shape ``decode`` must produce (defaults to ``in_shape``; differs in
      ``mode="replace"``, where the input is the image);
    - ``channels``: latent channels, where the kind has them.
    """

    kind: ClassVar[str] = "base"
    n_streams: ClassVar[int] = 1  # strings per sample in the payload

    def __init__(self, in_shape: tuple[int, ...], layout: str = "nchw",
                 out_shape: tuple[int, ...] | None = None):
        super().__init__()
        self.in_shape = tuple(in_shape)
        self.layout = layout
        self.out_shape = tuple(out_shape) if out_shape is not None else self.in_shape

    @abstractmethod
    def forward(self, x: torch.Tensor) -> BottleneckOutput:
        """Training pass: (B, *in_shape) -> features (B, *out_shape) and likelihoods."""

    @abstractmethod
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Device side, exportable: (B, *in_shape) -> integer symbols."""

    @abstractmethod
    def decode(self, symbols: torch.Tensor) -> torch.Tensor:
        """Server side: symbols -> features (B, *out_shape)."""

    @abstractmethod
    def compress(self, symbols: torch.Tensor) -> list[list[bytes]]:
        """Symbols -> ``strings[sample][stream]`` (``n_streams`` strings per sample)."""

    @abstractmethod
    def decompress(self, strings: list[list[bytes]], spatial: tuple[int, ...]) -> torch.Tensor:
        """Inverse of :meth:`compress`; ``spatial`` is what :meth:`spatial` returned."""

    def spatial(self, symbols: torch.Tensor) -> tuple[int, ...]:
        """The symbol dimensions the payload header carries (all but batch by default)."""
        return tuple(int(d) for d in symbols.shape[1:])

    def symbol_spec(self) -> dict[str, Any]:
        """Symbol dtype and per-sample shape for a manifest (from a dry run if needed)."""
        with torch.no_grad():
            s = self.encode(torch.zeros(1, *self.in_shape))
        return {"dtype": str(s.dtype).replace("torch.", ""), "shape": list(s.shape[1:])}

    # -- what runs where (read by cost counting and export) --------------------------------
    # Convention: device-side layers live under ``self.encoder``, server-side ones under
    # ``self.decoder``; an entropy model's coder tables are buffers named in ``table_buffers``.

    def encode_modules(self) -> dict[str, nn.Module]:
        """The layers ``encode`` runs on the device (the head holds these and nothing else)."""
        enc = getattr(self, "encoder", None)
        return {"encoder": enc} if isinstance(enc, nn.Module) else {}

    def decode_modules(self) -> dict[str, nn.Module]:
        """The layers ``decode`` runs on the server (the tail's share of the bottleneck)."""
        dec = getattr(self, "decoder", None)
        return {"decoder": dec} if isinstance(dec, nn.Module) else {}

    def encoder_tensors(self) -> dict[str, torch.Tensor]:
        """Parameters and buffers ``encode`` reads on the device, coder tables excluded."""
        enc = getattr(self, "encoder", None)
        out: dict[str, torch.Tensor] = {}
        if isinstance(enc, nn.Module):
            out.update({f"encoder.{k}": v for k, v in enc.named_parameters()})
            out.update({f"encoder.{k}": v for k, v in enc.named_buffers()})
        return out

    def table_tensors(self) -> dict[str, torch.Tensor]:
        """Entropy-coder tables (CDFs, offsets, lengths) the device also holds; empty if none."""
        return {}

    def update(self) -> None:
        """Refresh entropy-coder tables after training (no-op for kinds without them)."""

    def aux_loss(self) -> torch.Tensor:
        """Auxiliary loss of the entropy model (CompressAI quantiles); zero when none."""
        return torch.zeros(())
