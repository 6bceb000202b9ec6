"""Entropy coding of integer symbols under CompressAI's tables: the torch face of the coder.

::

    bottleneck.compress: torch symbols, indexes ─► coder.encode (numpy) ─► bytes
    bottleneck.decompress: bytes ─► coder.decode (numpy) ─► torch int32 symbols

The coder itself is :mod:`splitter.deploy.coder` (numpy; byte-wise rANS for streams of at
most ``SMALL_STREAM`` symbols, constriction's ANS for longer ones), so that the device
runtime, which has no torch, writes exactly the bytes these modules decode. This module
only reads a CompressAI entropy model's buffers into :class:`~splitter.deploy.coder.Tables`
(cached) and converts tensors. See the coder's docstring for the format and for what a
malformed string can and cannot do.
"""

from __future__ import annotations

import numpy as np
import torch

from splitter.deploy import coder
from splitter.deploy.coder import SMALL_STREAM, SYMBOL_LIMIT, max_string_bytes

__all__ = ["SYMBOL_LIMIT", "SMALL_STREAM", "Tables", "encode", "decode", "max_string_bytes",
           "resize_tables_on_load"]


class Tables(coder.Tables):
    """:class:`splitter.deploy.coder.Tables`, read from a CompressAI entropy model."""

    @classmethod
    def of(cls, model: torch.nn.Module) -> coder.Tables:
        """Read ``_quantized_cdf``, ``_cdf_length``, ``_offset`` of a CompressAI entropy model.

        Cached on the model until a buffer is replaced (``update()``) or written in place
        (``load_state_dict``): a Gaussian table is ~200k ints, too many to list per call.
        """
        bufs = (model._quantized_cdf, model._cdf_length, model._offset)
        if any(b.numel() == 0 for b in bufs):
            raise ValueError("entropy coder tables are empty; call bottleneck.update() after "
                             "training (or load a state dict that has them)")
        key = tuple((b.data_ptr(), b._version) for b in bufs)
        cached = model.__dict__.get("_coder_tables")
        if cached is None or cached[0] != key:
            cdf, lengths, offsets = (b.detach().cpu().numpy() for b in bufs)
            cached = (key, cls(cdf, lengths, offsets))
            model.__dict__["_coder_tables"] = cached
        return cached[1]


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().reshape(-1).to(torch.int64).numpy()


def encode(symbols: torch.Tensor, indexes: torch.Tensor, tables: coder.Tables,
           limit: int = SYMBOL_LIMIT) -> bytes:
    """Integer symbols ``(n,)`` coded with table ``indexes[k]`` each -> one string."""
    return coder.encode(_np(symbols), _np(indexes), tables, limit)


def decode(string: bytes, indexes: torch.Tensor, tables: coder.Tables,
           limit: int = SYMBOL_LIMIT) -> torch.Tensor:
    """Inverse of :func:`encode`: one string -> int32 symbols ``(n,)``; ``ValueError`` if malformed."""
    return torch.from_numpy(coder.decode(string, _np(indexes), tables, limit))


def resize_tables_on_load(module: torch.nn.Module) -> None:
    """Let ``load_state_dict`` fill coder tables that are still empty in ``module``.

    CompressAI's entropy models keep their CDFs in buffers that are empty until
    ``update()``; a plain ``load_state_dict`` fails on the size mismatch. CompressAI's own
    ``update_registered_buffers`` resizes them (its ``CompressionModel.load_state_dict``
    calls it); this pre-hook calls it for every entropy model inside ``module``.
    """
    from bottlenecks._compressai import EntropyModel, update_registered_buffers

    def hook(state_dict, prefix, *_):
        for name, em in module.named_modules():
            if not isinstance(em, EntropyModel):
                continue
            key = prefix + name
            present = [n for n, _ in em.named_buffers(recurse=False)
                       if n in ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")
                       and f"{key}.{n}" in state_dict]
            update_registered_buffers(em, key, present, state_dict)

    module._register_load_state_dict_pre_hook(hook)
