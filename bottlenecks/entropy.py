"""Factorized-prior bottleneck (Ballé et al. 2018) with CompressAI's ``EntropyBottleneck``.

::

    device   x ─► to_nchw ─► encoder (conv, GDN) ─► y ─► round(y − median) ─► symbols  int32 (B, K, h, w)
             symbols ─► rANS, one CDF table per channel ─► 1 string per sample
    server   string ─► rANS⁻¹ ─► symbols ─► + median ─► decoder (conv, IGDN) ─► from_nchw ─► x̂

``mode="replace"`` makes it the Entropic Student (Matsubara et al. 2022): the encoder
takes the image and the decoder rebuilds the cut tensor (see ``_layers``).

Training follows the recipe that works for distillation: the decoder sees ``y`` rounded
about the medians with a straight-through gradient, while the rate term uses the
EntropyBottleneck's noisy likelihoods. ``aux_loss()`` fits the quantiles that bound the
CDF tables; call ``update()`` after training to rebuild the tables.
"""

from __future__ import annotations

import torch
from compressai.entropy_models import EntropyBottleneck

from bottlenecks import _rans
from bottlenecks._common import build_coders, check_spatial, check_strings, check_symbols, ste_round
from bottlenecks.base import Bottleneck, BottleneckOutput, from_nchw, register, to_nchw

__all__ = ["FactorizedPrior"]


@register("entropy")
class FactorizedPrior(Bottleneck):
    """Conv/GDN encoder, factorized entropy model, conv/IGDN decoder.

    Options: ``channels`` (latent K; default C // 4, at most C), ``mode``
    (``insert`` | ``replace``; default: replace when ``out_shape`` differs).
    """



    def __init__(self, in_shape: tuple[int, ...], layout: str = "nchw",
                 out_shape: tuple[int, ...] | None = None, channels: int | None = None,
                 mode: str | None = None):
        super().__init__(in_shape, layout, out_shape)
        self.mode, self.channels, self.encoder, self.decoder, self.latent = build_coders(
            "entropy", self.in_shape, out_shape, layout, channels, mode)
        self.entropy_bottleneck = EntropyBottleneck(self.channels)
        _rans.resize_tables_on_load(self)

    # -- layout ------------------------------------------------------------------------------
    def _in(self, x: torch.Tensor) -> torch.Tensor:
        return to_nchw(x, self.layout) if self.mode == "insert" else x

    def _medians(self) -> torch.Tensor:
        # (1, K, 1, 1); a slice of a parameter, so it exports as a constant
        return self.entropy_bottleneck.quantiles[:, 0, 1].detach().reshape(1, -1, 1, 1)

    def _tables(self) -> _rans.Tables:
        self.entropy_bottleneck.update()  # builds the tables once if still empty; no-op after
        return _rans.Tables.of(self.entropy_bottleneck)

    def _indexes(self) -> torch.Tensor:
        k, h, w = self.latent
        return torch.arange(k, dtype=torch.int32).view(k, 1, 1).expand(k, h, w)

    # -- the interface -----------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> BottleneckOutput:
        """(B, *in_shape) -> features (B, *out_shape), likelihoods {"y": (B, K, h, w)}."""
        y = self.encoder(self._in(x))
        _, likelihoods = self.entropy_bottleneck(y)
        # contiguous: a permuted (channels-last) map would pick other conv kernels in the
        # decoder than the contiguous symbols the server decodes, and differ in the last bit
        y_hat = ste_round(y, self._medians()).contiguous()
        return BottleneckOutput(from_nchw(self.decoder(y_hat), self.layout), {"y": likelihoods})

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, *in_shape) -> int32 (B, K, h, w): round(y − median), saturated at ±2**15."""
        y = self.encoder(self._in(x))
        s = torch.round(y - self._medians())
        return s.clamp(-_rans.SYMBOL_LIMIT, _rans.SYMBOL_LIMIT).to(torch.int32).contiguous()

    def decode(self, symbols: torch.Tensor) -> torch.Tensor:
        """int (B, K, h, w) -> (B, *out_shape)."""
        y = symbols.to(torch.float32).contiguous() + self._medians()
        return from_nchw(self.decoder(y), self.layout)

    @torch.no_grad()
    def compress(self, symbols: torch.Tensor) -> list[list[bytes]]:
        check_symbols(symbols, self.latent, self.kind)
        tables, idx = self._tables(), self._indexes()
        return [[_rans.encode(s, idx, tables)] for s in symbols.cpu()]

    @torch.no_grad()
    def decompress(self, strings: list[list[bytes]], spatial: tuple[int, ...]) -> torch.Tensor:
        strings = check_strings(strings, self.n_streams)
        check_spatial(spatial, self.latent)
        tables, idx = self._tables(), self._indexes()
        return torch.stack([_rans.decode(s[0], idx, tables).view(self.latent) for s in strings])

    # -- what runs where ---------------------------------------------------------------------
    def encoder_tensors(self) -> dict[str, torch.Tensor]:
        """The encoder's weights plus the K medians ``encode`` subtracts."""
        out = super().encoder_tensors()
        out["entropy_bottleneck.medians"] = self._medians().reshape(-1)
        return out

    def table_tensors(self) -> dict[str, torch.Tensor]:
        eb = self.entropy_bottleneck
        return {f"entropy_bottleneck.{n}": getattr(eb, n)
                for n in ("_quantized_cdf", "_offset", "_cdf_length")}

    def update(self) -> None:
        self.entropy_bottleneck.update(force=True)

    def aux_loss(self) -> torch.Tensor:
        return self.entropy_bottleneck.loss()
