"""Checkpoints of a fitted :class:`~splitter.compile.split.Split`: safetensors only, no pickle.

::

    out/
      split.safetensors        the split's weights after fitting (coder tables included)
      checkpoint.safetensors   weights while fitting      ┐ written together,
      optimizer.safetensors    optimizer state tensors    │ replaced atomically,
      state.json               stage, step, variance, hyper-parameters, history ┘ rank 0 only

Weights are the ``pre``, ``bottleneck`` and ``post`` modules of the split (``head`` and
``tail`` share their tensors), each tensor stored once even where modules share it.
Optimizer state is ``torch.optim.Optimizer.state_dict()`` split into its tensors
(safetensors) and its plain values (JSON).
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from splitter.errors import SplitterError

__all__ = ["split_state", "save_split", "load_split", "save_optimizers", "load_optimizers", "write_text",
           "write_json", "read_json", "WEIGHTS", "CHECKPOINT", "OPTIMIZER", "STATE"]

WEIGHTS = "split.safetensors"
CHECKPOINT = "checkpoint.safetensors"
OPTIMIZER = "optimizer.safetensors"
STATE = "state.json"
_PARTS = ("pre", "bottleneck", "post")


def split_state(split: nn.Module) -> dict[str, torch.Tensor]:
    """``{"pre.*", "bottleneck.*", "post.*": tensor}``, each shared tensor once (first name wins)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    for part in _PARTS:
        module = getattr(split, part, None)
        if module is None:
            continue
        for name, t in module.state_dict().items():
            if t.numel():  # empty tensors all sit at address 0: never "shared"
                key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
                if key in seen:
                    continue
                seen.add(key)
            out[f"{part}.{name}"] = t.detach().cpu().contiguous()
    return out


def _atomic(path: str, write) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=os.path.basename(path))
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_split(split: nn.Module, path: str, metadata: dict[str, str] | None = None) -> None:
    """Write the split's weights to ``path`` (safetensors), atomically."""
    state = split_state(split)
    _atomic(path, lambda p: save_file(state, p, metadata=metadata))


def _load_into(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    # Coder tables (CompressAI CDF buffers) change size at update(): resize before loading.
    buffers = dict(module.named_buffers())
    for name, buf in buffers.items():
        if name in state and tuple(state[name].shape) != tuple(buf.shape):
            owner_name, _, leaf = name.rpartition(".")
            owner = module.get_submodule(owner_name) if owner_name else module
            owner._buffers[leaf] = torch.empty_like(state[name], device=buf.device)
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if unexpected:
        raise SplitterError(f"{what} holds {len(unexpected)} tensors this split does not have, "
                            f"e.g. {unexpected[:3]}; was it written for another model, cut or "
                            f"bottleneck?")
    wrong = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in own.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        listed = "; ".join(f"{k}: {f} in the file, {m} in the split" for k, f, m in wrong[:4])
        raise SplitterError(f"{what} does not fit this split: {len(wrong)} tensors differ in "
                            f"shape ({listed}). Build the split as the file was written: same "
                            f"model and model_args, cut and bottleneck options (e.g. channels=).")
    # Tensors shared with an earlier part were stored once, under that part's name.
    module.load_state_dict({k: state[k] for k in own if k in state}, strict=False)
    del missing  # shared tensors; checked by the caller against the whole file


def load_split(split: nn.Module, path: str) -> dict[str, str]:
    """Load weights written by :func:`save_split` into ``split``; returns the file's metadata."""
    if not os.path.exists(path):
        raise SplitterError(f"no weights at {path!r}; run `splitter fit` first or give the "
                            f"split.safetensors it wrote")
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        metadata = dict(f.metadata() or {})
    state = load_file(path)
    covered: set[str] = set()
    for part in _PARTS:
        module = getattr(split, part, None)
        if module is None:
            continue
        sub = {k[len(part) + 1:]: v for k, v in state.items() if k.startswith(part + ".")}
        _load_into(module, sub, path)
        covered.update(f"{part}.{k}" for k in sub)
    extra = sorted(set(state) - covered)
    if extra:
        raise SplitterError(f"{path} holds tensors outside pre/bottleneck/post: {extra[:3]}")
    # Every tensor of the split is now either loaded or shares storage with a loaded one.
    have = split_state(split)
    absent = sorted(set(have) - set(state))
    if absent:
        raise SplitterError(f"{path} lacks {len(absent)} tensors of this split, e.g. {absent[:3]}; "
                            f"was it written for another model, cut or bottleneck?")
    return metadata


def save_optimizers(optimizers: dict[str, torch.optim.Optimizer], path: str) -> dict[str, Any]:
    """Write each optimizer's state tensors to ``path``; return the JSON-able remainder."""
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, Any] = {}
    for oname, opt in optimizers.items():
        sd = opt.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for pid, st in sd["state"].items():
            for k, v in st.items():
                if isinstance(v, torch.Tensor):
                    tensors[f"{oname}.{pid}.{k}"] = v.detach().cpu().contiguous()
                else:
                    scalars.setdefault(str(pid), {})[k] = v
        plain[oname] = {"param_groups": sd["param_groups"], "scalars": scalars}
    _atomic(path, lambda p: save_file(tensors, p))
    return plain


def load_optimizers(optimizers: dict[str, torch.optim.Optimizer], path: str,
                    plain: dict[str, Any]) -> None:
    """Inverse of :func:`save_optimizers` (tensors go to each parameter's device)."""
    tensors = load_file(path)
    for oname, opt in optimizers.items():
        info = plain.get(oname)
        if info is None:
            raise SplitterError(f"{path}: no state for optimizer {oname!r}; delete the checkpoint "
                                f"or fit with resume=False")
        params = {i: p for i, p in enumerate(p for g in opt.param_groups for p in g["params"])}
        state: dict[int, dict[str, Any]] = {}
        for key, v in tensors.items():
            on, pid, k = key.split(".", 2)
            if on == oname:
                dev = params[int(pid)].device if k != "step" else v.device
                state.setdefault(int(pid), {})[k] = v.to(dev)
        for pid, sc in info["scalars"].items():
            state.setdefault(int(pid), {}).update(sc)
        opt.load_state_dict({"state": state, "param_groups": info["param_groups"]})


def write_json(obj: Any, path: str) -> None:
    """``json.dump`` to ``path`` atomically, indented."""
    write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", path)


def write_text(text: str, path: str) -> None:
    """``text`` to ``path`` atomically (never half-written)."""

    def write(p: str) -> None:
        with open(p, "w") as f:
            f.write(text)

    _atomic(path, write)


def read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)
