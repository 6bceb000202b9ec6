"""fit: distil a split's bottleneck from the teacher model, in two stages.

::

    stage 1 "features"   x ─► pre ─► [encoder ─► entropy model ─► decoder] ─► x̂      pre, post frozen
                         loss = ‖x̂ − t‖² / var(t) + β · bits/sample + aux      t: teacher at the cut
    stage 2 "kd"         x ─► pre ─► encoder ─► entropy model ─► [decoder ─► post] ─► logits
                         loss = α · CE(logits, y) + (1 − α) · τ² · KL(teacher ‖ logits / τ)
                         encoder and entropy model frozen (bit-identical), trained: decoder + post

    fit ─► _Run: restore ─► for each stage: prepare ─► epochs of steps ─► end of epoch
           (validate, history.csv, checkpoint) ─► finish (tables, split.safetensors, fit.json)

The pieces live beside this file: ``stages.py`` (what trains, optimizers, torch LR
schedules), ``losses.py`` (the student and its losses), ``signals.py`` (teacher outputs,
cache, labels), ``checkpoint.py`` (safetensors state), ``distributed.py`` (torchrun).

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

Data without labels (bare image tensors) trains stage 2 from the teacher's outputs alone.

Runs are reproducible: the data order is a function of ``(seed, epoch)`` and the random
state of every step (quantization noise, dropout) of ``(seed, stage, step, rank)``, so a
run resumed from a checkpoint ends with the same weights as one that never stopped.
Under ``torchrun`` ``batch_size`` is the global batch: each of the W ranks takes
``batch_size / W`` samples a step from its own shard (``DistributedSampler``), so a run
takes the same number of steps at the same effective batch on any number of processes;
the student is wrapped in DistributedDataParallel and only rank 0 writes files.
"""

from __future__ import annotations

import copy
import csv
import io
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import torch
from pydantic import BaseModel
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from splitter.errors import ConfigError, SplitterError
from splitter.train import checkpoint as ckpt
from splitter.train.distributed import Context, broadcast_state, setup
from splitter.train.losses import Student, bits_per_sample, kd_loss
from splitter.train.signals import (
    Indexed,
    TeacherCache,
    accuracy,
    feature_variance,
    has_labels,
    teacher_cut,
)
from splitter.train.stages import (
    DEFAULT_STAGES,
    KIND_DEFAULTS,
    Stage,
    bottleneck_parts,
    optimizers,
    resolve_stages,
    schedules,
    set_trainable,
)

__all__ = ["Stage", "FitReport", "StageReport", "fit", "DEFAULT_STAGES", "KIND_DEFAULTS",
           "bottleneck_parts", "bits_per_sample", "kd_loss", "HISTORY"]

HISTORY = "history.csv"  # one row per epoch, next to the checkpoints


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
    batch_size: int = 0  # global: samples per optimizer step over all ranks
    rank_batch_size: int = 0  # samples per step on each rank
    labelled: bool = True  # False: stage 2 learned from the teacher's outputs alone
    global_step: int = 0
    resumed_from: int | None = None  # global step the run resumed at
    stopped_at: int | None = None  # set when max_steps stopped the run early
    output_dir: str | None = None
    history: list[dict[str, Any]] = []  # one entry per epoch


def _step_seed(seed: int, stage: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + stage * 10_007 + step) * 64 + rank


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

    ``train_data`` yields ``(x, label)`` or bare ``x`` of shape ``(C, H, W)`` (then stage 2
    learns from the teacher alone). ``stages`` are :class:`Stage` s or dicts (default
    :data:`DEFAULT_STAGES`). ``teacher`` defaults to a copy of the model the split was made
    from, taken now. ``batch_size`` is the global batch (split across ``torchrun`` ranks).
    ``output_dir`` receives checkpoints (every ``checkpoint_every`` steps and at the end of
    every epoch), ``history.csv`` and the final ``split.safetensors`` + ``fit.json``; with
    ``resume=True`` a run continues from the checkpoint there. ``max_steps`` stops after
    that many optimizer steps in all (the checkpoint written then resumes the run).
    ``device``: ``"cpu"``, ``"cuda"`` or ``"auto"``. ``cache_teacher`` keeps the teacher's
    outputs and the frozen ``pre`` features per sample (only for data without random
    augmentation). Leaves ``split`` in eval mode on the CPU with coder tables updated.
    """
    if getattr(split, "bottleneck", None) is None:
        raise SplitterError("fit needs a split with a bottleneck: splitter.split(model, at=..., "
                            "bottleneck='entropy')")
    stage_list = resolve_stages(stages)
    labelled = has_labels(train_data)
    _check_resume(output_dir, resume)
    flags = {p: p.requires_grad for p in split.parameters()}
    ctx = setup(device)
    try:
        if batch_size % ctx.world:
            raise ConfigError(f"batch_size={batch_size} is the global batch and must divide among "
                              f"the {ctx.world} processes; use a multiple of {ctx.world}")
        with torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []):
            run = _Run(split, train_data, teacher, stage_list, val_data=val_data,
                       batch_size=batch_size, seed=seed, output_dir=output_dir, labelled=labelled,
                       checkpoint_every=checkpoint_every, progress=progress, ctx=ctx,
                       num_workers=num_workers, cache_teacher=cache_teacher, max_steps=max_steps)
            return run.all(resume)
    finally:
        split.to("cpu").eval()
        for p, flag in flags.items():
            p.requires_grad_(flag)
        ctx.close()


def _check_resume(output_dir: str | None, resume: bool) -> None:
    if not resume:
        return
    if not output_dir:
        raise ConfigError("resume=True needs the output_dir of the run to continue")
    if not os.path.exists(os.path.join(output_dir, ckpt.STATE)):
        what = "does not exist" if not os.path.isdir(output_dir) else f"holds no {ckpt.STATE}"
        raise ConfigError(f"nothing to resume: {output_dir!r} {what}; fit without resume to "
                          f"start a new run there, or name the output dir of the stopped run")


class _Run:
    """One call of :func:`fit`: state shared by its steps, each step a method."""

    def __init__(self, split: nn.Module, train_data: Dataset, teacher: nn.Module | None,
                 stage_list: list[Stage], *, val_data, batch_size: int, seed: int,
                 output_dir: str | None, labelled: bool, checkpoint_every: int | None,
                 progress: bool, ctx: Context, num_workers: int, cache_teacher: bool,
                 max_steps: int | None):
        self.split, self.train_data, self.val_data = split, train_data, val_data
        self.stage_list, self.seed, self.output_dir = stage_list, seed, output_dir
        self.labelled, self.checkpoint_every, self.max_steps = labelled, checkpoint_every, max_steps
        self.ctx, self.num_workers = ctx, num_workers
        self.show = progress and ctx.main
        self.dev = ctx.device
        self.teacher = copy.deepcopy(teacher if teacher is not None else split.graph.gm).to(self.dev).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        split.to(self.dev)
        self.batch = batch_size // ctx.world  # per rank
        self.report = FitReport(seed=seed, world_size=ctx.world, output_dir=output_dir,
                                batch_size=batch_size, rank_batch_size=self.batch, labelled=labelled)
        self.stage_dicts = [s.model_dump() for s in stage_list]
        self.cache = TeacherCache(cache_teacher)
        self.sampler = DistributedSampler(train_data, num_replicas=ctx.world, rank=ctx.rank,
                                          shuffle=True, seed=seed, drop_last=False)
        self.per_epoch = math.ceil(len(self.sampler) / self.batch)
        self.insert = split.mode != "replace"
        self.state_path = os.path.join(output_dir, ckpt.STATE) if output_dir else None
        self.state: dict[str, Any] | None = None

    # -- start and stop ----------------------------------------------------------------------
    def all(self, resume: bool) -> FitReport:
        start_stage, start_step = self.restore() if resume else (0, 0)
        if self.report.world_size > 1 and self.show:
            print(f"[fit] {self.ctx.world} processes: global batch {self.report.batch_size}, "
                  f"{self.batch} per process", flush=True)
        for si in range(start_stage, len(self.stage_list)):
            if self.stage(si, start_step if si == start_stage else 0):
                return self.report  # stopped at max_steps; the checkpoint resumes it
        self.finish()
        return self.report

    def restore(self) -> tuple[int, int]:
        """Load the checkpoint in ``output_dir``; the stage and step to continue from."""
        state = ckpt.read_json(self.state_path)
        if state.get("stages") != self.stage_dicts or state.get("seed") != self.seed \
                or state.get("batch_size") != self.report.batch_size:
            raise ConfigError(f"the checkpoint in {self.output_dir!r} was written with other stages, "
                              f"seed or batch size; resume with the same settings, or fit into a "
                              f"new output dir")
        ckpt.load_split(self.split, os.path.join(self.output_dir, ckpt.CHECKPOINT))
        r = self.report
        r.resumed_from = r.global_step = state["global_step"]
        r.stages = [StageReport(**s) for s in state.get("reports", [])]
        r.history = list(state.get("history", []))
        self.state = state
        return state["stage"], state["stage_step"]

    def save(self, stage_idx: int, stage_step: int, opts: dict, variance: float | None,
             done: bool) -> None:
        if not (self.output_dir and self.ctx.main):
            return
        d = self.output_dir
        plain = ckpt.save_optimizers(opts, os.path.join(d, ckpt.OPTIMIZER)) if opts else {}
        ckpt.save_split(self.split, os.path.join(d, ckpt.CHECKPOINT))
        r = self.report
        ckpt.write_json({
            "version": 1, "stage": stage_idx, "stage_step": stage_step,
            "global_step": r.global_step, "seed": self.seed, "batch_size": r.batch_size,
            "world_size": self.ctx.world, "stages": self.stage_dicts, "variance": variance,
            "done": done, "optimizers": plain, "reports": [s.model_dump() for s in r.stages],
            "history": r.history,
        }, self.state_path)

    def finish(self) -> None:
        split = self.split
        for p in split.parameters():
            p.requires_grad_(False)
        split.eval()
        # coder tables are built on the CPU whatever trained: CompressAI computes them in float,
        # and built on a GPU (an H200) some CDF entries rounded otherwise
        # (gaussian_conditional._quantized_cdf), so they would depend on the training device
        split.bottleneck.to("cpu")
        split.bottleneck.update()
        split.bottleneck.to(self.ctx.device)
        broadcast_state(split, self.ctx)
        if self.output_dir and self.ctx.main:
            ckpt.save_split(split, os.path.join(self.output_dir, ckpt.WEIGHTS),
                            metadata={"format": "splitter.train.fit", "model": str(split.graph.name),
                                      "cut": split.cut.name, "mode": str(split.mode),
                                      "bottleneck": str(getattr(split.bottleneck, "kind", ""))})
            ckpt.write_json(self.report.model_dump(), os.path.join(self.output_dir, "fit.json"))
            self.save(len(self.stage_list), 0, {}, None, True)
        self.ctx.barrier()

    # -- one stage ---------------------------------------------------------------------------
    def stage(self, si: int, step: int) -> bool:
        """Run stage ``si`` from ``step``; True when ``max_steps`` stopped the run inside it."""
        stage = self.stage_list[si]
        total = stage.steps if stage.steps is not None else stage.epochs * self.per_epoch
        resuming = step > 0
        if resuming and step >= total:
            return False
        set_trainable(self.split, stage)
        if not any(p.requires_grad for p in self.split.parameters()):
            self.report.stages.append(StageReport(kind=stage.kind, steps=0, seconds=0.0))
            return False
        p = _Prepared(self, si, stage, total, step, resuming)
        t0 = time.time()
        while step < total:
            step, stopped = self.epoch(p, step)
            if stopped:
                broadcast_state(self.split, self.ctx)
                self.save(si, step, p.opts, p.variance, False)
                self.report.stopped_at = self.report.global_step
                return True
            if step < total:
                self.save(si, step, p.opts, p.variance, False)
        broadcast_state(self.split, self.ctx)  # BatchNorm statistics drift apart across ranks
        n = max(p.sums["n"], 1.0)
        acc, _ = accuracy(self.split, self.val_data, self.dev) if self.ctx.main else (None, None)
        self.report.stages.append(StageReport(
            kind=stage.kind, steps=step, seconds=round(time.time() - t0, 2),
            loss=p.sums["loss"] / n, bits=p.sums["bits"] / n,
            nmse=(p.sums["nmse"] / n) if stage.kind == "features" else None,
            accuracy=acc, variance=p.variance))
        self.save(si + 1, 0, {}, None, False)
        return False

    def epoch(self, p: _Prepared, step: int) -> tuple[int, bool]:
        """The rest of the epoch that ``step`` falls in; returns the step reached and whether
        ``max_steps`` stopped it."""
        from tqdm.auto import tqdm

        epoch = step // self.per_epoch
        self.sampler.set_epoch(epoch)
        order = list(self.sampler)
        batches = [order[i:i + self.batch] for i in range(0, len(order), self.batch)]
        first = step - epoch * self.per_epoch
        todo = batches[first:first + (p.total - step)]
        loader = iter(DataLoader(Indexed(self.train_data), batch_sampler=todo,
                                 num_workers=self.num_workers))
        bar = tqdm(range(len(todo)), disable=not self.show, leave=False, dynamic_ncols=True,
                   desc=f"{p.stage.kind} ({p.si + 1}/{len(self.stage_list)}) epoch {epoch + 1}/"
                        f"{math.ceil(p.total / self.per_epoch)}")
        p.sums = {"loss": 0.0, "nmse": 0.0, "bits": 0.0, "correct": 0.0, "n": 0.0}
        stopped = False
        for _ in bar:
            # Seeded before the batch is drawn: augmentation (with num_workers=0) and
            # quantization noise depend on (seed, stage, step, rank) only.
            torch.manual_seed(_step_seed(self.seed, p.si, step, self.ctx.rank))
            self.train_step(p, step, *next(loader))
            step += 1
            self.report.global_step += 1
            bar.set_postfix(p.postfix(), refresh=False)
            if self.max_steps is not None and self.report.global_step >= self.max_steps:
                stopped = True
                break
            if self.checkpoint_every and self.report.global_step % self.checkpoint_every == 0 \
                    and step < p.total:
                self.save(p.si, step, p.opts, p.variance, False)
        bar.close()
        end_of_epoch = step % self.per_epoch == 0 or step >= p.total
        if end_of_epoch or stopped:
            self.end_epoch(p, epoch, step, validate=end_of_epoch)
        return step, stopped

    def train_step(self, p: _Prepared, step: int, x, y, idx) -> None:
        x, y = x.to(self.dev), torch.as_tensor(y).to(self.dev)
        feat = self.cache.get("feat", idx, self.split.pre, x)
        target = (self.cache.get("target", idx, p.target_fn, x)
                  if p.target_fn is not None and p.stage.kind == "features" else None)
        t_logits = self.cache.get("logits", idx, self.teacher, x) if p.need_logits else None
        if p.stage.beta_warmup > 0:
            p.student.beta_scale = min(1.0, step / (p.stage.beta_warmup * p.total))
        out = p.model(feat, y, target, t_logits)
        for o in p.opts.values():
            o.zero_grad(set_to_none=True)
        out["loss"].backward()
        if p.stage.clip and "main" in p.opts:
            torch.nn.utils.clip_grad_norm_(p.main_params, p.stage.clip)
        for o in p.opts.values():
            o.step()
        for s in p.scheds:
            s.step()
        p.add(out, y)

    def end_epoch(self, p: _Prepared, epoch: int, step: int, validate: bool) -> None:
        """Validate, append the epoch to the history (and ``history.csv``), print a line."""
        acc, vbits = (accuracy(self.split, self.val_data, self.dev) if self.ctx.main and validate
                      else (None, None))
        set_trainable(self.split, p.stage)  # accuracy() left everything in eval mode
        n = max(p.sums["n"], 1.0)
        entry = {"stage": p.si, "kind": p.stage.kind, "epoch": epoch + 1, "step": step,
                 "loss": p.sums["loss"] / n, "bits": p.sums["bits"] / n}
        if p.stage.kind == "features":
            entry["nmse"] = p.sums["nmse"] / n
        if acc is not None or vbits is not None:
            entry.update(val_accuracy=acc, val_bits=vbits)
        self.report.history.append(entry)
        self.log_history()
        if self.show:
            shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                              for k, v in entry.items() if k != "stage" and v is not None)
            print(f"[fit] {shown}", flush=True)

    def log_history(self) -> None:
        """``history.csv``: every epoch so far, one row each (rewritten whole, atomically)."""
        if not (self.output_dir and self.ctx.main):
            return
        cols = ["stage", "kind", "epoch", "step", "loss", "bits", "nmse", "val_accuracy", "val_bits"]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(self.report.history)
        text = buf.getvalue()
        ckpt.write_text(text, os.path.join(self.output_dir, HISTORY))


class _Prepared:
    """What a stage needs before its first step: teacher signals, the distortion scale,
    the student (DDP-wrapped under torchrun), optimizers and their schedules."""

    def __init__(self, run: _Run, si: int, stage: Stage, total: int, step: int, resuming: bool):
        split, dev = run.split, run.dev
        self.si, self.stage, self.total = si, stage, total
        self.target_fn = None if run.insert else teacher_cut(run.teacher, split).to(dev).eval()
        self.need_logits = stage.kind == "kd" or stage.match_output > 0
        self.variance = None
        if stage.kind == "features":
            if resuming and run.state and run.state.get("variance") is not None:
                self.variance = float(run.state["variance"])
            else:
                self.variance = feature_variance(split.pre if run.insert else self.target_fn,
                                                 run.train_data, dev)
        self.student = Student(split, stage, self.variance or 1.0, labelled=run.labelled)
        self.model: nn.Module = self.student
        if run.ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.model = DDP(self.student, device_ids=[dev.index] if dev.type == "cuda" else None,
                             broadcast_buffers=True)
        self.opts = optimizers(split, stage)
        if resuming:
            ckpt.load_optimizers(self.opts, os.path.join(run.output_dir, ckpt.OPTIMIZER),
                                 run.state["optimizers"])
        self.scheds = schedules(self.opts, total, stage.min_lr, start=step)
        self.main_params = ([q for g in self.opts["main"].param_groups for q in g["params"]]
                            if "main" in self.opts else [])
        self.sums: dict[str, float] = {"loss": 0.0, "nmse": 0.0, "bits": 0.0, "correct": 0.0, "n": 0.0}

    def add(self, out: dict[str, torch.Tensor], y: torch.Tensor) -> None:
        b, s = len(y), self.sums
        s["n"] += b
        s["loss"] += float(out["main"].detach()) * b
        s["bits"] += float(out["bits"].detach()) * b
        if "nmse" in out:
            s["nmse"] += float(out["nmse"]) * b
        if "logits" in out:
            s["correct"] += float((out["logits"].argmax(-1) == y).sum())

    def postfix(self) -> dict[str, str]:
        s = self.sums
        post = {"loss": f"{s['loss'] / s['n']:.4f}", "bits": f"{s['bits'] / s['n']:.1f}"}
        if self.stage.kind == "features":
            post["nmse"] = f"{s['nmse'] / s['n']:.4f}"
        if self.need_logits:
            post["acc"] = f"{s['correct'] / s['n']:.3f}"
        return post
