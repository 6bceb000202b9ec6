"""Training stages: what each one trains, with which optimizers and learning-rate schedule.

::

    Stage(kind="features" | "kd", epochs, lr, beta, ...)   pydantic, validated
        ─► set_trainable(split, stage)   requires_grad + train/eval per role
        ─► optimizers(split, stage)      AdamW on encoder/decoder (+ post), Adam on quantiles
        ─► schedules(opts, total, ...)   torch LambdaLR: cosine from lr to min_lr · lr

Roles of the bottleneck's parameters (:func:`bottleneck_parts`): ``encoder``, ``decoder``,
``entropy`` (priors, hyper-networks) and ``aux`` (CompressAI ``quantiles``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from splitter.errors import ConfigError

__all__ = ["Stage", "KIND_DEFAULTS", "DEFAULT_STAGES", "resolve_stages", "bottleneck_parts",
           "set_trainable", "optimizers", "schedules", "cosine_factor"]

# Defaults that differ by stage kind (validated end to end on digits; see cli/demo_run.py).
KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "features": {"epochs": 20, "lr": 3e-3},
    "kd": {"epochs": 6, "lr": 3e-4},
}


class Stage(BaseModel):
    """One training stage. ``kind``: ``features`` (stage 1) or ``kd`` (stage 2).

    ``epochs`` and ``lr`` default by kind (:data:`KIND_DEFAULTS`); the rest are shared.
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["features", "kd"]
    epochs: int = Field(20, ge=0, description="passes over the training data")
    steps: int | None = Field(None, ge=0, description="optimizer steps; overrides epochs")
    lr: float = Field(3e-3, gt=0, description="encoder / decoder (and post, in kd)")
    entropy_lr: float = Field(1e-2, gt=0, description="the entropy model's own parameters")
    aux_lr: float = Field(1e-2, gt=0, description="CompressAI quantiles (aux loss)")
    beta: float = Field(0.002, ge=0, description="weight of the rate, per bit per sample")
    beta_warmup: float = Field(0.0, ge=0, le=1, description="features: fraction of the stage "
                                                            "over which β ramps up from 0")
    alpha: float = Field(0.5, ge=0, le=1, description="kd: weight of CE vs the teacher's KL "
                                                      "(0 on data without labels)")
    tau: float = Field(4.0, gt=0, description="kd temperature")
    match_output: float = Field(0.0, ge=0, description="features: weight of τ²·KL to the "
                                                       "teacher's output (match later stages)")
    min_lr: float = Field(0.05, ge=0, le=1, description="cosine schedule floor, × lr")
    clip: float | None = Field(1.0, gt=0, description="gradient norm clip (None: off)")
    weight_decay: float = Field(0.0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _kind_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("kind") in KIND_DEFAULTS:
            data = {**KIND_DEFAULTS[data["kind"]], **data}
        return data


DEFAULT_STAGES: tuple[Stage, ...] = (Stage(kind="features"), Stage(kind="kd"))


def resolve_stages(stages: Sequence[Stage | dict] | None) -> list[Stage]:
    """``stages`` as :class:`Stage` objects (default :data:`DEFAULT_STAGES`)."""
    if stages is None:
        return [s.model_copy() for s in DEFAULT_STAGES]
    out = []
    for i, s in enumerate(stages):
        if isinstance(s, Stage):
            out.append(s)
        elif isinstance(s, dict):
            try:
                out.append(Stage(**s))
            except Exception as e:  # noqa: BLE001 - pydantic ValidationError, with the key in it
                raise ConfigError(f"stage {i}: {e}") from e
        else:
            raise ConfigError(f"stage {i} must be a Stage or a dict, not {type(s).__name__}")
    return out


def bottleneck_parts(bn: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """The bottleneck's parameters by role: ``encoder``, ``decoder``, ``entropy`` (the entropy
    model: priors, hyper-networks) and ``aux`` (CompressAI ``quantiles``, own optimizer)."""
    parts: dict[str, list[tuple[str, nn.Parameter]]] = {"encoder": [], "decoder": [], "entropy": [],
                                                        "aux": []}
    for name, p in bn.named_parameters():
        top = name.split(".", 1)[0]
        if name.endswith("quantiles"):
            parts["aux"].append((name, p))
        elif top in ("encoder", "decoder"):
            parts[top].append((name, p))
        else:
            parts["entropy"].append((name, p))
    return parts


def set_trainable(split: nn.Module, stage: Stage) -> list[str]:
    """requires_grad and train/eval per the stage; returns the trained roles.

    features: the whole bottleneck trains, the model's own layers stay frozen.
    kd: the decoder and the layers after the cut train; encoder and entropy model are
    frozen bit for bit (eval-mode rounding, no noise), so the symbols stay what they were.
    """
    for p in split.parameters():
        p.requires_grad_(False)
    split.eval()  # frozen parts keep BatchNorm statistics and GDN as they are
    bn = split.bottleneck
    parts = bottleneck_parts(bn)
    bn.train()
    if stage.kind == "features":
        roles = ["encoder", "entropy", "aux", "decoder"]
    else:
        roles = ["decoder", "post"]
        for name, child in bn.named_children():
            if name != "decoder":
                child.eval()
        split.post.train()
        for p in split.post.parameters():
            p.requires_grad_(True)
    for role in roles:
        for _, p in parts.get(role, []):
            p.requires_grad_(True)
    return roles


def optimizers(split: nn.Module, stage: Stage) -> dict[str, torch.optim.Optimizer]:
    """``main`` (AdamW: encoder/decoder at ``lr``, entropy model at ``entropy_lr``; in kd the
    decoder and post) and ``aux`` (Adam on the quantiles, features only)."""
    parts = bottleneck_parts(split.bottleneck)
    groups: list[dict[str, Any]] = []
    if stage.kind == "features":
        main = [p for _, p in parts["encoder"] + parts["decoder"]]
        if main:
            groups.append({"params": main, "lr": stage.lr})
        ent = [p for _, p in parts["entropy"]]
        if ent:
            groups.append({"params": ent, "lr": stage.entropy_lr})
    else:
        main = [p for _, p in parts["decoder"]] + [p for p in split.post.parameters()]
        if main:
            groups.append({"params": main, "lr": stage.lr})
    opts: dict[str, torch.optim.Optimizer] = {}
    if groups:
        opts["main"] = torch.optim.AdamW(groups, weight_decay=stage.weight_decay)
    aux = [p for _, p in parts["aux"]] if stage.kind == "features" else []
    if aux:
        opts["aux"] = torch.optim.Adam([{"params": aux, "lr": stage.aux_lr}])
    for o in opts.values():  # the schedule's base, also after a resume restored decayed lrs
        for g in o.param_groups:
            g["initial_lr"] = g["lr"] = g.setdefault("base_lr", g["lr"])
    return opts


def cosine_factor(step: int, total: int, floor: float) -> float:
    """Cosine from 1 to ``floor`` over ``total`` steps."""
    if total <= 1:
        return 1.0
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * step / total))


def schedules(opts: dict[str, torch.optim.Optimizer], total: int, floor: float,
              start: int = 0) -> list[torch.optim.lr_scheduler.LRScheduler]:
    """One torch ``LambdaLR`` per optimizer: lr = base · cosine_factor(step), from ``start``
    (a resumed stage continues the curve where it stopped)."""
    return [torch.optim.lr_scheduler.LambdaLR(
        o, lambda s: cosine_factor(start + s, total, floor)) for o in opts.values()]
