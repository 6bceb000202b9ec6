"""Bottleneck modules and their registry: ``bottlenecks.create("crbq", in_shape=..., channels=12)``.

Each kind lives in its own module and registers itself with ``@register("name")``.
"""

from __future__ import annotations

import importlib

from bottlenecks.base import REGISTRY, Bottleneck, BottleneckOutput, create, register

__all__ = ["Bottleneck", "BottleneckOutput", "REGISTRY", "create", "register", "KINDS"]

# Kind name -> module that defines it (imported on first use, so torch-only kinds stay cheap).
KINDS = {
    "identity": "bottlenecks.identity",
    "crbq": "bottlenecks.crbq",
    "entropy": "bottlenecks.entropy",
    "hyperprior": "bottlenecks.hyperprior",
    "jpeg": "bottlenecks.codec",
    "webp": "bottlenecks.codec",
}


def _load_all() -> None:
    for mod in dict.fromkeys(KINDS.values()):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:  # a real missing dependency, not a kind still to be written
                raise
