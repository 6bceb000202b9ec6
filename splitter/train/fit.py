"""fit: distil a split's bottleneck from the teacher model, in two stages.

::

    stage 1 "features"   x ─► pre ─► [encoder ─► entropy model ─► decoder] ─► x̂      pre, post frozen
                         loss = ‖x̂ − t‖² / var(t) + β · bits/sample + aux      t: teacher at the cut
    stage 2 "kd"         x ─► pre ─► encoder ─► entropy model ─► [decoder ─► post] ─► logits
                         loss = α · CE(logits, y) + (1 − α) · τ² · KL(teacher ‖ logits / τ)
                         encoder and entropy model frozen (bit-identical), trained: decoder + post

``t`` is the teacher's tensor at the cut: ``split.pre(x)`` in insert mode (the teacher's own
head), the head of a plain split of the teacher in replace mode.

The recipe that keeps stage 1 from collapsing the latents to a single symbol:

- the bottleneck feeds its decoder the latent *rounded* with a straight-through gradient
  (``bottlenecks/_common.ste_round``), so the decoder trains on what the server will see;
- the distortion is divided by the variance of the teacher's features, so β means the
  same thing at every cut and the rate term cannot win by shrinking everything to zero;
- the entropy model's own parameters learn 10× faster (``entropy_lr``) than the encoder
  and decoder, so the prior keeps up with the latents instead of dragging them to zero;
- CompressAI's quantile loss (``bottleneck.aux_loss()``) has its own optimizer.

Runs are reproducible: the data order is a function of ``(seed, epoch)`` and the random
state of every step (quantization noise, dropout) of ``(seed, stage, step, rank)``, so a
run resumed from a checkpoint ends with the same weights as one that never stopped.
Under ``torchrun`` the student is wrapped in DistributedDataParallel and every rank
reads its own shard (``DistributedSampler``); only rank 0 writes files.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from splitter.errors import ConfigError, SplitterError
from splitter.train import checkpoint as ckpt
from splitter.train.distributed import Context, broadcast_state, setup

__all__ = ["Stage", "FitReport", "StageReport", "fit", "DEFAULT_STAGES", "bottleneck_parts",
           "bits_per_sample", "kd_loss"]


# Defaults that differ by stage kind (validated end to end on digits; see demo.py).
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
    alpha: float = Field(0.5, ge=0, le=1, description="kd: weight of CE vs the teacher's KL")
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


class StageReport(BaseModel):
    kind: str
    steps: int
    seconds: float
    loss: float | None = None
    nmse: float | None = None  # distortion / var(teacher features), last epoch mean
    bits: float | None = None  # rate from the likelihoods, bits per sample, last epoch mean
    accuracy: float | None = None  # validation accuracy at the end of the stage
    variance: float | None = None


class FitReport(BaseModel):
    """What :func:`fit` did, written to ``fit.json`` next to the weights."""

    stages: list[StageReport] = []
    seed: int
    world_size: int = 1
    global_step: int = 0
    resumed_from: int | None = None  # global step the run resumed at
    stopped_at: int | None = None  # set when max_steps stopped the run early
    output_dir: str | None = None
    history: list[dict[str, Any]] = []  # one entry per epoch


# -- pieces ---------------------------------------------------------------------------------

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


def bits_per_sample(likelihoods: dict[str, torch.Tensor], batch: int) -> torch.Tensor:
    """Σ −log₂ p over every latent, divided by the batch: the rate the coder will approach."""
    total = sum((-torch.log2(v).sum() for v in likelihoods.values()), torch.zeros(()))
    return total / batch


def kd_loss(logits: torch.Tensor, teacher: torch.Tensor, tau: float) -> torch.Tensor:
    """τ² · KL(softmax(teacher/τ) ‖ softmax(logits/τ)), batch mean (Hinton et al. 2015)."""
    return F.kl_div(F.log_softmax(logits / tau, -1), F.log_softmax(teacher / tau, -1),
                    log_target=True, reduction="batchmean") * tau * tau


class _Student(nn.Module):
    """The trainable path as one module, so DDP sees one forward per step."""

    def __init__(self, split: nn.Module, stage: Stage, variance: float):
        super().__init__()
        self.pre, self.bottleneck, self.post = split.pre, split.bottleneck, split.post
        self.stage = stage
        self.variance = variance
        self.insert = split.mode != "replace"
        self.beta_scale = 1.0  # < 1 while β warms up

    def forward(self, feat: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
                teacher: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """``feat``: the frozen ``pre(x)`` (the image in replace mode); ``target``: the
        teacher's cut tensor (replace mode); ``teacher``: the teacher's logits."""
        st = self.stage
        out = self.bottleneck(feat)
        bits = bits_per_sample(out.likelihoods, feat.shape[0])
        res: dict[str, torch.Tensor] = {"bits": bits}
        if st.kind == "features":
            t = feat if self.insert else target
            nmse = F.mse_loss(out.features, t) / self.variance
            loss = nmse + st.beta * self.beta_scale * bits
            if st.match_output > 0:
                logits = self.post(out.features)
                loss = loss + st.match_output * kd_loss(logits, teacher, st.tau)
                res["logits"] = logits.detach()
            aux = self.bottleneck.aux_loss()
            res.update(loss=loss + aux, main=loss, nmse=nmse.detach(), aux=aux.detach())
        else:
            logits = self.post(out.features)
            loss = st.alpha * F.cross_entropy(logits, y) + (1 - st.alpha) * kd_loss(logits, teacher, st.tau)
            res.update(loss=loss, main=loss, logits=logits.detach())
        return res


def _set_trainable(split: nn.Module, stage: Stage) -> list[str]:
    """requires_grad and train/eval per the stage; returns the trained roles."""
    for p in split.parameters():
        p.requires_grad_(False)
    split.eval()  # frozen parts keep BatchNorm statistics and GDN as they are
    bn = split.bottleneck
    parts = bottleneck_parts(bn)
    if stage.kind == "features":
        roles = ["encoder", "entropy", "aux", "decoder"]
        bn.train()
    else:
        roles = ["decoder", "post"]
        bn.train()
        for name, child in bn.named_children():
            if name != "decoder":
                child.eval()  # encoder and entropy model frozen: eval-mode rounding, no noise
        split.post.train()
        for p in split.post.parameters():
            p.requires_grad_(True)
    for role in roles:
        for _, p in parts.get(role, []):
            p.requires_grad_(True)
    return roles


def _optimizers(split: nn.Module, stage: Stage) -> dict[str, torch.optim.Optimizer]:
    parts = bottleneck_parts(split.bottleneck)
    groups: list[dict[str, Any]] = []
    if stage.kind == "features":
        main = [p for _, p in parts["encoder"] + parts["decoder"]]
        if main:
            groups.append({"params": main, "lr": stage.lr, "base_lr": stage.lr})
        ent = [p for _, p in parts["entropy"]]
        if ent:
            groups.append({"params": ent, "lr": stage.entropy_lr, "base_lr": stage.entropy_lr})
    else:
        main = [p for _, p in parts["decoder"]] + [p for p in split.post.parameters()]
        if main:
            groups.append({"params": main, "lr": stage.lr, "base_lr": stage.lr})
    opts: dict[str, torch.optim.Optimizer] = {}
    if groups:
        opts["main"] = torch.optim.AdamW(groups, weight_decay=stage.weight_decay)
    aux = [p for _, p in parts["aux"]] if stage.kind == "features" else []
    if aux:
        opts["aux"] = torch.optim.Adam([{"params": aux, "lr": stage.aux_lr, "base_lr": stage.aux_lr}])
    return opts


def _lr_factor(step: int, total: int, floor: float) -> float:
    """Cosine from 1 to ``floor`` over the stage."""
    if total <= 1:
        return 1.0
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * step / total))


def _step_seed(seed: int, stage: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + stage * 10_007 + step) * 64 + rank


@torch.no_grad()
def _feature_variance(source: nn.Module, data: Dataset, device: torch.device, n: int = 512,
                      batch_size: int = 64) -> float:
    """Variance of the teacher's cut tensor over the first ``n`` training samples."""
    loader = DataLoader(torch.utils.data.Subset(data, range(min(n, len(data)))), batch_size=batch_size)
    s = s2 = 0.0
    count = 0
    for x, _ in loader:
        t = source(x.to(device)).double()
        s += float(t.sum())
        s2 += float((t * t).sum())
        count += t.numel()
    mean = s / count
    return max(s2 / count - mean * mean, 1e-12)


@torch.no_grad()
def _accuracy(split: nn.Module, data: Dataset | None, device: torch.device,
              batch_size: int = 256) -> tuple[float | None, float | None]:
    """Validation accuracy and bits/sample through the training path in eval mode (which
    rounds exactly as encode/decode do)."""
    if data is None:
        return None, None
    modes = {m: m.training for m in split.modules()}
    split.eval()
    correct = total = 0
    bits = 0.0
    try:
        for x, y in DataLoader(data, batch_size=batch_size):
            x, y = x.to(device), torch.as_tensor(y).to(device)
            logits, _, lik = split.train_forward(x)
            correct += int((logits.argmax(-1) == y).sum())
            total += len(y)
            bits += float(bits_per_sample(lik, 1))
    finally:
        for m, t in modes.items():
            m.training = t
    return correct / max(total, 1), bits / max(total, 1)


class _Indexed(Dataset):
    """``(x, y, index)``: lets the teacher cache key on the sample."""

    def __init__(self, data: Dataset):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        x, y = self.data[i]
        return x, y, i


class _TeacherCache:
    """Frozen outputs (teacher logits, teacher / pre features) per sample index, or nothing."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.store: dict[str, dict[int, torch.Tensor]] = {}

    @torch.no_grad()
    def get(self, key: str, idx: torch.Tensor, fn: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``fn(x)`` without gradient, from the cache when every sample of ``idx`` is in it."""
        if not self.enabled:
            return fn(x)
        table = self.store.setdefault(key, {})
        ids = [int(i) for i in idx]
        if all(i in table for i in ids):
            return torch.stack([table[i] for i in ids]).to(x.device)
        out = fn(x)
        for i, row in zip(ids, out):
            table[i] = row.detach().clone()
        return out


def _teacher_cut(teacher: nn.Module, split: nn.Module) -> nn.Module:
    """The teacher's layers up to the cut (a plain split of the teacher)."""
    from splitter.compile.split import split as make_split

    return make_split(teacher, at=split.cut.name, input_shape=tuple(split.graph.input_shape)).head


def _resolve_stages(stages: Sequence[Stage | dict] | None) -> list[Stage]:
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


# -- the loop --------------------------------------------------------------------------------

def fit(
    split: nn.Module,
    train_data: Dataset,
    *,
    teacher: nn.Module | None = None,
    stages: Sequence[Stage | dict] | None = None,
    val_data: Dataset | None = None,
    batch_size: int = 64,
    seed: int = 0,
    output_dir: str | None = None,
    resume: bool = False,
    max_steps: int | None = None,
    checkpoint_every: int | None = None,
    progress: bool = True,
    device: str | torch.device | None = "cpu",
    num_workers: int = 0,
    cache_teacher: bool = False,
) -> FitReport:
    """Distil ``split.bottleneck`` (and, in stage 2, what follows it) from ``teacher``.

    ``train_data`` yields ``(x, label)`` with ``x`` of shape ``(C, H, W)``. ``stages`` are
    :class:`Stage` s or dicts (default :data:`DEFAULT_STAGES`). ``teacher`` defaults to a
    copy of the model the split was made from, taken now. ``output_dir`` receives
    checkpoints (every ``checkpoint_every`` steps and at the end of every epoch) and the
    final ``split.safetensors`` + ``fit.json``; with ``resume=True`` a run continues from
    the checkpoint there. ``max_steps`` stops after that many optimizer steps in all (the
    checkpoint written then resumes the run). ``device``: ``"cpu"``, ``"cuda"`` or
    ``"auto"``. ``cache_teacher`` keeps the teacher's outputs and the frozen ``pre`` features
    per sample (only for data without random augmentation: each is computed once). Leaves
    ``split`` in eval mode on the CPU with coder tables updated.
    """
    if getattr(split, "bottleneck", None) is None:
        raise SplitterError("fit needs a split with a bottleneck: splitter.split(model, at=..., "
                            "bottleneck='entropy')")
    stage_list = _resolve_stages(stages)
    flags = {p: p.requires_grad for p in split.parameters()}
    ctx = setup(device)
    try:
        with torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []):
            return _fit(split, train_data, teacher, stage_list, val_data, batch_size, seed,
                        output_dir, resume, max_steps, checkpoint_every, progress, ctx, num_workers,
                        cache_teacher)
    finally:
        split.to("cpu").eval()
        for p, flag in flags.items():
            p.requires_grad_(flag)
        ctx.close()


def _fit(split, train_data, teacher, stage_list, val_data, batch_size, seed, output_dir, resume,
         max_steps, checkpoint_every, progress, ctx: Context, num_workers,
         cache_teacher) -> FitReport:
    from tqdm.auto import tqdm

    dev = ctx.device
    teacher = copy.deepcopy(teacher if teacher is not None else split.graph.gm).to(dev).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    split.to(dev)
    report = FitReport(seed=seed, world_size=ctx.world, output_dir=output_dir)
    stage_dicts = [s.model_dump() for s in stage_list]

    # -- where to start ---------------------------------------------------------------------
    start_stage, start_step, state = 0, 0, None
    state_path = os.path.join(output_dir, ckpt.STATE) if output_dir else None
    if resume and state_path and os.path.exists(state_path):
        state = ckpt.read_json(state_path)
        if state.get("stages") != stage_dicts or state.get("seed") != seed \
                or state.get("batch_size") != batch_size:
            raise ConfigError(f"the checkpoint in {output_dir!r} was written with other stages, "
                              f"seed or batch size; resume with the same settings, or fit into a "
                              f"new output dir")
        ckpt.load_split(split, os.path.join(output_dir, ckpt.CHECKPOINT))
        start_stage, start_step = state["stage"], state["stage_step"]
        report.resumed_from = state["global_step"]
        report.global_step = state["global_step"]
        report.stages = [StageReport(**r) for r in state.get("reports", [])]
        report.history = list(state.get("history", []))

    cache = _TeacherCache(cache_teacher)
    sampler = DistributedSampler(train_data, num_replicas=ctx.world, rank=ctx.rank, shuffle=True,
                                 seed=seed, drop_last=False)
    per_epoch = math.ceil(len(sampler) / batch_size)
    insert = split.mode != "replace"

    def save(stage_idx: int, stage_step: int, opts: dict, variance: float | None, done: bool) -> None:
        if not (output_dir and ctx.main):
            return
        plain = ckpt.save_optimizers(opts, os.path.join(output_dir, ckpt.OPTIMIZER)) if opts else {}
        ckpt.save_split(split, os.path.join(output_dir, ckpt.CHECKPOINT))
        ckpt.write_json({
            "version": 1, "stage": stage_idx, "stage_step": stage_step,
            "global_step": report.global_step, "seed": seed, "batch_size": batch_size,
            "world_size": ctx.world, "stages": stage_dicts, "variance": variance, "done": done,
            "optimizers": plain, "reports": [r.model_dump() for r in report.stages],
            "history": report.history,
        }, state_path)

    for si in range(start_stage, len(stage_list)):
        stage = stage_list[si]
        total = stage.steps if stage.steps is not None else stage.epochs * per_epoch
        resuming = state is not None and si == start_stage and start_step > 0
        step = start_step if resuming else 0
        if step >= total and resuming:
            continue
        roles = _set_trainable(split, stage)
        trainable = [p for p in split.parameters() if p.requires_grad]
        if not trainable:
            report.stages.append(StageReport(kind=stage.kind, steps=0, seconds=0.0))
            continue

        # Teacher signals this stage needs, and the distortion scale.
        target_fn = None if insert else _teacher_cut(teacher, split).to(dev).eval()
        need_logits = stage.kind == "kd" or stage.match_output > 0
        variance = None
        if stage.kind == "features":
            if resuming and state.get("variance") is not None:
                variance = float(state["variance"])
            else:
                variance = _feature_variance(split.pre if insert else target_fn, train_data, dev)
        student = _Student(split, stage, variance or 1.0)
        model: nn.Module = student
        if ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            model = DDP(student, device_ids=[dev.index] if dev.type == "cuda" else None,
                        broadcast_buffers=True)
        opts = _optimizers(split, stage)
        if resuming:
            ckpt.load_optimizers(opts, os.path.join(output_dir, ckpt.OPTIMIZER), state["optimizers"])
        stage_params = {n: [p for g in o.param_groups for p in g["params"]] for n, o in opts.items()}

        t0 = time.time()
        sums: dict[str, float] = {}
        stopped = False
        while step < total:
            epoch = step // per_epoch
            sampler.set_epoch(epoch)
            order = list(sampler)
            batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
            first = step - epoch * per_epoch
            todo = batches[first:first + (total - step)]
            loader = DataLoader(_Indexed(train_data), batch_sampler=todo, num_workers=num_workers)
            n_epochs = math.ceil(total / per_epoch)
            bar = tqdm(range(len(todo)), disable=not (progress and ctx.main), leave=False,
                       desc=f"{stage.kind} ({si + 1}/{len(stage_list)}) epoch {epoch + 1}/{n_epochs}",
                       dynamic_ncols=True)
            sums = {"loss": 0.0, "nmse": 0.0, "bits": 0.0, "correct": 0.0, "n": 0.0}
            batches_it = iter(loader)
            for _ in bar:
                # Seeded before the batch is drawn: augmentation (with num_workers=0) and
                # quantization noise depend on (seed, stage, step, rank) only.
                torch.manual_seed(_step_seed(seed, si, step, ctx.rank))
                x, y, idx = next(batches_it)
                x, y = x.to(dev), torch.as_tensor(y).to(dev)
                feat = cache.get("feat", idx, split.pre, x)
                target = (cache.get("target", idx, target_fn, x)
                          if target_fn is not None and stage.kind == "features" else None)
                t_logits = cache.get("logits", idx, teacher, x) if need_logits else None
                f = _lr_factor(step, total, stage.min_lr)
                for o in opts.values():
                    for g in o.param_groups:
                        g["lr"] = g["base_lr"] * f
                if stage.beta_warmup > 0:
                    student.beta_scale = min(1.0, step / (stage.beta_warmup * total))
                out = model(feat, y, target, t_logits)
                for o in opts.values():
                    o.zero_grad(set_to_none=True)
                out["loss"].backward()
                if stage.clip and "main" in opts:
                    torch.nn.utils.clip_grad_norm_(stage_params["main"], stage.clip)
                for o in opts.values():
                    o.step()
                step += 1
                report.global_step += 1
                b = len(y)
                sums["n"] += b
                sums["loss"] += float(out["main"].detach()) * b
                sums["bits"] += float(out["bits"].detach()) * b
                if "nmse" in out:
                    sums["nmse"] += float(out["nmse"]) * b
                if "logits" in out:
                    sums["correct"] += float((out["logits"].argmax(-1) == y).sum())
                post = {"loss": f"{sums['loss'] / sums['n']:.4f}",
                        "bits": f"{sums['bits'] / sums['n']:.1f}"}
                if stage.kind == "features":
                    post["nmse"] = f"{sums['nmse'] / sums['n']:.4f}"
                if "logits" in out:
                    post["acc"] = f"{sums['correct'] / sums['n']:.3f}"
                bar.set_postfix(post, refresh=False)
                if max_steps is not None and report.global_step >= max_steps:
                    stopped = True
                    break
                if checkpoint_every and report.global_step % checkpoint_every == 0 and step < total:
                    save(si, step, opts, variance, False)
            bar.close()
            end_of_epoch = step % per_epoch == 0 or step >= total
            if end_of_epoch or stopped:
                acc, vbits = (_accuracy(split, val_data, dev) if ctx.main and end_of_epoch
                              else (None, None))
                _set_trainable(split, stage)  # _accuracy left everything in eval mode
                n = max(sums["n"], 1.0)
                entry = {"stage": si, "kind": stage.kind, "epoch": epoch + 1, "step": step,
                         "loss": sums["loss"] / n, "bits": sums["bits"] / n}
                if stage.kind == "features":
                    entry["nmse"] = sums["nmse"] / n
                if acc is not None:
                    entry.update(val_accuracy=acc, val_bits=vbits)
                report.history.append(entry)
                if progress and ctx.main:
                    shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                      for k, v in entry.items() if k not in ("stage",))
                    print(f"[fit] {shown}", flush=True)
            if stopped:
                broadcast_state(split, ctx)
                save(si, step, opts, variance, False)
                report.stopped_at = report.global_step
                return report
            if step < total:
                save(si, step, opts, variance, False)

        broadcast_state(split, ctx)  # BatchNorm statistics drift apart across ranks
        n = max(sums["n"], 1.0)
        acc, _ = _accuracy(split, val_data, dev) if ctx.main else (None, None)
        report.stages.append(StageReport(
            kind=stage.kind, steps=step, seconds=round(time.time() - t0, 2),
            loss=sums["loss"] / n, bits=sums["bits"] / n,
            nmse=(sums["nmse"] / n) if stage.kind == "features" else None,
            accuracy=acc, variance=variance))
        del roles, model, student
        save(si + 1, 0, {}, None, False)

    for p in split.parameters():
        p.requires_grad_(False)
    split.eval()
    split.bottleneck.update()
    broadcast_state(split, ctx)
    if output_dir and ctx.main:
        ckpt.save_split(split, os.path.join(output_dir, ckpt.WEIGHTS),
                        metadata={"format": "splitter.train.fit", "model": str(split.graph.name),
                                  "cut": split.cut.name, "mode": str(split.mode),
                                  "bottleneck": str(getattr(split.bottleneck, "kind", ""))})
        ckpt.write_json(report.model_dump(), os.path.join(output_dir, "fit.json"))
        save(len(stage_list), 0, {}, None, True)
    ctx.barrier()
    return report
