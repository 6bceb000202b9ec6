"""Checks and shape plumbing every kind shares (one place for what arrives untrusted)."""

from __future__ import annotations

from typing import Any

import torch

from bottlenecks.spec import REPLACE_CHANNELS

__all__ = ["check_strings", "check_spatial", "resolve_mode", "reduced_channels", "ste_round",
           "straight_through", "build_coders", "check_symbols"]


def check_strings(strings: Any, n_streams: int) -> list[list[bytes]]:
    """``strings[sample][stream]`` as bytes, or ``ValueError`` saying what is wrong."""
    if not isinstance(strings, (list, tuple)) or len(strings) == 0:
        raise ValueError("expected a non-empty list of per-sample string lists")
    out = []
    for i, sample in enumerate(strings):
        if not isinstance(sample, (list, tuple)) or len(sample) != n_streams:
            raise ValueError(f"sample {i}: expected {n_streams} string(s), got "
                             f"{len(sample) if isinstance(sample, (list, tuple)) else type(sample).__name__}")
        if not all(isinstance(s, (bytes, bytearray)) for s in sample):
            raise ValueError(f"sample {i}: strings must be bytes")
        out.append([bytes(s) for s in sample])
    return out


def check_spatial(spatial: Any, expected: tuple[int, ...]) -> None:
    """The header's symbol dims must be exactly the ones this bottleneck was built for."""
    try:
        got = tuple(int(d) for d in spatial)
    except (TypeError, ValueError):
        raise ValueError(f"symbol dims {spatial!r} are not a tuple of ints") from None
    if got != tuple(expected):
        raise ValueError(f"symbol dims {got} do not match this bottleneck's {tuple(expected)}")


def resolve_mode(in_shape: tuple[int, ...], out_shape: tuple[int, ...] | None,
                 mode: str | None) -> str:
    """``insert`` (decode rebuilds the input) or ``replace`` (input is the image)."""
    if mode is None:
        mode = "replace" if out_shape is not None and tuple(out_shape) != tuple(in_shape) else "insert"
    if mode not in ("insert", "replace"):
        raise ValueError(f"mode must be 'insert' or 'replace', got {mode!r}")
    if mode == "insert" and out_shape is not None and tuple(out_shape) != tuple(in_shape):
        raise ValueError(f"insert mode reconstructs the cut tensor, so out_shape {tuple(out_shape)} "
                         f"must equal in_shape {tuple(in_shape)}")
    return mode


def reduced_channels(channels: int | None, c: int, kind: str, default: int | None = None) -> int:
    """Latent channels: ``channels`` if 1 <= channels <= C; else ``default`` (capped at C),
    or C // 4 when no default is given."""
    if channels is None:
        return min(default, c) if default is not None else max(1, c // 4)
    channels = int(channels)
    if channels < 1 or channels > c:
        raise ValueError(f"{kind}: channels={channels} is not in 1..{c}; the cut has {c} channels, "
                         f"so at most channels={c}")
    return channels


def straight_through(y: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Values ``q`` with the gradient of ``y`` (straight-through estimator).

    Returns ``q`` itself (no ``y + (q - y)`` float error) when no gradient is being
    recorded, so a no-grad forward sees exactly what ``decode(encode(x))`` sees.
    """
    if torch.is_grad_enabled() and y.requires_grad:
        return y + (q - y).detach()
    return q


def ste_round(y: torch.Tensor, center: torch.Tensor | float = 0.0) -> torch.Tensor:
    """``round(y - center) + center`` with the identity gradient while training."""
    return straight_through(y, torch.round(y - center) + center)



def build_coders(kind: str, in_shape: tuple[int, ...], out_shape: tuple[int, ...] | None,
                 layout: str, channels: int | None, mode: str | None):
    """Mode, latent channels K, encoder, decoder and latent (K, h, w) of a learned kind.

    Insert mode: ``in_shape`` is the cut tensor in ``layout``. Replace mode: ``in_shape``
    is the image ``(3, H, W)`` and ``out_shape`` the cut tensor in ``layout`` (a map).
    """
    from bottlenecks._layers import insert_coders, nchw_shape, replace_coders

    mode = resolve_mode(in_shape, out_shape, mode)
    if mode == "insert":
        c, h, w = nchw_shape(in_shape, layout)
        k = reduced_channels(channels, c, kind)
        enc, dec, (hl, wl) = insert_coders(c, k, h, w, layout)
    else:
        if layout == "nlc":
            raise ValueError(f"{kind}: replace mode rebuilds a feature map (C, H, W) or (H, W, C); "
                             f"a token sequence has no grid to rebuild: use mode='insert'")
        image = nchw_shape(in_shape, "nchw")
        out = nchw_shape(out_shape, layout)
        # Entropic Student size, not C // 4: the encoder must stay small next to the head
        # it replaces (ResNet-50 at layer1: K = 24, 138,672 parameters, as in the paper)
        k = reduced_channels(channels, out[0], kind, default=REPLACE_CHANNELS)
        enc, dec, (hl, wl) = replace_coders(image, out, k)
    return mode, k, enc, dec, (k, hl, wl)


def check_symbols(symbols: torch.Tensor, latent: tuple[int, ...], kind: str) -> torch.Tensor:
    """``(B, *latent)`` integer symbols, or ``ValueError``."""
    if not isinstance(symbols, torch.Tensor) or symbols.is_floating_point() or symbols.is_complex():
        raise ValueError(f"{kind}: symbols must be an integer tensor (from encode)")
    if symbols.dim() != len(latent) + 1 or tuple(symbols.shape[1:]) != tuple(latent):
        raise ValueError(f"{kind}: symbols of shape {tuple(symbols.shape)} do not match "
                         f"(B, {', '.join(map(str, latent))})")
    return symbols
