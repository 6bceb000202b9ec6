"""Errors a user can hit. Each message says what went wrong and what to do next.

Every class derives from :class:`SplitterError`, so ``except splitter.errors.SplitterError``
catches all of them; each also derives from the builtin a caller would expect
(``KeyError`` for an unknown name, ``ValueError`` for a bad value).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "SplitterError",
    "ModelError",
    "TraceError",
    "UnknownLayerError",
    "CutError",
    "InputError",
    "InputShapeError",
    "InputValueError",
    "BottleneckError",
    "PayloadError",
    "BundleError",
    "ConfigError",
    "PassError",
    "PreconditionError",
    "PostconditionError",
    "closest",
]


def closest(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """The ``n`` candidates closest to ``name``, best first (never empty if candidates is not)."""
    pool = list(dict.fromkeys(candidates))
    found = difflib.get_close_matches(name, pool, n=n, cutoff=0.0)
    return found[:n]


class SplitterError(Exception):
    """Base of every error splitter raises on purpose."""


class ModelError(SplitterError, ValueError):
    """A model name, import path or checkpoint could not be turned into a model."""


class TraceError(SplitterError, RuntimeError):
    """Neither frontend could trace the model.

    ``attempts`` maps each frontend tried to the failure it met (operation and source line).
    """

    def __init__(self, message: str, attempts: dict[str, str] | None = None):
        super().__init__(message)
        self.attempts = attempts or {}


class UnknownLayerError(SplitterError, KeyError):
    """``at=`` names no module path, FX node or cut point; ``suggestions`` holds the closest."""

    def __init__(self, name: str, suggestions: list[str]):
        self.name = name
        self.suggestions = suggestions
        hint = ", ".join(repr(s) for s in suggestions) if suggestions else "(none)"
        super().__init__(
            f"unknown layer {name!r}; the closest valid names are {hint}. "
            f"Run `splitter points MODEL` to list every cut point."
        )

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


class CutError(SplitterError, ValueError):
    """The requested cut exists but cannot be used the way it was asked (e.g. multi-tensor)."""


class InputError(SplitterError, ValueError):
    """An input cannot be encoded as it is (base of the two below)."""


class InputShapeError(InputError):
    """An input does not have the shape the traced model expects."""


class InputValueError(InputError):
    """An input has the right shape but a wrong dtype or non-finite values."""


class BottleneckError(SplitterError, ValueError):
    """A bottleneck kind or option that cannot work at this cut; ``option`` names the option
    at fault, when one is."""

    def __init__(self, message: str, option: str | None = None):
        super().__init__(message)
        self.option = option


class PayloadError(SplitterError, ValueError):
    """A payload is malformed, truncated, oversized or not ours. Nothing was allocated for it."""


class BundleError(SplitterError, ValueError):
    """A bundle directory is incomplete, tampered with or of an unknown schema; names the file."""

    def __init__(self, message: str, file: str | None = None):
        super().__init__(message)
        self.file = file


class ConfigError(SplitterError, ValueError):
    """A configuration file has a wrong key or type; the message points at the key and line."""


class PassError(SplitterError, RuntimeError):
    """A graph pass met a graph it cannot work on (the pass and the graph are named)."""


class PreconditionError(PassError):
    """A pass's ``requires`` failed: its input graph is not what the pass needs."""


class PostconditionError(PassError):
    """A pass's ``ensures`` failed: its output graph does not hold what the pass promises."""
