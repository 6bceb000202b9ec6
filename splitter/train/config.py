"""The YAML configuration of a fit (``splitter fit CONFIG.yaml``), validated by pydantic.

::

    model: test_resnet              # timm name or package.module:factory
    model_args: {num_classes: 10}   # passed to the factory / timm.create_model
    checkpoint: runs/teacher.safetensors
    input_size: [3, 16, 16]
    cut: layer1
    mode: insert                    # or replace (Entropic Student)
    bottleneck: {kind: entropy, channels: 8}
    data: {train: digits, test: digits, batch_size: 64}
    stages:
      - {kind: features, epochs: 40, beta: 0.02}
      - {kind: kd, epochs: 5}
    seed: 0
    output_dir: runs/digits_entropy

A wrong key or type raises :class:`~splitter.errors.ConfigError` naming the key and the
line it is on (from yaml's node marks), e.g. ``digits.yaml:12: stages.1.alpha: Input
should be a valid number``.
"""

from __future__ import annotations

import os
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bottlenecks.spec import BottleneckSpec
from splitter.errors import BottleneckError, ConfigError
from splitter.train.fit import DEFAULT_STAGES, Stage

__all__ = ["DataConfig", "FitConfig", "load_config", "parse_config",
           "build", "run_config"]


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    train: str = Field("digits", description="'digits' or an image folder (DIR/<class>/...)")
    test: str | None = Field("digits", description="'digits', an image folder, or null")
    batch_size: int = Field(64, ge=1)
    augment: bool = Field(False, description="digits only: small random affine moves")
    num_workers: int = Field(0, ge=0)
    cache_teacher: bool | None = Field(None, description="default: on unless augmenting")


class FitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    model_args: dict[str, Any] = Field(
        default_factory=dict,
        description="arguments of the factory / timm.create_model, as --model-args k=v gives them")
    checkpoint: str | None = None
    input_size: tuple[int, int, int] | None = None
    cut: str
    bottleneck: BottleneckSpec = Field(description="kind, mode and the kind's options, e.g. "
                                       "{kind: entropy, mode: replace, channels: 24}")
    data: DataConfig = Field(default_factory=DataConfig)
    stages: list[Stage] = Field(default_factory=lambda: [s.model_copy() for s in DEFAULT_STAGES])
    seed: int = 0
    output_dir: str = "runs/fit"
    device: str = "cpu"

    @model_validator(mode="before")
    @classmethod
    def _fold_mode(cls, data: Any) -> Any:
        """A top-level ``mode:`` (the older layout) goes into the bottleneck spec."""
        if isinstance(data, dict) and "mode" in data and isinstance(data.get("bottleneck"), dict):
            data = dict(data)
            data["bottleneck"] = {"mode": data.pop("mode"), **data["bottleneck"]}
        return data

    @field_validator("bottleneck", mode="before")
    @classmethod
    def _bottleneck(cls, v: Any) -> Any:
        """YAML's flat ``{kind, mode, channels, ...}`` (or ``options: {...}``) -> the one spec."""
        return v if isinstance(v, BottleneckSpec) else BottleneckSpec.of(v)

    @property
    def mode(self) -> str:
        return self.bottleneck.mode

    @field_validator("model_args")
    @classmethod
    def _model_args(cls, v: dict[str, Any]) -> dict[str, Any]:
        """Keys are Python names; the text ``None`` means None, as on the command line
        (``--model-args weights=None``), so a YAML ``weights: None`` does not pass a string."""
        bad = [k for k in v if not isinstance(k, str) or not k.isidentifier()]
        if bad:
            raise ValueError(f"model_args keys must be argument names, not {bad}")
        return {k: None if isinstance(x, str) and x in ("None", "none") else x for k, x in v.items()}


# -- loading with line numbers -----------------------------------------------------------------

def _marks(node: yaml.Node, path: tuple = (), out: dict | None = None) -> dict[tuple, int]:
    """``{key path: 1-based line}`` for every key and list item under ``node``."""
    out = {} if out is None else out
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = k.value
            out[path + (key,)] = k.start_mark.line + 1
            _marks(v, path + (key,), out)
            out[path + (key,)] = k.start_mark.line + 1  # the key's own line, not its value's
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _marks(v, path + (i,), out)
    return out


def _no_duplicates(node: yaml.Node, source: str, path: tuple = ()) -> None:
    """Raise :class:`ConfigError` at the second occurrence of a key in any mapping.

    PyYAML keeps the last value of a repeated key without a word (YAML 1.2 says keys are
    unique); a config whose ``lr`` is set twice almost always has a mistake in it.
    """
    if isinstance(node, yaml.MappingNode):
        first: dict[Any, int] = {}
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else None
            line = k.start_mark.line + 1
            if key is not None and key in first:
                where = ".".join(str(p) for p in (*path, key))
                raise ConfigError(f"{source}:{line}: duplicate key {where!r} (first set on line "
                                  f"{first[key]}); keep one of the two")
            if key is not None:
                first[key] = line
            _no_duplicates(v, source, (*path, key))
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _no_duplicates(v, source, (*path, i))


def _line(marks: dict[tuple, int], loc: tuple) -> int | None:
    """Line of ``loc`` or of its nearest ancestor in the file."""
    loc = tuple(loc)
    while loc:
        if loc in marks:
            return marks[loc]
        loc = loc[:-1]
    return marks.get(())


def parse_config(text: str, source: str = "<config>") -> FitConfig:
    """Validate YAML ``text``; :class:`ConfigError` points at the file, line and key."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise ConfigError(f"{where}: not valid YAML: {getattr(e, 'problem', e)}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys (model:, cut:, bottleneck:, ...), "
                          f"got {type(data).__name__}")
    if node is not None:
        _no_duplicates(node, source)
    marks = _marks(node) if node is not None else {}
    try:
        return FitConfig.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = tuple(err["loc"])
            msg = err["msg"]
            cause = (err.get("ctx") or {}).get("error")
            if isinstance(cause, BottleneckError):  # the kind's own option check: its words
                loc, msg = loc + ((cause.option,) if cause.option else ()), str(cause)
            key = ".".join(str(p) for p in loc) or "(top level)"
            line = _line(marks, loc)
            if err["type"] == "extra_forbidden":
                parent = loc[:-1]
                allowed = _allowed(parent)
                msg = f"unknown key {loc[-1]!r}" + (f"; allowed here: {', '.join(allowed)}" if allowed else "")
            elif err["type"] == "missing":
                msg = f"missing required key {loc[-1]!r}"
            lines.append(f"{source}:{line}: {key}: {msg}" if line else f"{source}: {key}: {msg}")
        raise ConfigError("invalid config\n  " + "\n  ".join(lines)) from None


def _allowed(parent: tuple) -> list[str]:
    """Field names valid under ``parent`` (for the message on an unknown key)."""
    model: type[BaseModel] | None = FitConfig
    for p in parent:
        if model is None:
            return []
        if isinstance(p, int):
            continue
        field = model.model_fields.get(p)
        if field is None:
            return []
        ann = field.annotation
        args = getattr(ann, "__args__", ()) or (ann,)
        model = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return sorted(model.model_fields) if model is not None else []


def load_config(path: str) -> FitConfig:
    """Read and validate a YAML config file."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read config {path!r}: {e}") from e
    return parse_config(text, source=path)


# -- running ------------------------------------------------------------------------------------

def build(cfg: FitConfig):
    """``(teacher, split, train_data, test_data)`` from a config (the split is seeded)."""
    import torch

    from splitter.compile.split import split as make_split
    from splitter.compile.trace import default_input_shape, load_model
    from splitter.train.data import as_dataset, digits

    ckpt = os.path.expanduser(cfg.checkpoint) if cfg.checkpoint else None
    teacher, _ = load_model(cfg.model, checkpoint=ckpt, **cfg.model_args)
    teacher.eval()
    shape = tuple(cfg.input_size) if cfg.input_size else default_input_shape(teacher)
    torch.manual_seed(cfg.seed)  # the bottleneck's initial weights
    s = make_split(teacher, at=cfg.cut, bottleneck=cfg.bottleneck, input_shape=shape)

    def data(which: str | None, split_name: str, augment: bool = False):
        if which is None:
            return None
        if which == "digits":
            return digits(split_name, shape, seed=cfg.seed, augment=augment)
        return as_dataset(which, split=split_name, model=teacher, input_size=shape)

    train = data(cfg.data.train, "train", cfg.data.augment)
    test = data(cfg.data.test, "test")
    return teacher, s, train, test


def run_config(cfg: FitConfig, *, resume: bool = False, max_steps: int | None = None,
               progress: bool = True, config_text: str | None = None):
    """Build everything from ``cfg``, fit, and return ``(split, report, teacher, test_data)``.

    The config itself is saved as ``config.yaml`` in the output dir (rank 0), so
    ``splitter eval OUTPUT_DIR`` can rebuild the split.
    """
    from splitter.train.fit import fit

    teacher, s, train, test = build(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        os.makedirs(cfg.output_dir, exist_ok=True)
        with open(os.path.join(cfg.output_dir, "config.yaml"), "w") as f:
            f.write(config_text if config_text is not None else
                    yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    cache = cfg.data.cache_teacher if cfg.data.cache_teacher is not None else not cfg.data.augment
    report = fit(s, train, teacher=teacher, stages=cfg.stages, val_data=test,
                 batch_size=cfg.data.batch_size, seed=cfg.seed, output_dir=cfg.output_dir,
                 resume=resume, max_steps=max_steps, progress=progress, device=cfg.device,
                 num_workers=cfg.data.num_workers, cache_teacher=cache)
    return s, report, teacher, test
