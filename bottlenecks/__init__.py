"""Bottleneck modules and their registry: ``bottlenecks.create("crbq", in_shape=..., channels=12)``.

::

    spec.py   KINDS: name ─► wire id, streams, modes, typed options     (no torch)
    base.py   Bottleneck interface, REGISTRY, create()                   (torch)
    <kind>.py one module per kind, ``@register("name")``

Importing this package loads no torch: the torch side (``Bottleneck``, ``create``, ...)
is imported on first use (PEP 562), so the payload format and a device runtime can read
:data:`KINDS` alone.
"""

from __future__ import annotations

import importlib
from typing import Any

from bottlenecks.spec import KINDS, BottleneckSpec, Kind, kind_info

__all__ = ["Bottleneck", "BottleneckOutput", "REGISTRY", "create", "register", "KINDS", "Kind",
           "BottleneckSpec", "kind_info", "load_all"]

_TORCH_SIDE = ("Bottleneck", "BottleneckOutput", "REGISTRY", "create", "register")


def load_all() -> None:
    """Import every kind's module, so :data:`REGISTRY` holds every class."""
    for mod in dict.fromkeys(k.module for k in KINDS.values()):
        importlib.import_module(mod)


_load_all = load_all  # the name older callers used


def __getattr__(name: str) -> Any:
    if name in _TORCH_SIDE:
        return getattr(importlib.import_module("bottlenecks.base"), name)
    raise AttributeError(f"module 'bottlenecks' has no attribute {name!r}")
