"""Bottleneck modules and their registry: ``bottlenecks.create("crbq", in_shape=..., channels=12)``.

::

    wire.py   name ─► wire id, streams                                  (no torch, no pydantic)
    spec.py   KINDS: name ─► wire id, streams, modes, typed options     (no torch)
    base.py   Bottleneck interface, REGISTRY, create()                   (torch)
    <kind>.py one module per kind, ``@register("name")``

Importing this package loads neither torch nor pydantic: the torch side (``Bottleneck``,
``create``, ...) and the typed spec side (:data:`KINDS`, ``BottleneckSpec``) are imported on
first use (PEP 562), so the payload format and a device runtime read ``bottlenecks.wire``
alone.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Bottleneck", "BottleneckOutput", "REGISTRY", "create", "register", "KINDS", "Kind",
           "BottleneckSpec", "kind_info", "load_all"]

_TORCH_SIDE = ("Bottleneck", "BottleneckOutput", "REGISTRY", "create", "register")
_SPEC_SIDE = ("KINDS", "BottleneckSpec", "Kind", "kind_info")  # pydantic: on first use too


def load_all() -> None:
    """Import every kind's module, so :data:`REGISTRY` holds every class."""
    from bottlenecks.spec import KINDS

    for mod in dict.fromkeys(k.module for k in KINDS.values()):
        importlib.import_module(mod)


_load_all = load_all  # the name older callers used


def __getattr__(name: str) -> Any:
    if name in _TORCH_SIDE:
        return getattr(importlib.import_module("bottlenecks.base"), name)
    if name in _SPEC_SIDE:
        return getattr(importlib.import_module("bottlenecks.spec"), name)
    raise AttributeError(f"module 'bottlenecks' has no attribute {name!r}")
