"""Mean-scale hyperprior (Minnen et al. 2018) with CompressAI's ``GaussianConditional``.

::

    device   x ─► to_nchw ─► encoder (conv, GDN) ─► y ─► round ─► symbols  int32 (B, K, h, w)
    compress symbols ─► h_a ─► z ─► round(z − median) ─► ẑ ──► rANS (factorized)   string 2
                                                        └─► h_s ─► scales, means
             r = symbols − round(means) ─► rANS (Gaussian, nearest table scale)  string 1
    server   string 2 ─► ẑ ─► h_s ─► scales, means;  string 1 ─► r ─► symbols = r + round(means)
             symbols ─► decoder (conv, IGDN) ─► from_nchw ─► x̂

``encode`` stays a plain exportable encoder; the hyperprior runs in ``compress`` on the
device and again in ``decompress`` on the server. Coding the integer residual against
*rounded* means keeps the symbols integers that survive bit for bit. Both ends must derive
identical table indexes and rounded means from ẑ: ``compress`` and ``decompress`` run
h_a and h_s through :class:`splitter.deploy.coder.HyperCoder`, in exact integer arithmetic
(weights rounded to 2**-20, activations to 2**-16), which gives the same integers on any
machine and is the very code the torch-free device runtime runs on ``coder_state()``.

Training: the decoder sees round(y) and h_s sees ẑ, both straight-through; the rate uses
noisy likelihoods for y (given the means and scales) and for z. In eval mode the
likelihoods are the coder's model up to the integer net's rounding (residual r under
N(0, scale), float h_s).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from bottlenecks import _rans
from bottlenecks._common import build_coders, check_spatial, check_strings, check_symbols, ste_round
from bottlenecks._compressai import GaussianConditional
from bottlenecks._layers import map_stride, upsample_to
from bottlenecks.base import Bottleneck, BottleneckOutput, from_nchw, register, to_nchw
from bottlenecks.entropy import FactorizedCodec
from splitter.deploy import coder

__all__ = ["MeanScaleHyperprior", "scale_table"]


def scale_table(lo: float = 0.11, hi: float = 256.0, levels: int = 64) -> list[float]:
    """CompressAI's default Gaussian scale table: ``levels`` log-spaced scales."""
    return torch.exp(torch.linspace(math.log(lo), math.log(hi), levels)).tolist()


@register("hyperprior")
class MeanScaleHyperprior(Bottleneck):
    """Options: ``channels`` (K of y, default C // 4), ``hyper_channels`` (of z, default
    max(1, K // 2)), ``mode`` (``insert`` | ``replace``), ``scale_levels`` (default 64)."""



    def __init__(self, in_shape: tuple[int, ...], layout: str = "nchw",
                 out_shape: tuple[int, ...] | None = None, channels: int | None = None,
                 mode: str | None = None, hyper_channels: int | None = None,
                 scale_levels: int = 64):
        super().__init__(in_shape, layout, out_shape)
        self.mode, self.channels, self.encoder, self.decoder, self.latent = build_coders(
            "hyperprior", self.in_shape, out_shape, layout, channels, mode)
        k, h, w = self.latent
        n = int(hyper_channels) if hyper_channels is not None else max(1, k // 2)
        if n < 1 or scale_levels < 2:
            raise ValueError(f"hyperprior: hyper_channels ({n}) must be >= 1 and scale_levels "
                             f"({scale_levels}) >= 2")
        s = map_stride(h, w, layout if self.mode == "insert" else "nchw", min_size=8)
        self.z_latent = (n, -(-h // s), -(-w // s))
        ks, pad = (1, 0) if layout == "nlc" else (3, 1)  # tokens: no spatial mixing
        down = (nn.Conv2d(n, n, 5, stride=2, padding=2) if s == 2
                else nn.Conv2d(n, n, ks, padding=pad))
        up = (upsample_to(n, k, self.z_latent[1:], (h, w)) if s == 2
              else nn.Conv2d(n, k, ks, padding=pad))
        self.hyper_encoder = nn.Sequential(nn.Conv2d(k, n, ks, padding=pad), nn.LeakyReLU(), down)
        self.hyper_decoder = nn.Sequential(up, nn.LeakyReLU(), nn.Conv2d(k, 2 * k, ks, padding=pad))
        self.entropy_bottleneck = FactorizedCodec(self.z_latent)  # z: the entropy kind's codec
        self.gaussian_conditional = GaussianConditional(scale_table(levels=scale_levels))
        self.gaussian_conditional.update()
        _rans.resize_tables_on_load(self)

    # -- helpers -------------------------------------------------------------------------------
    def _in(self, x: torch.Tensor) -> torch.Tensor:
        return to_nchw(x, self.layout) if self.mode == "insert" else x

    def _z_medians(self) -> torch.Tensor:
        return self.entropy_bottleneck.medians()

    def _hyper(self, z_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scales, means = self.hyper_decoder(z_hat).chunk(2, dim=1)
        return scales, means

    def _rounded_means(self, means: torch.Tensor) -> torch.Tensor:
        return torch.round(means).clamp(-_rans.SYMBOL_LIMIT, _rans.SYMBOL_LIMIT)

    def _weights_key(self) -> tuple:
        return tuple((t.data_ptr(), t._version, tuple(t.shape))
                     for t in (*self.parameters(), *self.buffers()))

    def _hyper_coder(self) -> coder.HyperCoder:
        """The integer h_a/h_s coder on this module's current weights and tables, built once
        and rebuilt only after a parameter or buffer changed (torch bumps a tensor's
        ``_version`` on every in-place write): building it took ~0.6 ms of a 1.9 ms
        ``compress`` on a small latent, and the server decompresses once per request."""
        key = self._weights_key()
        cached = getattr(self, "_hyper_cache", None)
        if cached is None or cached[0] != key:
            state = {k: v.numpy() for k, v in self.coder_state().items()}
            hc = coder.HyperCoder(state, _rans.Tables.of(self.entropy_bottleneck),
                                  _rans.Tables.of(self.gaussian_conditional))
            # coder_state() may build the z tables (a buffer write): key on the state after it
            key = self._weights_key()
            object.__setattr__(self, "_hyper_cache", (key, hc))  # not a module attribute or buffer
            return hc
        return cached[1]

    # -- the interface -------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> BottleneckOutput:
        """(B, *in_shape) -> features (B, *out_shape), likelihoods {"y": (B,K,h,w), "z": (B,N,h',w')}."""
        y = self.encoder(self._in(x))
        y_hat = ste_round(y).contiguous()  # as decode sees it (see entropy.py)
        z = self.hyper_encoder(y_hat)
        _, z_lik = self.entropy_bottleneck(z)
        scales, means = self._hyper(self.entropy_bottleneck.ste(z))
        if self.training:
            _, y_lik = self.gaussian_conditional(y, scales, means)
        else:  # the coder's own model: residual against rounded means, zero-mean Gaussian
            gc = self.gaussian_conditional
            y_lik = gc.likelihood_lower_bound(gc._likelihood(y_hat - self._rounded_means(means), scales))
        return BottleneckOutput(from_nchw(self.decoder(y_hat), self.layout), {"y": y_lik, "z": z_lik})

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, *in_shape) -> int32 (B, K, h, w): round(y), saturated at ±2**15."""
        y = torch.round(self.encoder(self._in(x)))
        return y.clamp(-_rans.SYMBOL_LIMIT, _rans.SYMBOL_LIMIT).to(torch.int32).contiguous()

    def decode(self, symbols: torch.Tensor) -> torch.Tensor:
        """int (B, K, h, w) -> (B, *out_shape)."""
        return from_nchw(self.decoder(symbols.to(torch.float32).contiguous()), self.layout)

    @torch.no_grad()
    def compress(self, symbols: torch.Tensor) -> list[list[bytes]]:
        """int (B, K, h, w) -> ``[[y string, z string]]`` per sample (see ``coder.HyperCoder``)."""
        check_symbols(symbols, self.latent, self.kind)
        if symbols.numel() and int(symbols.abs().max()) > _rans.SYMBOL_LIMIT:
            raise ValueError(f"hyperprior: symbols exceed ±{_rans.SYMBOL_LIMIT}; use encode()")
        hc = self._hyper_coder()
        return [hc.encode(s) for s in symbols.cpu().to(torch.int64).numpy()]

    @torch.no_grad()
    def decompress(self, strings: list[list[bytes]], spatial: tuple[int, ...]) -> torch.Tensor:
        strings = check_strings(strings, self.n_streams)
        check_spatial(spatial, self.latent)
        hc = self._hyper_coder()
        out = [torch.from_numpy(hc.decode(y_str, z_str, self.latent)) for y_str, z_str in strings]
        return torch.stack(out)

    # -- what runs where -------------------------------------------------------------------------
    def encoder_tensors(self) -> dict[str, torch.Tensor]:
        """Device side = encode + compress: the encoder, h_a, h_s and the z medians."""
        out = super().encoder_tensors()
        for name in ("hyper_encoder", "hyper_decoder"):
            mod = getattr(self, name)
            out.update({f"{name}.{k}": v for k, v in mod.named_parameters()})
        out["entropy_bottleneck.medians"] = self._z_medians().reshape(-1)
        return out

    def table_tensors(self) -> dict[str, torch.Tensor]:
        out = self.entropy_bottleneck.table_tensors("entropy_bottleneck")
        gc = self.gaussian_conditional
        out.update({f"gaussian_conditional.{n}": getattr(gc, n)
                    for n in ("_quantized_cdf", "_offset", "_cdf_length")})
        out["gaussian_conditional.scale_table"] = self.gaussian_conditional.scale_table
        return out

    def coder_state(self) -> dict[str, torch.Tensor]:
        """What the coder reads (the device's ``coder.safetensors``; see ``coder.HyperCoder``):
        h_a and h_s layer by layer (weights, biases, a geometry row per conv, the LeakyReLU
        slopes), the z medians and both entropy models' tables. No main encoder or decoder."""
        self.entropy_bottleneck.update()  # builds the z tables once if still empty; no-op after
        out: dict[str, torch.Tensor] = {}
        for name in ("hyper_encoder", "hyper_decoder"):
            for i, m in enumerate(getattr(self, name)):
                key = f"{name}.{i}"
                if isinstance(m, nn.LeakyReLU):
                    out[f"{key}.negative_slope"] = torch.tensor([m.negative_slope], dtype=torch.float64)
                    continue
                if not isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) or m.groups != 1 or \
                        tuple(m.dilation) != (1, 1) or m.padding_mode != "zeros" or \
                        isinstance(m.padding, str):
                    raise TypeError(f"hyperprior: the integer coder runs Conv2d/ConvTranspose2d "
                                    f"(groups 1, no dilation, zero padding) and LeakyReLU, not {m}")
                t = isinstance(m, nn.ConvTranspose2d)
                op = tuple(m.output_padding) if t else (0, 0)
                out[f"{key}.weight"] = m.weight
                if m.bias is not None:
                    out[f"{key}.bias"] = m.bias
                out[f"{key}.geometry"] = torch.tensor([int(t), *m.stride, *m.padding, *op],
                                                      dtype=torch.int64)
        out["entropy_bottleneck.medians"] = self._z_medians().reshape(-1)
        out.update(self.table_tensors())
        return {k: v.detach().cpu().contiguous() for k, v in out.items()}

    def update(self) -> None:
        self.entropy_bottleneck.update(force=True)
        self.gaussian_conditional.update()

    def aux_loss(self) -> torch.Tensor:
        return self.entropy_bottleneck.loss()
