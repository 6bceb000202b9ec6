"""What each bottleneck kind is, declared once and without torch, and ``BottleneckSpec``.

::

    "crbq:channels=12" | {"kind": "crbq", "channels": 12} | BottleneckSpec(kind="crbq", ...)
        ─► BottleneckSpec.of ─► KINDS["crbq"].options (pydantic, extra="forbid") ─► validated
        ─► bottlenecks.create(...)          the kind's torch module, imported on first use
    KINDS[kind].wire_id, .streams (from bottlenecks/wire.py, which the payload format reads)

Every place that names a kind (split, sweep, YAML config, manifest, payload, CLI) goes
through this module, so a typo is an error that names the closest valid option, a wrong
type or range says what is allowed, and the same rule holds for Python, YAML and the CLI.
This module imports pydantic and ``splitter.errors`` only: a device runtime reads it
without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bottlenecks.wire import WIRE
from splitter.errors import BottleneckError, closest

__all__ = ["Kind", "KINDS", "kind_info", "BottleneckSpec", "Options", "IdentityOptions",
           "LatentOptions", "HyperpriorOptions", "CodecOptions", "REPLACE_CHANNELS"]

# Entropic Student (Matsubara et al. 2022): 24 latent channels for its ResNet backbones;
# the default of mode="replace" (capped at the cut's channels).
REPLACE_CHANNELS = 24


class Options(BaseModel):
    """Options every kind takes. Unknown keys are errors, never silently dropped."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    layout: Literal["nchw", "nhwc", "nlc"] | None = Field(
        None, description="layout of the cut tensor; inferred from its shape when omitted")


class IdentityOptions(Options):
    dtype: Literal["fp32", "fp16", "float32", "float16"] = Field(
        "fp32", description="wire dtype of the raw tensor")


class LatentOptions(Options):
    channels: int | None = Field(
        None, ge=1, description="latent channels K (insert: default C // 4; replace: default "
                                f"min({REPLACE_CHANNELS}, C)); at most the cut's C")


class HyperpriorOptions(LatentOptions):
    hyper_channels: int | None = Field(None, ge=1, description="channels of z (default max(1, K // 2))")
    scale_levels: int = Field(64, ge=2, le=1024, description="Gaussian scale-table size")


class CodecOptions(Options):
    quality: int = Field(75, ge=1, le=100, description="JPEG/WebP quality")
    channels: int | None = Field(None, ge=1, description="must equal the cut's channels (all are coded)")


@dataclass(frozen=True)
class Kind:
    """One registered kind: its name, wire id, strings per sample, modes and options."""

    name: str
    wire_id: int
    streams: int
    module: str
    options: type[Options]
    modes: tuple[str, ...] = ("insert",)
    lossless: bool = True  # False: compress() loses information (image codecs)

    def option_names(self) -> list[str]:
        return sorted(self.options.model_fields)


KINDS: dict[str, Kind] = {k.name: k for k in (  # wire id and streams: bottlenecks/wire.py
    Kind("identity", *WIRE["identity"], "bottlenecks.identity", IdentityOptions),
    Kind("crbq", *WIRE["crbq"], "bottlenecks.crbq", LatentOptions),
    Kind("entropy", *WIRE["entropy"], "bottlenecks.entropy", LatentOptions, ("insert", "replace")),
    Kind("hyperprior", *WIRE["hyperprior"], "bottlenecks.hyperprior", HyperpriorOptions,
         ("insert", "replace")),
    Kind("jpeg", *WIRE["jpeg"], "bottlenecks.codec", CodecOptions, lossless=False),
    Kind("webp", *WIRE["webp"], "bottlenecks.codec", CodecOptions, lossless=False),
)}
if set(KINDS) != set(WIRE):
    raise ImportError(f"bottlenecks/wire.py and spec.py name other kinds: {sorted(set(KINDS) ^ set(WIRE))}")


def kind_info(name: str) -> Kind:
    """The :class:`Kind` called ``name``, or a :class:`BottleneckError` listing the closest."""
    info = KINDS.get(name) if isinstance(name, str) else None
    if info is None:
        raise BottleneckError(f"unknown bottleneck {name!r}; registered kinds: {sorted(KINDS)} "
                              f"(closest: {closest(str(name), KINDS, 3)}); pass one of those as "
                              f"bottleneck=")
    return info


def _allowed(info: Kind, field: str) -> str:
    f = info.options.model_fields.get(field)
    return f.description or "" if f is not None else ""


def _option_error(info: Kind, err: ValidationError) -> BottleneckError:
    """One readable message for every problem pydantic found in a kind's options."""
    parts, first = [], None
    for e in err.errors():
        key = str(e["loc"][0]) if e["loc"] else "?"
        first = first or key
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown option {key!r} for {info.name} (did you mean "
                         f"{closest(key, info.option_names(), 1)[0]!r}? valid options: "
                         f"{', '.join(info.option_names())})")
        else:
            parts.append(f"{info.name} option {key}={e.get('input')!r}: {e['msg']} "
                         f"({_allowed(info, key)})")
    return BottleneckError("; ".join(parts), option=first)


def _unwrap(err: ValidationError) -> BottleneckError:
    for e in err.errors():
        cause = (e.get("ctx") or {}).get("error")
        if isinstance(cause, BottleneckError):
            return cause
    return BottleneckError(f"bad bottleneck spec: {err}")


class BottleneckSpec(BaseModel):
    """A bottleneck as a user asks for it: ``kind``, ``mode`` and the kind's validated options.

    The one spec for :func:`splitter.split`, :func:`splitter.sweep`, the YAML config and the
    bundle manifest. ``options`` holds only what was given (validated and converted: the CLI's
    ``"12"`` becomes ``12``); defaults stay with the kind.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str
    mode: Literal["insert", "replace"] = "insert"
    options: dict[str, Any] = Field(default_factory=dict)

    def __init__(self, **data: Any):
        # pydantic wraps a validator's ValueError in a ValidationError; hand the caller our own
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise _unwrap(e) from None

    @model_validator(mode="before")
    @classmethod
    def _check(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        info = kind_info(data.get("kind"))
        mode = data.get("mode", "insert")
        if mode not in ("insert", "replace"):
            raise BottleneckError(f"mode must be 'insert' or 'replace', not {mode!r}")
        if mode not in info.modes:
            raise BottleneckError(f"{info.name} cannot replace the head (mode='replace'); use "
                                  f"bottleneck='entropy' or 'hyperprior' for an Entropic Student, "
                                  f"or mode='insert'")
        options = data.get("options") or {}
        try:
            parsed = info.options.model_validate(options)
        except ValidationError as e:
            raise _option_error(info, e) from None
        return {**data, "options": parsed.model_dump(exclude_unset=True)}

    # -- reading -------------------------------------------------------------------------------
    @property
    def info(self) -> Kind:
        return KINDS[self.kind]

    def resolved(self) -> Options:
        """The options with the kind's defaults filled in."""
        return self.info.options.model_validate(self.options)

    @property
    def label(self) -> str:
        """``kind[:k=v,...]``, readable back by :meth:`parse`."""
        opts = ({"mode": self.mode} if self.mode != "insert" else {}) | dict(self.options)
        return self.kind + (":" + ",".join(f"{k}={v}" for k, v in opts.items()) if opts else "")

    # -- writing ------------------------------------------------------------------------------
    @classmethod
    def parse(cls, text: str) -> BottleneckSpec:
        """``KIND[:k=v,...]`` (the CLI's form); ``mode=`` may stand among the options."""
        kind, _, rest = str(text).partition(":")
        if not kind.strip():
            raise BottleneckError(f"bottleneck spec {text!r} has no kind; write e.g. crbq:channels=12")
        opts: dict[str, Any] = {}
        for item in filter(None, (s.strip() for s in rest.split(","))):
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise BottleneckError(f"bottleneck option {item!r} in {text!r} is not key=value; "
                                      f"write e.g. {kind}:channels=12,mode=replace")
            opts[key.strip()] = value.strip()
        mode = opts.pop("mode", "insert")
        return cls(kind=kind.strip(), mode=mode, options=opts)

    @classmethod
    def of(cls, spec: Any, *, mode: str | None = None, **options: Any) -> BottleneckSpec:
        """A spec from a string, a dict (``{"kind": ..., "mode": ..., **options}``), a
        ``(kind, options)`` pair or a spec; ``mode`` / ``options`` given here are added."""
        if isinstance(spec, BottleneckSpec):
            base = spec
        elif isinstance(spec, str) and ":" in spec:
            base = cls.parse(spec)
        elif isinstance(spec, str):
            base = None
            data = {"kind": spec}
        elif isinstance(spec, dict):
            base = None
            data = dict(spec)
        elif isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[1], dict):
            base = None
            data = {"kind": spec[0], **spec[1]}
        else:
            raise BottleneckError(f"cannot read bottleneck spec {spec!r}; use 'kind:k=v,...', "
                                  f"{{'kind': ..., ...}} or (kind, options)")
        if base is not None:
            data = {"kind": base.kind, "mode": base.mode, **base.options}
        if "kind" not in data:
            raise BottleneckError(f"bottleneck spec {spec!r} needs a 'kind' key")
        if isinstance(data.get("options"), dict):  # {"kind", "mode", "options": {...}}
            data = {**{k: v for k, v in data.items() if k != "options"}, **data["options"]}
        kind = data.pop("kind")
        m = mode if mode is not None else data.pop("mode", "insert")
        data.pop("mode", None)
        return cls(kind=kind, mode=m, options={**data, **options})
