"""Frontend: a model (nn.Module, timm name or ``package.module:factory``) -> annotated FX graph.

Two frontends, tried in order:

1. ``fx``: ``torch.fx`` symbolic tracing with timm's registered leaf modules and autowrapped
   functions. Module-level nodes, readable names, any batch size.
2. ``export``: ``torch.export`` (non-strict) and its ``.module()``; ATen-level, traces data-
   dependent Python that FX cannot. The graph is specialised to the example batch size.

The user's model is deep-copied first, so tracing (and everything built on the graph) never
modifies it.
"""

from __future__ import annotations

import copy
import functools
import importlib
import inspect
import linecache
import operator
import traceback
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from passes.annotate import Annotate, BatchProbe, held_stderr
from passes.cuts import CutPoint, find_cut_points
from splitter.errors import InputShapeError, ModelError, TraceError, UnknownLayerError, closest

__all__ = ["Graph", "trace", "load_model", "default_input_shape"]


def load_model(
    model: nn.Module | str,
    *,
    pretrained: bool = False,
    checkpoint: str | None = None,
    **kwargs: Any,
) -> tuple[nn.Module, str]:
    """Resolve ``model`` to ``(nn.Module, display name)``.

    ``model`` is a module, a timm model name (``resnet50``) or an import path
    ``package.module:factory``. ``kwargs`` are the model's arguments (``--model-args k=v``,
    the YAML's ``model_args``): passed to the factory or to ``timm.create_model``.
    ``checkpoint`` is a state-dict file (safetensors or a torch ``.pt`` loaded with
    ``weights_only=True``). Every failure is a :class:`ModelError` saying what to change.
    """
    if isinstance(model, nn.Module):
        if pretrained:
            raise ModelError(f"pretrained=True loads timm's weights by name; this is a built "
                             f"{type(model).__name__}: load its weights yourself or pass "
                             f"checkpoint=FILE")
        if kwargs:
            raise ModelError(f"model arguments {_kv(kwargs)} apply to a model name or "
                             f"'package.module:factory', not to a built {type(model).__name__}; "
                             f"build the module with them instead")
        module, name = model, type(model).__name__
    elif isinstance(model, str) and ":" in model:
        if pretrained:
            raise ModelError(f"--pretrained (pretrained=True) loads timm's weights; {model!r} is a "
                             f"factory: pass its own argument instead, e.g. --model-args "
                             f"weights=DEFAULT, or load a file with --checkpoint FILE")
        mod_name, _, attr = model.partition(":")
        try:
            factory = getattr(importlib.import_module(mod_name), attr)
        except (ImportError, AttributeError) as e:
            raise ModelError(
                f"cannot import {model!r}: {e}. Use the form 'package.module:factory' with a "
                f"module on the Python path and a callable that returns an nn.Module."
            ) from e
        module, name = _build(model, factory, kwargs), model
        if not isinstance(module, nn.Module):
            raise ModelError(f"{model!r} returned {type(module).__name__}, not an nn.Module")
    elif isinstance(model, str):
        import timm

        if model not in timm.list_models() and not timm.is_model(model):
            raise ModelError(
                f"unknown timm model {model!r}; closest: {closest(model, timm.list_models())}. "
                f"Pass a timm name, an nn.Module or 'package.module:factory'."
            )
        create = functools.partial(timm.create_model, model, pretrained=pretrained)
        module, name = _build(model, create, kwargs), model
    else:
        raise ModelError(f"expected an nn.Module or a string, got {type(model).__name__}")
    if checkpoint:
        _load_checkpoint(module, checkpoint)
    return module, name


def _kv(kwargs: dict[str, Any]) -> str:
    return ",".join(f"{k}={v!r}" for k, v in kwargs.items()) or "(none)"


# Exceptions (or causes) that mean "no network": huggingface_hub, httpx, requests, urllib.
_OFFLINE = {"LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectError", "ConnectionError",
            "ConnectTimeout", "URLError", "gaierror", "ProxyError", "NameResolutionError"}


def _offline(e: BaseException) -> bool:
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if any(c.__name__ in _OFFLINE for c in type(cur).__mro__):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _build(name: str, factory: Any, kwargs: dict[str, Any]) -> nn.Module:
    """``factory(**kwargs)``, its failures turned into a :class:`ModelError` with a next step."""
    try:
        return factory(**kwargs)
    except Exception as e:  # noqa: BLE001 - the factory is user code: every failure is reported
        if _offline(e):
            build = ("leave out --pretrained" if ":" not in name else
                     "build it without downloading with --model-args weights=None (and "
                     "weights_backbone=None where the factory has it)")
            raise ModelError(
                f"the weights of {name} cannot be downloaded here ({type(e).__name__}): "
                f"{build}, and pass weights saved elsewhere with --checkpoint FILE "
                f"(Python: checkpoint=FILE)."
            ) from e
        hint = ""
        if isinstance(e, TypeError) and kwargs:
            try:
                sig = f"{name.rpartition(':')[2]}{inspect.signature(factory)}" if ":" in name else name
            except (TypeError, ValueError):
                sig = name
            hint = f" Check the model arguments {_kv(kwargs)} against {sig}."
        else:
            hint = " Check the model and its arguments (--model-args k=v)."
        raise ModelError(f"building {name} failed: {_describe_failure(e)}.{hint}") from e


def _load_checkpoint(module: nn.Module, path: str) -> None:
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state:
                state = state["state_dict"]
            if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
                state = state["model"]
    except FileNotFoundError as e:
        raise ModelError(f"checkpoint {path!r} does not exist") from e
    except Exception as e:  # noqa: BLE001 - any unreadable file is a user error here
        raise ModelError(f"cannot read checkpoint {path!r}: {e}") from e
    if not isinstance(state, dict):
        raise ModelError(f"checkpoint {path!r} holds a {type(state).__name__}, not a state dict")
    _check_shapes(module, state, path)
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing:
        raise ModelError(
            f"checkpoint {path!r} lacks {len(missing)} weights of the model, e.g. {missing[:3]}; "
            f"is it for this architecture?"
        )
    del unexpected  # extra keys (e.g. EMA copies, optimizer state) are ignored on purpose


def _check_shapes(module: nn.Module, state: dict[str, Any], path: str) -> None:
    """Raise :class:`ModelError` naming every weight whose shape differs between file and model.

    When the mismatch is the classifier's output size (``num_classes``) the message names the
    model argument that fixes it, with the file's class count.
    """
    own = module.state_dict()
    bad = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items()
           if k in own and isinstance(v, torch.Tensor) and tuple(v.shape) != tuple(own[k].shape)]
    if not bad:
        return
    listed = "; ".join(f"{k}: {_dims(f)} in the file, {_dims(m)} in the model" for k, f, m in bad[:4])
    more = f" (and {len(bad) - 4} more)" if len(bad) > 4 else ""
    classes = _file_classes(module, bad)
    if classes is not None:
        fix = (f"The file was trained for {classes} classes: build the model to match with "
               f"--model-args num_classes={classes} (YAML: model_args: {{num_classes: {classes}}}; "
               f"Python: load_model(..., num_classes={classes})).")
    else:
        fix = ("Build the model with the arguments the checkpoint was trained with "
               "(--model-args k=v, or the YAML's model_args).")
    raise ModelError(f"checkpoint {path!r} does not fit the model: {len(bad)} weights differ in "
                     f"shape ({listed}{more}). {fix}")


def _dims(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def _file_classes(module: nn.Module, bad: list[tuple[str, tuple, tuple]]) -> int | None:
    """The checkpoint's class count when only the final classifier's output rows differ."""
    head = None
    get = getattr(module, "get_classifier", None)
    if callable(get):
        try:
            head = get()
        except Exception:  # noqa: BLE001 - a model whose get_classifier fails has none to name
            head = None
    linears = [m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if not isinstance(head, (nn.Linear, nn.Conv2d)):
        head = linears[-1] if linears else None
    if head is None:
        return None
    prefix = next((n for n, m in module.named_modules() if m is head), None)
    if prefix is None:
        return None
    keys = {f"{prefix}.weight", f"{prefix}.bias"}
    if not all(k in keys for k, _, _ in bad):
        return None
    rows = {f[0] for _, f, _ in bad}
    same_rest = all(f[1:] == m[1:] for _, f, m in bad)
    return rows.pop() if len(rows) == 1 and same_rest else None


def default_input_shape(model: nn.Module) -> tuple[int, ...]:
    """(C, H, W) from timm's ``pretrained_cfg`` when present, else (3, 224, 224)."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    shape = cfg.get("input_size") if isinstance(cfg, dict) else None
    return tuple(shape) if shape else (3, 224, 224)


def _is_image_model(module: nn.Module) -> bool:
    """A model that takes ``(C, H, W)`` samples: timm says so, or it holds a 2-D convolution."""
    cfg = getattr(module, "pretrained_cfg", None) or getattr(module, "default_cfg", None) or {}
    size = cfg.get("input_size") if isinstance(cfg, dict) else None
    if size is not None:
        return len(size) == 3
    return any(isinstance(m, nn.Conv2d) for m in module.modules())


def _check_shape(module: nn.Module, input_shape: Any) -> tuple[int, ...]:
    """``input_shape`` as a tuple of positive ints, checked against the kind of model."""
    try:
        shape = tuple(operator.index(d) for d in input_shape)
    except TypeError:
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        raise InputShapeError(f"input_shape must be one sample's positive sizes such as "
                              f"(3, 224, 224), got {input_shape!r}")
    if len(shape) != 3 and _is_image_model(module):
        want = default_input_shape(module)
        if len(want) != 3:
            want = (3, 224, 224)
        c, h, w = want
        raise InputShapeError(
            f"input size {','.join(map(str, shape))} has {len(shape)} dims, but this is an image "
            f"model: one sample is C,H,W (channels, height, width), e.g. {c},{h},{w}. Pass "
            f"--input-size {c},{h},{w} (Python: input_shape=({c}, {h}, {w})); the batch "
            f"dimension is added for you."
        )
    return shape


def _data_config(model: nn.Module) -> dict[str, Any]:
    """The preprocessing keys of timm's ``pretrained_cfg`` (empty for a model without one)."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    if not isinstance(cfg, dict):
        return {}
    keys = ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")
    return {k: cfg[k] for k in keys if cfg.get(k) is not None}


class _TimmTracer(fx.Tracer):
    """FX tracer that honours timm's no-trace registries (leaf modules, autowrapped functions)."""

    def __init__(self) -> None:
        try:
            from timm.layers import _fx as timm_fx

            leaves = tuple(timm_fx.get_notrace_modules())
            fns = tuple(f for f in timm_fx.get_notrace_functions() if callable(f))
        except ImportError:  # timm absent: plain FX
            leaves, fns = (), ()
        super().__init__(autowrap_functions=fns)
        self._leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if self._leaves and isinstance(m, self._leaves):
            return True
        return super().is_leaf_module(m, qualname)


def _trace_fx(model: nn.Module) -> fx.GraphModule:
    # Optional forward arguments (attention masks, flags) keep their defaults: the graph
    # takes the image alone, and no None/bool placeholder lives across every cut.
    params = list(inspect.signature(model.forward).parameters.values())
    concrete = {p.name: p.default for p in params[1:]
                if p.default is not inspect.Parameter.empty
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    tracer = _TimmTracer()
    graph = tracer.trace(model, concrete_args=concrete or None)
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def _trace_export(model: nn.Module, example: torch.Tensor) -> fx.GraphModule:
    # On failure torch.export prints the partial graph to stderr (1,690 lines for a
    # torchvision Faster R-CNN) before raising: held for `splitter --verbose` only.
    with held_stderr("torch.export"):
        ep = torch.export.export(model, (example,), strict=False)
    gm = ep.module()
    # Drop the pytree in/out codegen so the graph runs as a plain GraphModule.
    gm.graph._codegen = fx.graph.CodeGen()
    out = gm.graph.output_node()
    with torch.no_grad():
        single = isinstance(model(example), torch.Tensor)
    if single and isinstance(out.args[0], (tuple, list)) and len(out.args[0]) == 1:
        out.args = (out.args[0][0],)  # the model returns a tensor, not a 1-tuple
    gm.recompile()
    return gm


def _describe_failure(e: BaseException) -> str:
    """The failing operation and the innermost source line of the user's/library code."""
    frames = traceback.extract_tb(e.__traceback__)
    where = ""
    for fr in reversed(frames):
        if "/torch/" not in fr.filename and "/splitter/" not in fr.filename:
            line = (fr.line or linecache.getline(fr.filename, fr.lineno)).strip()
            where = f" at {fr.filename}:{fr.lineno} `{line}`"
            break
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if len(msg) > 160:  # a short error: its first sentence (`splitter --verbose` has the rest)
        cut = msg.find(". ", 20)
        msg = msg[:cut + 1] if 0 < cut < 160 else msg[:157] + "..."
    return f"{type(e).__name__}: {msg}{where}"


@dataclass
class Graph:
    """A traced model: the FX ``GraphModule`` with per-node meta, plus where it came from.

    ``gm.graph`` nodes carry ``meta["tensor_meta"]`` (shape, dtype), ``meta["module_path"]``,
    ``meta["flops"]`` and ``meta["weights"]`` (see :mod:`passes.annotate`).
    """

    gm: fx.GraphModule
    frontend: str  # "fx" or "export"
    input_shape: tuple[int, ...]  # per sample, without batch
    example_input: torch.Tensor
    name: str = "model"
    attempts: dict[str, str] = field(default_factory=dict)  # frontends that failed and why
    feature_modules: list[str] = field(default_factory=list)  # timm feature_info stage modules
    data_config: dict[str, Any] = field(default_factory=dict)  # timm pretrained_cfg: mean, std, crop_pct, ...

    @cached_property
    def _cuts(self) -> list[CutPoint]:
        return find_cut_points(self.gm, set(self.feature_modules))

    def cut_points(self) -> list[CutPoint]:
        """Every place the graph can be cut, in execution order, ``input`` and ``output`` included."""
        return list(self._cuts)

    def cut(self, at: str) -> CutPoint:
        """The cut point named ``at`` (module path, FX node name or alias)."""
        for cp in self._cuts:
            if at == cp.name or at in cp.aliases:
                return cp
        names = [cp.name for cp in self._cuts] + [a for cp in self._cuts for a in cp.aliases]
        raise UnknownLayerError(at, closest(at, names))

    def stages(self) -> list[CutPoint]:
        """The model's stages: the cut points ``points --stages``, ``sweep`` (its default
        points) and ``split`` name as stages, in execution order, ends excluded.

        The rule, one for every model source:

        1. timm ``feature_info`` where it names real modules: the model's own and that of
           every submodule that has one (a hybrid ViT's ResNet stem, ``patch_embed.backbone``,
           lists its stages there), each module that ends at a cut point;
        2. otherwise the top-level children (below single-child wrappers) whose output is a
           single-tensor cut, such as ``conv1 ... layer4, avgpool`` of torchvision's ResNet.
        """
        return list(self._stages)

    @cached_property
    def _stages(self) -> list[CutPoint]:
        ends = {self._cuts[0].index, self._cuts[-1].index}
        found: dict[int, CutPoint] = {}
        for m in self.feature_modules:
            try:
                cp = self.cut(m)
            except UnknownLayerError:
                continue
            if cp.index not in ends:
                found.setdefault(cp.index, cp)
        if not found:
            for m in _top_children(self.gm):
                try:
                    cp = self.cut(m)
                except UnknownLayerError:
                    continue
                if cp.single and cp.index not in ends:
                    found.setdefault(cp.index, cp)
        return [found[i] for i in sorted(found)]

    def stage_names(self) -> list[str]:
        """Names of :meth:`stages`."""
        return [cp.name for cp in self._stages]

    def check_input(self, x: torch.Tensor, *, fixed: bool = False) -> None:
        """Raise :class:`InputShapeError` when ``x`` cannot be what the model expects.

        ``fixed``: the split's tail holds traced shape values (``CutPoint.fixed_shape``), so
        only the traced per-sample shape is accepted.
        """
        want = self.input_shape
        if not isinstance(x, torch.Tensor):
            raise InputShapeError(f"expected a tensor of shape (B, {', '.join(map(str, want))}), got {type(x).__name__}")
        if x.dim() != len(want) + 1 or x.shape[1] != want[0]:
            raise InputShapeError(
                f"input has shape {tuple(x.shape)}; the model expects (B, {', '.join(map(str, want))}). "
                f"Add the batch dimension (x.unsqueeze(0)) or pass input_shape= when tracing."
            )
        if self.frontend == "export" and tuple(x.shape) != tuple(self.example_input.shape):
            raise InputShapeError(
                f"input has shape {tuple(x.shape)}; this model was traced by torch.export, which "
                f"fixed the shape to {tuple(self.example_input.shape)}."
            )
        if fixed and tuple(x.shape[1:]) != tuple(want):
            raise InputShapeError(
                f"input has shape {tuple(x.shape)}; this cut's tail holds sizes traced for "
                f"(B, {', '.join(map(str, want))}), so it takes that per-sample shape only. "
                f"Resize the input or trace again with input_shape={tuple(x.shape[1:])}."
            )

    def input_error(self, x: Any, error: BaseException) -> InputShapeError | None:
        """An :class:`InputShapeError` for a run on ``x`` that failed with ``error``, when
        ``x``'s per-sample shape is not the traced one (the likely cause); else None.

        Catches what :meth:`check_input` cannot know up front: a model that only runs at
        its traced size (a ViT's fixed patch grid) fails deep inside, and the message
        should name the shape it wants rather than the assert that fired.
        """
        if not isinstance(x, torch.Tensor) or tuple(x.shape[1:]) == tuple(self.input_shape):
            return None
        want = ", ".join(map(str, self.input_shape))
        return InputShapeError(
            f"the model failed on input of shape {tuple(x.shape)} ({_describe_failure(error)}); "
            f"it was traced with (B, {want}). Pass inputs of shape (B, {want}), or trace "
            f"again with input_shape={tuple(x.shape[1:])} if the model accepts that size."
        )


def _feature_modules(module: nn.Module) -> list[str]:
    """Module paths of timm's ``feature_info`` stages, resolved against the module tree.

    The model's own ``feature_info`` and that of every submodule holding one (a timm model
    inside another, such as the ResNet of a hybrid ViT at ``patch_embed.backbone``), each
    prefixed with that submodule's path. Some timm models name a stage relative to an inner
    trunk (``blocks.0`` for ``encoder.blocks.0``); a name that is no module path but the dotted
    suffix of exactly one is resolved to it. Names matching nothing are kept as they are
    (:meth:`Graph.stages` skips them).
    """
    paths = [n for n, _ in module.named_modules() if n]
    have = set(paths)
    out = []
    for owner, sub in module.named_modules():
        info = getattr(sub, "feature_info", None)
        info = getattr(info, "info", info)  # timm's FeatureInfo wraps the list
        if not isinstance(info, (list, tuple)):
            continue
        prefix = f"{owner}." if owner else ""
        for f in info:
            name = f.get("module") if isinstance(f, dict) else None
            if not name:
                continue
            full = prefix + name
            if full not in have:
                hits = [p for p in paths if p.endswith("." + full)]
                full = hits[0] if len(hits) == 1 else full
            out.append(full)
    return list(dict.fromkeys(out))


def _top_children(gm: fx.GraphModule) -> list[str]:
    """Child module paths of the outermost module with more than one child."""
    prefix, mod = "", gm
    while True:
        kids = [(n, m) for n, m in mod.named_children()]
        if len(kids) != 1:
            return [prefix + n for n, _ in kids]
        prefix, mod = f"{prefix}{kids[0][0]}.", kids[0][1]


def trace(
    model: nn.Module | str,
    input_shape: tuple[int, ...] | None = None,
    *,
    batch_size: int = 1,
    frontend: str = "auto",
    pretrained: bool = False,
    checkpoint: str | None = None,
    model_args: dict[str, Any] | None = None,
) -> Graph:
    """Trace ``model`` into an annotated :class:`Graph`.

    ``input_shape`` is one sample's shape, ``(C, H, W)``; by default the model's
    ``pretrained_cfg`` input size. ``frontend`` is ``"auto"`` (fx, then export), ``"fx"`` or
    ``"export"``. ``model_args`` go to the factory or ``timm.create_model`` (see
    :func:`load_model`). Raises :class:`InputShapeError` before tracing when ``input_shape``
    cannot be one sample of this model, and :class:`TraceError` naming the failing op and
    its source line when no frontend works (what torch printed on the way is logged at
    DEBUG on the ``splitter.trace`` logger: ``splitter --verbose``).
    """
    module, name = load_model(model, pretrained=pretrained, checkpoint=checkpoint,
                              **(model_args or {}))
    module = copy.deepcopy(module).eval()  # never touch the caller's model
    shape = _check_shape(module, input_shape) if input_shape else default_input_shape(module)
    example = torch.randn(batch_size, *shape, generator=torch.Generator().manual_seed(0))
    order = {"auto": ["fx", "export"], "fx": ["fx"], "export": ["export"]}.get(frontend)
    if order is None:
        raise ValueError(f"frontend must be 'auto', 'fx' or 'export', not {frontend!r}")

    attempts: dict[str, str] = {}
    for fe in order:
        try:
            gm = _trace_fx(module) if fe == "fx" else _trace_export(module, example)
            with torch.no_grad():
                Annotate(gm).run(example)
        except Exception as e:  # noqa: BLE001 - every failure is reported, then the next frontend
            attempts[fe] = _describe_failure(e)
            continue
        if fe == "fx" and any("value" in n.meta for n in gm.graph.nodes):
            # Tells Python values that follow the batch size from those that do not, so cuts
            # across an int from x.shape stay usable (passes.cuts); export graphs hold none,
            # and a graph without Python values (most CNNs) needs no second run.
            other = torch.randn(batch_size + 2, *shape, generator=torch.Generator().manual_seed(1))
            BatchProbe(gm).probe(other)
        stages = _feature_modules(module)
        return Graph(gm=gm, frontend=fe, input_shape=shape, example_input=example,
                     name=name, attempts=attempts, feature_modules=stages,
                     data_config=_data_config(module))
    tried = "; ".join(f"{k}: {v}" for k, v in attempts.items())
    raise TraceError(
        f"could not trace {name} with input {(batch_size, *shape)}. Tried {tried}. "
        f"If the input shape is wrong, pass input_shape=(C, H, W); otherwise wrap the failing "
        f"code with torch.fx.wrap or make it a leaf module.",
        attempts,
    )
