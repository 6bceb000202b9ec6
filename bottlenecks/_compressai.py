"""The CompressAI pieces the bottlenecks use, imported once and quietly.

Importing compressai imports torch_geometric, which calls ``torch.jit.script`` at import
time; torch >= 2.10 answers with a FutureWarning on every ``splitter`` command. The
warning is about a library we do not call, so it is silenced here, for this import only.
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated",
                            category=FutureWarning)
    from compressai.entropy_models import EntropyBottleneck, EntropyModel, GaussianConditional
    from compressai.layers import GDN
    from compressai.models.utils import update_registered_buffers

__all__ = ["EntropyBottleneck", "EntropyModel", "GaussianConditional", "GDN",
           "update_registered_buffers"]
