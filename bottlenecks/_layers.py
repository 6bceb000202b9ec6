"""Conv/GDN analysis and synthesis stacks sized from the shape at the cut.

Shared by the learned entropy-coded kinds (``entropy``, ``hyperprior``)::

    insert mode (x is the cut tensor, C channels, H x W map or N tokens as N x 1):
        encoder  Conv(C→2K, 5, s2) | Conv(C→2K, 3) → GDN → Conv(2K→K, 3)
        decoder  Conv(K→C, 3) → IGDN → ConvT(C→C, 5, s2) | Conv(C→C, 3)  exact H x W
        (stride 2 on maps of at least 16x16, else 1)
        (token sequences: every kernel 1x1, no stride; tokens are not a grid)

    replace mode (x is the image, the decoder rebuilds the cut (C, H, W); Entropic
    Student, Matsubara et al. 2022; its K=24 / (256, 56, 56) instance is reproduced
    layer for layer):
        encoder  Conv(3→4K, 5, 2, p2) → GDN → [Conv(4K→4K, 5, 2, p2) → GDN]*(d-2)
                 → Conv(4K→2K, 5, 2, p2) → GDN → Conv(2K→K, 2, 1, p0)      no biases
        decoder  Conv(K→2C, 2, p1) → IGDN → Conv(2C→C, 2, p0) → IGDN → Conv(C→C, 2, p1)
        where 2**d = image size / cut size (d >= 1; for d = 1 the first conv is 3→2K).
"""

from __future__ import annotations

import math

from torch import nn

from bottlenecks._compressai import GDN

__all__ = ["nchw_shape", "map_stride", "upsample_to", "insert_coders", "replace_coders",
           "replace_latent"]


def nchw_shape(shape: tuple[int, ...], layout: str) -> tuple[int, int, int]:
    """One sample's shape in ``layout`` -> (C, H, W) as :func:`bottlenecks.base.to_nchw` sees it."""
    shape = tuple(int(d) for d in shape)
    if layout == "nchw" and len(shape) == 3:
        return shape
    if layout == "nhwc" and len(shape) == 3:
        return shape[2], shape[0], shape[1]
    if layout == "nlc" and len(shape) == 2:
        return shape[1], shape[0], 1
    raise ValueError(f"shape {shape} does not fit layout {layout!r}; expected (C, H, W) for "
                     f"nchw, (H, W, C) for nhwc, (N, C) for nlc")


def map_stride(h: int, w: int, layout: str, min_size: int = 16) -> int:
    """2 where halving the map still leaves >= min_size/2 per side, else 1 (and 1 for tokens)."""
    return 2 if layout != "nlc" and min(h, w) >= min_size else 1


def _down(h: int, s: int) -> int:
    return (h + s - 1) // s  # k=5, p=2 or k=3, p=1: ceil(h / s)


def upsample_to(cin: int, cout: int, hw_in: tuple[int, int], hw_out: tuple[int, int]) -> nn.Module:
    """ConvT(k5, s2, p2) whose output_padding lands exactly on ``hw_out`` (odd or even)."""
    pad = tuple(o - (2 * i - 1) for i, o in zip(hw_in, hw_out))
    if any(p not in (0, 1) for p in pad):
        raise ValueError(f"cannot upsample {hw_in} to {hw_out} with one stride-2 layer")
    return nn.ConvTranspose2d(cin, cout, 5, stride=2, padding=2, output_padding=pad)


def insert_coders(c: int, k: int, h: int, w: int, layout: str) -> tuple[nn.Module, nn.Module, tuple[int, int]]:
    """Encoder (C,H,W)→(K,h,w), decoder back to exactly (C,H,W), and the latent (h, w)."""
    s = map_stride(h, w, layout)
    if layout == "nlc":
        enc = nn.Sequential(nn.Conv2d(c, 2 * k, 1), GDN(2 * k), nn.Conv2d(2 * k, k, 1))
        dec = nn.Sequential(nn.Conv2d(k, c, 1), GDN(c, inverse=True), nn.Conv2d(c, c, 1))
        return enc, dec, (h, w)
    hl, wl = _down(h, s), _down(w, s)
    first = nn.Conv2d(c, 2 * k, 5, stride=2, padding=2) if s == 2 else nn.Conv2d(c, 2 * k, 3, padding=1)
    enc = nn.Sequential(first, GDN(2 * k), nn.Conv2d(2 * k, k, 3, padding=1))
    last = upsample_to(c, c, (hl, wl), (h, w)) if s == 2 else nn.Conv2d(c, c, 3, padding=1)
    dec = nn.Sequential(nn.Conv2d(k, c, 3, padding=1), GDN(c, inverse=True), last)
    return enc, dec, (hl, wl)


def replace_latent(image: tuple[int, int, int], out_chw: tuple[int, int, int]) -> tuple[int, int, int]:
    """Downsampling depth d with ceil(H / 2**d) == cut H (same d for W), and the latent (h, w)."""
    _, hi, wi = image
    _, ho, wo = out_chw
    d = round(math.log2(max(hi / max(ho, 1), 1.0)))
    if d < 1 or -(-hi // 2**d) != ho or -(-wi // 2**d) != wo or min(ho, wo) < 2:
        raise ValueError(f"replace mode needs the cut to be the image downsampled by a power of "
                         f"two >= 2 (got image {hi}x{wi} -> cut {ho}x{wo}); pick a cut at "
                         f"stride 2, 4, 8, ... or use mode='insert'")
    return d, ho - 1, wo - 1


def replace_coders(image: tuple[int, int, int], out_chw: tuple[int, int, int],
                   k: int) -> tuple[nn.Module, nn.Module, tuple[int, int]]:
    """Entropic Student encoder (image → (K, h, w)) and decoder (→ exactly the cut's (C, H, W))."""
    d, hl, wl = replace_latent(image, out_chw)
    c = out_chw[0]
    widths = [image[0]] + [4 * k] * (d - 1) + [2 * k]
    layers: list[nn.Module] = []
    for cin, cout in zip(widths, widths[1:]):
        layers += [nn.Conv2d(cin, cout, 5, stride=2, padding=2, bias=False), GDN(cout)]
    layers.append(nn.Conv2d(2 * k, k, 2, stride=1, padding=0, bias=False))
    dec = nn.Sequential(
        nn.Conv2d(k, 2 * c, 2, stride=1, padding=1, bias=False), GDN(2 * c, inverse=True),
        nn.Conv2d(2 * c, c, 2, stride=1, padding=0, bias=False), GDN(c, inverse=True),
        nn.Conv2d(c, c, 2, stride=1, padding=1, bias=False))
    return nn.Sequential(*layers), dec, (hl, wl)
