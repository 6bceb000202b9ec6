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

from bottlenecks import _rans
from bottlenecks._common import build_coders, check_spatial, check_strings, check_symbols, ste_round
from bottlenecks._compressai import EntropyBottleneck
from bottlenecks.base import Bottleneck, BottleneckOutput, from_nchw, register, to_nchw

__all__ = ["FactorizedPrior", "FactorizedCodec"]


class FactorizedCodec(EntropyBottleneck):
    """CompressAI's ``EntropyBottleneck`` with the integer-symbol coding of a latent
    ``(K, h, w)``: one factorized prior per channel, symbols ``round(y − median)``.

    The ``entropy`` kind codes its latent ``y`` with it; the ``hyperprior`` kind codes its
    side latent ``z`` with the same class (composed, as CompressAI's hyperprior codec is
    built from its entropy-bottleneck codec). A subclass rather than a wrapper, so state
    keys stay ``entropy_bottleneck.*`` and CompressAI's own methods keep working.
    """

    def __init__(self, latent: tuple[int, int, int]):
        super().__init__(latent[0])
        self.latent = tuple(latent)

    def medians(self) -> torch.Tensor:
        """(1, K, 1, 1); a slice of a parameter, so it exports as a constant."""
        return self.quantiles[:, 0, 1].detach().reshape(1, -1, 1, 1)

    def symbols(self, y: torch.Tensor) -> torch.Tensor:
        """(B, K, h, w) float -> int32 ``round(y − median)``, saturated at ±2**15."""
        s = torch.round(y - self.medians())
        return s.clamp(-_rans.SYMBOL_LIMIT, _rans.SYMBOL_LIMIT).to(torch.int32).contiguous()

    def values(self, symbols: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`symbols` on the integers: ``symbols + median`` as float."""
        return symbols.to(torch.float32).contiguous() + self.medians()

    def ste(self, y: torch.Tensor) -> torch.Tensor:
        """``y`` rounded about the medians, identity gradient (what the decoder will see)."""
        return ste_round(y, self.medians())

    def _indexes(self) -> torch.Tensor:
        k, h, w = self.latent
        return torch.arange(k, dtype=torch.int32).view(k, 1, 1).expand(k, h, w)

    def _tables(self) -> _rans.Tables:
        self.update()  # builds the tables once if still empty; no-op after
        return _rans.Tables.of(self)

    @torch.no_grad()
    def code(self, symbols: torch.Tensor) -> list[bytes]:
        """int (B, K, h, w) -> one string per sample."""
        tables, idx = self._tables(), self._indexes()
        return [_rans.encode(s, idx, tables) for s in symbols.cpu()]

    @torch.no_grad()
    def uncode(self, strings: list[bytes]) -> torch.Tensor:
        """Inverse of :meth:`code`: strings -> int32 (B, K, h, w)."""
        tables, idx = self._tables(), self._indexes()
        return torch.stack([_rans.decode(s, idx, tables).view(self.latent) for s in strings])

    def table_tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.{n}": getattr(self, n) for n in ("_quantized_cdf", "_offset", "_cdf_length")}



@register("entropy")
class FactorizedPrior(Bottleneck):
    """Conv/GDN encoder, factorized entropy model, conv/IGDN decoder.

    Options: ``channels`` (latent K; default C // 4 in insert mode, the Entropic Student's
    min(24, C) in replace mode; at most C), ``mode`` (``insert`` | ``replace``).
    """

    def __init__(self, in_shape: tuple[int, ...], layout: str = "nchw",
                 out_shape: tuple[int, ...] | None = None, channels: int | None = None,
                 mode: str | None = None):
        super().__init__(in_shape, layout, out_shape)
        self.mode, self.channels, self.encoder, self.decoder, self.latent = build_coders(
            "entropy", self.in_shape, out_shape, layout, channels, mode)
        self.entropy_bottleneck = FactorizedCodec(self.latent)
        _rans.resize_tables_on_load(self)

    def _in(self, x: torch.Tensor) -> torch.Tensor:
        return to_nchw(x, self.layout) if self.mode == "insert" else x

    # -- the interface -----------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> BottleneckOutput:
        """(B, *in_shape) -> features (B, *out_shape), likelihoods {"y": (B, K, h, w)}."""
        y = self.encoder(self._in(x))
        _, likelihoods = self.entropy_bottleneck(y)
        # contiguous: a permuted (channels-last) map would pick other conv kernels in the
        # decoder than the contiguous symbols the server decodes, and differ in the last bit
        y_hat = self.entropy_bottleneck.ste(y).contiguous()
        return BottleneckOutput(from_nchw(self.decoder(y_hat), self.layout), {"y": likelihoods})

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, *in_shape) -> int32 (B, K, h, w): round(y − median), saturated at ±2**15."""
        return self.entropy_bottleneck.symbols(self.encoder(self._in(x)))

    def decode(self, symbols: torch.Tensor) -> torch.Tensor:
        """int (B, K, h, w) -> (B, *out_shape)."""
        return from_nchw(self.decoder(self.entropy_bottleneck.values(symbols)), self.layout)

    def compress(self, symbols: torch.Tensor) -> list[list[bytes]]:
        check_symbols(symbols, self.latent, self.kind)
        return [[s] for s in self.entropy_bottleneck.code(symbols)]

    def decompress(self, strings: list[list[bytes]], spatial: tuple[int, ...]) -> torch.Tensor:
        strings = check_strings(strings, self.n_streams)
        check_spatial(spatial, self.latent)
        return self.entropy_bottleneck.uncode([s[0] for s in strings])

    # -- what runs where ---------------------------------------------------------------------
    def encoder_tensors(self) -> dict[str, torch.Tensor]:
        """The encoder's weights plus the K medians ``encode`` subtracts."""
        out = super().encoder_tensors()
        out["entropy_bottleneck.medians"] = self.entropy_bottleneck.medians().reshape(-1)
        return out

    def table_tensors(self) -> dict[str, torch.Tensor]:
        return self.entropy_bottleneck.table_tensors("entropy_bottleneck")

    def update(self) -> None:
        self.entropy_bottleneck.update(force=True)

    def aux_loss(self) -> torch.Tensor:
        return self.entropy_bottleneck.loss()
