"""What the payload format knows of each bottleneck kind: its id byte and strings per sample.

::

    WIRE[kind] = (wire_id, streams) ─► bottlenecks.spec.KINDS (the kinds' one declaration)
                                    ─► splitter.deploy.payload (the header's kind byte)

Kept apart from :mod:`bottlenecks.spec` so that a device runtime reads it without pydantic
(spec's typed options are pydantic models); spec builds every ``Kind`` from this table.
"""

from __future__ import annotations

__all__ = ["WIRE"]

WIRE: dict[str, tuple[int, int]] = {
    "identity": (1, 1),
    "crbq": (2, 1),
    "entropy": (3, 1),
    "hyperprior": (4, 2),  # y's string and z's
    "jpeg": (5, 1),
    "webp": (6, 1),
}
