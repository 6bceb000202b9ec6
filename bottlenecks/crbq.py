"""Channel reduction + 8-bit bottleneck quantization (Matsubara & Levorato 2021).

::

    device   x ─► to_nchw ─► Conv1x1(C→K) ─► y ─► per-sample min/max → uint8 ─► symbols
                                               (B, 5 + K·H·W): 5 parameter bytes, then codes
             symbols ─► compress: the bytes as they are (1 string per sample)
    server   string ─► symbols ─► (q + m)·step ─► Conv(K→C) ─► ReLU ─► Conv1x1(C→C) ─► from_nchw ─► x̂

The quantization parameters ride inside the uint8 symbols (see ``_affine8``), so
``encode`` is one exportable torch graph and the server needs nothing else. Training
passes the gradient straight through the quantizer.
"""

from __future__ import annotations

import torch
from torch import nn

from bottlenecks import _affine8
from bottlenecks._common import (
    check_spatial,
    check_strings,
    reduced_channels,
    resolve_mode,
    straight_through,
)
from bottlenecks._layers import nchw_shape
from bottlenecks.base import Bottleneck, BottleneckOutput, from_nchw, register, to_nchw

__all__ = ["ChannelReductionQuant"]


@register("crbq")
class ChannelReductionQuant(Bottleneck):
    """Options: ``channels`` (K, default C // 4, at most C at the cut)."""



    def __init__(self, in_shape: tuple[int, ...], layout: str = "nchw",
                 out_shape: tuple[int, ...] | None = None, channels: int | None = None):
        super().__init__(in_shape, layout, out_shape)
        if resolve_mode(self.in_shape, out_shape, "insert") != "insert":
            raise ValueError("crbq cannot replace the head; use bottleneck='entropy' for mode='replace'")
        c, h, w = nchw_shape(self.in_shape, layout)
        self.channels = reduced_channels(channels, c, "crbq")
        self.latent = (self.channels, h, w)
        k = 1 if layout == "nlc" else 3  # tokens are not a grid: no spatial mixing
        self.encoder = nn.Conv2d(c, self.channels, 1)
        self.decoder = nn.Sequential(nn.Conv2d(self.channels, c, k, padding=k // 2), nn.ReLU(),
                                     nn.Conv2d(c, c, 1))

    def _reduce(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(to_nchw(x, self.layout)).flatten(1)

    def _expand(self, y: torch.Tensor) -> torch.Tensor:
        return from_nchw(self.decoder(y.view(-1, *self.latent)), self.layout)

    def forward(self, x: torch.Tensor) -> BottleneckOutput:
        """(B, *in_shape) -> features; no likelihoods (the rate is fixed: 8 bits a value)."""
        y = self._reduce(x)
        y_hat = straight_through(y, _affine8.dequantize(_affine8.quantize(y.detach())))
        return BottleneckOutput(self._expand(y_hat), {})

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, *in_shape) -> uint8 (B, 5 + K·H·W)."""
        return _affine8.quantize(self._reduce(x))

    def decode(self, symbols: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 5 + K·H·W) -> (B, *in_shape)."""
        return self._expand(_affine8.dequantize(symbols))

    def spatial(self, symbols: torch.Tensor) -> tuple[int, ...]:
        """The latent (K, H, W) the bytes describe."""
        return self.latent

    def _n(self) -> int:
        k, h, w = self.latent
        return _affine8.HEADER + k * h * w

    def compress(self, symbols: torch.Tensor) -> list[list[bytes]]:
        if symbols.dtype != torch.uint8 or tuple(symbols.shape[1:]) != (self._n(),):
            raise ValueError(f"crbq: symbols must be uint8 (B, {self._n()}), got "
                             f"{tuple(symbols.shape)} {symbols.dtype}")
        return [[s.numpy().tobytes()] for s in symbols.cpu()]

    def decompress(self, strings: list[list[bytes]], spatial: tuple[int, ...]) -> torch.Tensor:
        strings = check_strings(strings, self.n_streams)
        check_spatial(spatial, self.latent)
        n = self._n()
        for i, s in enumerate(strings):
            if len(s[0]) != n:
                raise ValueError(f"crbq: sample {i} has {len(s[0])} bytes, expected {n}")
        out = torch.frombuffer(bytearray(b"".join(s[0] for s in strings)),
                               dtype=torch.uint8).view(len(strings), n)
        _affine8.check_header(out)
        return out
