"""Attention FLOPs on CPU: register the CPU flash-attention kernel with the flop counter.

Older torch releases count ``_scaled_dot_product_flash_attention`` (CUDA) and
``_scaled_dot_product_efficient_attention`` but not the CPU kernel
``_scaled_dot_product_flash_attention_for_cpu``, so a CPU run of a ViT would miss every
attention matmul. Where torch already counts it, this does nothing.
"""

from __future__ import annotations

import torch
from torch.utils import flop_counter

_done = False


def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    # (B, H, L, E) @ (B, H, E, S) then (B, H, L, S) @ (B, H, S, Ev): two batched matmuls.
    b, h, length, e = query_shape
    s = key_shape[-2]
    ev = value_shape[-1]
    return 2 * b * h * length * s * e + 2 * b * h * length * s * ev


def register_attention_flops() -> None:
    global _done
    if _done:
        return
    _done = True
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is None or op in flop_counter.flop_registry:
        return
    flop_counter.register_flop_formula(op, get_raw=False)(
        lambda query_shape, key_shape, value_shape, *a, **k: _sdpa_cpu_flop(
            query_shape, key_shape, value_shape
        )
    )
