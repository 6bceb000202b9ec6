"""trials: fit and measure one (point, bottleneck, β) of a sweep, resumably, in parallel.

::

    TrialSpec (point, config, β, fit, seed) ──id──► store/trials/<name>-<id>/
        plain:       teacher on held-out data ─► accuracy; raw cut bytes; head.onnx timed
        bottleneck:  split(model, point, kind) ─► fit (two-stage distillation, quick | full | none)
                     ─► one payload per held-out sample: split.encode ─► bytes ─► split.decode ─► top-1
                     ─► export bundle ─► Device(threads).encode timed in onnxruntime (+ its bytes)
        ─► result.json (written last, atomically)      trial.log (one per trial)

    run_trials(ctx, specs, store, jobs=N | ray=ADDRESS)
        finished trials (result.json present) are read back, never rerun; the rest run
        in this process, in N spawned processes, or as Ray Tune trials; a tqdm bar counts them.

Accuracy is top-1 against the labels, or top-1 agreement with the teacher when the data has
none (``ctx.labelled = False``). Bytes are ``len()`` of each sample's own payload (header
included); bits per pixel divide them by the model input's H×W. Device time is the median
of ``Device.encode`` (head.onnx + entropy coder + framing) on one sample at a time with
``threads`` onnxruntime threads (a device profile, when given to the sweep, replaces it per
row; see :mod:`splitter.explore.measure`).

Parallelism reuses what exists: ``concurrent.futures`` with spawned processes (each sets
its torch threads to ``threads``) and Ray Tune (``tune.Tuner`` over a grid of the missing
trials, results logged under ``store/ray``). Across machines the store directory must be
shared (NFS, or one machine's disk with ``--ray`` on one host): it is the resume state.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import re
import shutil
import statistics
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn
from torch.utils.data import Dataset

from splitter.errors import ConfigError, SplitterError

__all__ = ["TrialSpec", "TrialResult", "TrialContext", "TrialStore", "run_trial", "run_trials",
           "schedule", "has_rate", "FitMode", "PLAIN", "DEFAULT_BETA"]

PLAIN = "plain"
DEFAULT_BETA = 0.004  # the demo's working rate at digits' first stage (about 16 B)
FitMode = Literal["quick", "full", "none"]


class TrialSpec(BaseModel):
    """One trial: a point, a bottleneck config (``plain`` or a ``BottleneckSpec`` label), a β."""

    model_config = ConfigDict(frozen=True)

    point: str
    config: str = PLAIN
    beta: float | None = None  # rate weight; None for plain points and rate-less kinds
    fit: FitMode = "quick"
    seed: int = 0

    @property
    def name(self) -> str:
        beta = "" if self.beta is None else f"-b{self.beta:g}"
        return re.sub(r"[^A-Za-z0-9_.=-]+", "_", f"{self.point}-{self.config}{beta}-{self.fit}")


class TrialResult(BaseModel):
    """What one trial measured on held-out data (every figure measured unless named)."""

    id: str
    spec: TrialSpec
    fitted: bool
    metric: Literal["accuracy", "agreement"] = "accuracy"
    accuracy: float  # top-1 vs labels (or vs the teacher's top-1: metric="agreement")
    agreement: float  # top-1 agreement with the teacher
    teacher_accuracy: float  # the teacher on the same samples, same metric
    samples: int
    bytes_mean: float
    bytes_p50: float
    bytes_p95: float
    bpp: float  # bytes_mean * 8 / (H * W) of the model input
    bytes_source: Literal["payload", "raw"]  # measured payloads, or the raw cut tensor (plain)
    encoder_params: int
    encoder_bits: int
    encoder_macs: int
    encoder_flops: int
    tail_flops: int
    tail_macs: int
    cut_bytes: int
    device_ms: float | None = None
    device_ms_source: str = "none"  # "onnxruntime, T thread(s), N samples" | "profile FILE" | why not
    bundle_bytes_mean: float | None = None  # the exported bundle's own payloads, same samples
    bundle_samples: int = 0
    bundle: str | None = None  # the trial's bundle directory (bottleneck trials)
    fit_seconds: float = 0.0
    seconds: float = 0.0
    fit_stages: list[dict[str, Any]] = []


class TrialContext:
    """Everything a trial needs, picklable (it travels to worker processes and Ray).

    ``model``: the network to split (an ``nn.Module``); ``teacher``: the one to distil from
    and compare with (default ``model``). ``train`` / ``test``: datasets of ``(x, label)``;
    ``test`` must be held out from ``train``. ``schedules``: per fit mode, a list of stage
    dicts overriding :func:`schedule` (the trial's β goes into each ``features`` stage).
    ``exporter``: the ONNX exporter of each trial's bundle (``auto``, ``dynamo`` or
    ``torchscript``, as ``splitter split --exporter``).
    """

    def __init__(self, model: nn.Module, train: Dataset, test: Dataset, *, input_shape: Sequence[int],
                 teacher: nn.Module | None = None, labelled: bool = True, batch_size: int = 16,
                 threads: int = 1, time_samples: int = 20, eval_limit: int | None = None,
                 export: bool = True, schedules: dict[str, list[dict]] | None = None,
                 device_profile: dict[str, float] | None = None, profile_source: str = "",
                 name: str = "model", exporter: str = "auto"):
        self.model = model.eval()
        self.teacher = (teacher or model).eval()
        self.train, self.test = train, test
        self.input_shape = tuple(int(v) for v in input_shape)
        self.labelled = labelled
        self.batch_size = batch_size
        self.threads = max(1, int(threads))
        self.time_samples = time_samples
        self.eval_limit = eval_limit
        self.export = export
        self.exporter = exporter  # the ONNX exporter of each trial's bundle (see deploy.export)
        self.schedules = dict(schedules or {})
        self.device_profile = dict(device_profile or {})  # point or "point config" -> encode ms
        self.profile_source = profile_source
        self.name = name
        self._key: str | None = None
        self._teacher_out: tuple[np.ndarray, np.ndarray] | None = None

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_teacher_out"} | {"_teacher_out": None}

    # -- identity ---------------------------------------------------------------------------
    @property
    def key(self) -> str:
        """A fingerprint of what decides a trial's result besides its spec: the weights of
        model and teacher, the data, the input shape and the measurement settings."""
        if self._key is None:
            h = hashlib.sha256()
            for m in (self.model, self.teacher):
                for k, v in m.state_dict().items():
                    h.update(k.encode())
                    h.update(v.detach().cpu().contiguous().numpy().tobytes())
            for d in (self.train, self.test):
                h.update(f"{getattr(d, 'name', type(d).__name__)}:{len(d)}".encode())
            stages = sorted(self.schedules.items())
            settings = [self.input_shape, self.labelled, self.batch_size, self.eval_limit, stages]
            if self.exporter != "auto":  # (keeps the ids of stores written before the option)
                settings.append(self.exporter)
            h.update(json.dumps(settings, default=str).encode())
            self._key = h.hexdigest()[:16]
        return self._key

    def trial_id(self, spec: TrialSpec) -> str:
        return hashlib.sha256((self.key + spec.model_dump_json()).encode()).hexdigest()[:12]

    def stages(self, spec: TrialSpec) -> list[dict]:
        beta = spec.beta if spec.beta is not None else 0.0
        if spec.fit not in self.schedules:
            return schedule(spec.fit, beta)
        return [dict(st, beta=beta) if st.get("kind") == "features" else dict(st)
                for st in self.schedules[spec.fit]]

    # -- the teacher on the held-out data, once per process ---------------------------------
    def teacher_outputs(self) -> tuple[np.ndarray, np.ndarray]:
        """``(teacher top-1, labels)`` on the measured test samples."""
        if self._teacher_out is None:
            n = self.n_test
            preds, labels = [], []
            with torch.no_grad():
                for i in range(0, n, 256):
                    items = [self.test[j] for j in range(i, min(n, i + 256))]
                    x = torch.stack([it[0] for it in items])
                    preds.append(_logits(self.teacher(x)).argmax(-1).numpy())
                    labels.append(np.array([int(it[1]) if self.labelled else -1 for it in items]))
            self._teacher_out = (np.concatenate(preds), np.concatenate(labels))
        return self._teacher_out

    @property
    def n_test(self) -> int:
        return len(self.test) if self.eval_limit is None else min(self.eval_limit, len(self.test))


def schedule(fit: str, beta: float) -> list[dict]:
    """The two-stage recipe for a fit mode, in optimizer steps (batch 16 by default).

    ``full`` is the demo's schedule on digits (20 + 6 epochs of 90 steps); ``quick`` is 15 %
    of it (270 + 90 steps). Stage 1 matches the teacher's output through the frozen tail
    (``match_output``), which at a few dozen bits per sample tells the latent what the
    classifier needs. ``none``: no training (an untrained bottleneck, measured as is).
    """
    if fit == "none":
        return []
    feat, kd = (1800, 540) if fit == "full" else (270, 90)
    return [dict(kind="features", steps=feat, lr=3e-3, beta=beta, match_output=10, tau=1),
            dict(kind="kd", steps=kd, lr=3e-4, tau=1)]


def has_rate(bottleneck: nn.Module) -> bool:
    """Whether a bottleneck has a learned entropy model, so that β trades its rate."""
    from compressai.entropy_models import EntropyModel

    return any(isinstance(m, EntropyModel) for m in bottleneck.modules())


def _logits(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


# -- the store ---------------------------------------------------------------------------------

class TrialStore:
    """``root/trials/<name>-<id>/``: ``result.json`` (a finished trial), ``trial.log``,
    ``fit/`` (checkpoints; a killed fit resumes from them) and ``bundle/``."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        (self.root / "trials").mkdir(parents=True, exist_ok=True)

    def dir(self, ctx: TrialContext, spec: TrialSpec) -> Path:
        return self.root / "trials" / f"{spec.name}-{ctx.trial_id(spec)}"

    def result(self, ctx: TrialContext, spec: TrialSpec) -> TrialResult | None:
        path = self.dir(ctx, spec) / "result.json"
        if not path.exists():
            return None
        return TrialResult.model_validate_json(path.read_text())

    def save(self, ctx: TrialContext, result: TrialResult) -> None:
        d = self.dir(ctx, result.spec)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".result.{os.getpid()}.tmp"
        tmp.write_text(result.model_dump_json(indent=1))
        os.replace(tmp, d / "result.json")  # atomic: a killed trial leaves no result


class _Log:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(path, "a", buffering=1)

    def __call__(self, msg: str) -> None:
        self.f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [{os.getpid()}] {msg}\n")

    def close(self) -> None:
        self.f.close()


# -- one trial ----------------------------------------------------------------------------------

def run_trial(ctx: TrialContext, spec: TrialSpec, store: TrialStore | str | Path) -> TrialResult:
    """Fit and measure ``spec`` (or read it back when it already finished)."""
    store = store if isinstance(store, TrialStore) else TrialStore(store)
    done = store.result(ctx, spec)
    if done is not None:
        return done
    d = store.dir(ctx, spec)
    log = _Log(d / "trial.log")
    log(f"start {spec.model_dump_json()} (context {ctx.key})")
    t0 = time.time()
    try:
        result = (_plain_trial if spec.config == PLAIN else _bottleneck_trial)(ctx, spec, d, log)
    except BaseException as e:
        log(f"failed: {type(e).__name__}: {e}\n{traceback.format_exc()}")
        log.close()
        raise
    result.seconds = round(time.time() - t0, 2)
    store.save(ctx, result)
    log(f"done in {result.seconds:.1f} s: {result.metric} {100 * result.accuracy:.2f} %, "
        f"{result.bytes_mean:.1f} B/sample ({result.bytes_source}), device "
        f"{'' if result.device_ms is None else f'{result.device_ms:.3f} ms '}({result.device_ms_source})")
    log.close()
    return result


def _score(ctx: TrialContext, preds: np.ndarray) -> tuple[str, float, float, float]:
    t_pred, labels = ctx.teacher_outputs()
    agree = float((preds == t_pred).mean())
    if ctx.labelled:
        return "accuracy", float((preds == labels).mean()), agree, float((t_pred == labels).mean())
    return "agreement", agree, agree, 1.0


def _costs_fields(rep) -> dict[str, Any]:
    return dict(encoder_params=rep.encoder_params, encoder_bits=rep.encoder_bits,
                encoder_macs=rep.encoder_macs, encoder_flops=rep.encoder_flops,
                tail_flops=rep.tail_flops, tail_macs=rep.tail_macs, cut_bytes=rep.cut_bytes)


def _pixels(ctx: TrialContext) -> int:
    return int(ctx.input_shape[-1] * ctx.input_shape[-2]) if len(ctx.input_shape) >= 2 else 1


def _profile_ms(ctx: TrialContext, spec: TrialSpec) -> float | None:
    """The profile's encode time for this trial: by ``"point config"``, ``"point kind"``, or
    (plain points only) ``"point"``."""
    kind = spec.config.split(":", 1)[0]
    keys = [f"{spec.point} {spec.config}", f"{spec.point} {kind}"]
    for key in keys + ([spec.point] if spec.config == PLAIN else []):
        if key in ctx.device_profile:
            return float(ctx.device_profile[key])
    return None


def _plain_trial(ctx: TrialContext, spec: TrialSpec, d: Path, log: _Log) -> TrialResult:
    from splitter.compile.split import split

    s = split(ctx.model, spec.point, input_shape=ctx.input_shape)
    rep = s.costs
    # the untouched model: the teacher's own predictions, when the teacher is the model
    if ctx.teacher is ctx.model:
        preds = ctx.teacher_outputs()[0]
    else:
        with torch.no_grad():
            preds = np.concatenate([_logits(ctx.model(torch.stack(
                [ctx.test[j][0] for j in range(i, min(ctx.n_test, i + 256))]))).argmax(-1).numpy()
                for i in range(0, ctx.n_test, 256)])
    metric, acc, agree, t_acc = _score(ctx, preds)
    raw = float(rep.cut_bytes)
    device_ms, source = _device_time_plain(ctx, spec, s, d, log)
    return TrialResult(id=ctx.trial_id(spec), spec=spec, fitted=False, metric=metric, accuracy=acc,
                       agreement=agree, teacher_accuracy=t_acc, samples=ctx.n_test,
                       bytes_mean=raw, bytes_p50=raw, bytes_p95=raw, bpp=raw * 8 / _pixels(ctx),
                       bytes_source="raw", device_ms=device_ms, device_ms_source=source,
                       **_costs_fields(rep))


def _time(fn: Callable[[torch.Tensor], Any], xs: list[torch.Tensor]) -> float:
    for x in xs[:3]:
        fn(x)  # warm-up: session allocation, first-call paths
    times = []
    for x in xs:
        t = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - t) * 1e3)
    return float(statistics.median(times))


def _samples(ctx: TrialContext, n: int) -> list[torch.Tensor]:
    return [ctx.test[i][0].unsqueeze(0) for i in range(min(n, len(ctx.test)))]


def _device_time_plain(ctx: TrialContext, spec: TrialSpec, s, d: Path, log: _Log) -> tuple[float | None, str]:
    prof = _profile_ms(ctx, spec)
    if prof is not None:
        return prof, f"profile {ctx.profile_source}"
    if spec.point == "input":
        return 0.0, "nothing runs on the device"
    if not ctx.export:
        return None, "not measured (export off)"
    import onnxruntime as ort

    xs = _samples(ctx, ctx.time_samples)
    path = d / "head.onnx"
    try:
        with warnings_quiet():
            torch.onnx.export(s.head, (xs[0],), str(path), dynamo=False, opset_version=17)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = ctx.threads, 1
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        ms = _time(lambda x: sess.run(None, {name: x.numpy()}), xs)
    except Exception as e:  # noqa: BLE001 - any exporter/runtime failure: say so, keep the trial
        log(f"head timing failed: {type(e).__name__}: {e}")
        return None, f"not measured ({type(e).__name__} exporting the head)"
    return ms, f"onnxruntime head, {ctx.threads} thread(s), median of {len(xs)}"


@contextlib.contextmanager
def warnings_quiet():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _bottleneck_trial(ctx: TrialContext, spec: TrialSpec, d: Path, log: _Log) -> TrialResult:
    from splitter.compile.split import split
    from splitter.explore.evaluate import payload_sizes
    from splitter.explore.sweep import BottleneckSpec
    from splitter.train import checkpoint as ckpt
    from splitter.train.fit import fit

    bs = BottleneckSpec.of(spec.config)
    torch.manual_seed(spec.seed)
    s = split(ctx.model, spec.point, bottleneck=bs.kind, mode=bs.mode, input_shape=ctx.input_shape,
              **bs.options)
    stages = ctx.stages(spec)
    t1 = time.time()
    fit_stages: list[dict[str, Any]] = []
    if stages:
        fit_dir = d / "fit"
        resume = (fit_dir / ckpt.STATE).exists()
        log(f"fit {spec.fit}: {json.dumps(stages)}" + (" (resuming)" if resume else ""))
        rep = fit(s, ctx.train, teacher=ctx.teacher, stages=stages, batch_size=ctx.batch_size,
                  seed=spec.seed, output_dir=str(fit_dir), resume=resume, progress=False,
                  cache_teacher=True)
        fit_stages = [st.model_dump() for st in rep.stages]
        for st in rep.stages:
            log(f"  stage {st.kind}: {st.steps} steps, {st.seconds:.1f} s, loss {st.loss}, "
                f"bits {st.bits}, nmse {st.nmse}")
    else:
        s.bottleneck.eval()
        with contextlib.suppress(AttributeError):
            s.bottleneck.update()
    fit_s = time.time() - t1
    s.eval()
    xs = [ctx.test[i][0].unsqueeze(0) for i in range(ctx.n_test)]
    sizes, preds = payload_sizes(s, xs)
    metric, acc, agree, t_acc = _score(ctx, preds)
    rep = s.costs
    sizes_arr = np.asarray(sizes, dtype=np.float64)
    log(f"measured {len(sizes)} held-out samples: {metric} {100 * acc:.2f} %, "
        f"{sizes_arr.mean():.1f} B mean")
    device_ms, source, bundle_mean, bundle_n, bundle_dir = None, "not measured (export off)", None, 0, None
    prof = _profile_ms(ctx, spec)
    if ctx.export:
        device_ms, source, bundle_mean, bundle_n, bundle_dir = _bundle_timing(ctx, s, d, log)
    if prof is not None:
        device_ms, source = prof, f"profile {ctx.profile_source}"
    return TrialResult(
        id=ctx.trial_id(spec), spec=spec, fitted=bool(stages), metric=metric, accuracy=acc,
        agreement=agree, teacher_accuracy=t_acc, samples=len(sizes),
        bytes_mean=float(sizes_arr.mean()), bytes_p50=float(np.percentile(sizes_arr, 50)),
        bytes_p95=float(np.percentile(sizes_arr, 95)), bpp=float(sizes_arr.mean()) * 8 / _pixels(ctx),
        bytes_source="payload", device_ms=device_ms, device_ms_source=source,
        bundle_bytes_mean=bundle_mean, bundle_samples=bundle_n, bundle=bundle_dir,
        fit_seconds=round(fit_s, 2), fit_stages=fit_stages, **_costs_fields(rep))


def _bundle_timing(ctx: TrialContext, s, d: Path, log: _Log):
    from splitter.deploy.export import export
    from splitter.deploy.runtime import load_bundle

    out = d / "bundle"
    if out.exists():
        shutil.rmtree(out)  # a bundle left by a killed run of this trial
    xs = _samples(ctx, max(ctx.time_samples, 32))
    try:
        with warnings_quiet():
            export(s, out, inputs=torch.cat(xs[:32]), threads=ctx.threads, exporter=ctx.exporter)
        dev = load_bundle(out).device(threads=ctx.threads)
        timed = xs[:ctx.time_samples]
        ms = _time(dev.encode, timed)
        sizes = [len(dev.encode(x)) for x in timed]
    except Exception as e:  # noqa: BLE001 - export or runtime failure: the trial keeps its figures
        log(f"bundle export/timing failed: {type(e).__name__}: {e}")
        return None, f"not measured ({type(e).__name__} exporting the bundle)", None, 0, None
    log(f"bundle {out}: device encode {ms:.3f} ms median over {len(timed)}, "
        f"{np.mean(sizes):.1f} B mean on those samples")
    return (ms, f"onnxruntime head + coder, {ctx.threads} thread(s), median of {len(timed)}",
            float(np.mean(sizes)), len(sizes), str(out))


# -- many trials ----------------------------------------------------------------------------------

_WORKER_CTX: TrialContext | None = None


def _init_worker(blob: bytes, threads: int) -> None:
    global _WORKER_CTX
    torch.set_num_threads(threads)
    _WORKER_CTX = pickle.loads(blob)


def _worker_run(spec: TrialSpec, root: str) -> TrialResult:
    assert _WORKER_CTX is not None
    return run_trial(_WORKER_CTX, spec, root)


def _pickled(ctx: TrialContext) -> bytes:
    try:
        return pickle.dumps(ctx)
    except Exception as e:  # noqa: BLE001 - pickle raises several types
        raise ConfigError(f"the model or data cannot be sent to worker processes ({type(e).__name__}: "
                          f"{e}); run with jobs=1, or use datasets from splitter.train.data") from e


class Failed(BaseModel):
    spec: TrialSpec
    error: str


def run_trials(ctx: TrialContext, specs: Iterable[TrialSpec], store: TrialStore | str | Path, *,
               jobs: int = 1, ray: str | bool | None = None, progress: bool = True,
               on_result: Callable[[TrialResult], None] | None = None
               ) -> tuple[list[TrialResult], list[Failed], list[str]]:
    """Run the trials of ``specs`` that have no result in ``store``.

    Returns ``(results in spec order, failures, ids of the trials run now)``. ``jobs``:
    processes (spawned) running at once; ``ray``: ``True`` (a local Ray, or the one
    ``ray.init`` already started) or an address, to run them as Ray Tune trials.
    """
    store = store if isinstance(store, TrialStore) else TrialStore(store)
    specs = list(dict.fromkeys(specs))
    have = {s: store.result(ctx, s) for s in specs}
    todo = [s for s in specs if have[s] is None]
    ran: list[str] = []
    failed: list[Failed] = []
    bar = None
    if progress and specs:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(specs), initial=len(specs) - len(todo), desc=f"trials {ctx.name}",
                   unit="trial", leave=False)

    def finished(spec: TrialSpec, res: TrialResult | None, err: str | None) -> None:
        if res is not None:
            have[spec] = res
            ran.append(res.id)
            if on_result:
                on_result(res)
        else:
            failed.append(Failed(spec=spec, error=err or "unknown error"))
        if bar is not None:
            bar.update()
            bar.set_postfix_str(f"{spec.point} {spec.config}", refresh=False)

    try:
        if todo and ray not in (None, False):
            _run_ray(ctx, todo, store, jobs, ray, finished)
        elif todo and jobs > 1:
            from concurrent.futures import ProcessPoolExecutor, as_completed
            from multiprocessing import get_context

            with ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=get_context("spawn"),
                                     initializer=_init_worker,
                                     initargs=(_pickled(ctx), ctx.threads)) as pool:
                futs = {pool.submit(_worker_run, s, str(store.root)): s for s in todo}
                try:
                    for f in as_completed(futs):
                        try:
                            finished(futs[f], f.result(), None)
                        except Exception as e:  # noqa: BLE001 - one trial's failure is reported
                            finished(futs[f], None, f"{type(e).__name__}: {e}")
                except BaseException:
                    for f in futs:
                        f.cancel()
                    raise
        else:
            for s in todo:
                try:
                    finished(s, run_trial(ctx, s, store), None)
                except (SplitterError, ValueError, TypeError, RuntimeError) as e:
                    finished(s, None, f"{type(e).__name__}: {e}")
    finally:
        if bar is not None:
            bar.close()
    return [have[s] for s in specs if have[s] is not None], failed, ran


def _run_ray(ctx: TrialContext, todo: list[TrialSpec], store: TrialStore, jobs: int,
             address: str | bool, finished: Callable) -> None:
    """The missing trials as one Ray Tune experiment (a grid over the specs).

    Ray Tune schedules them on the cluster's CPUs (one each), retries nothing on its own
    (a failed trial is reported and rerun by the next sweep) and logs each trial's metrics
    under ``store/ray/<experiment>``. The store stays the resume state: Tune's own
    experiment checkpoint is not needed, since finished trials are never submitted again.
    """
    try:
        import ray
        from ray import tune
    except ImportError as e:
        raise ConfigError("--ray needs Ray Tune: pip install 'ray[tune]' (or the project's "
                          "[ray] extra)") from e
    if not ray.is_initialized():
        ray.init(address=None if address is True or address == "local" else str(address),
                 log_to_driver=False, include_dashboard=False)
    root = str(store.root)

    def trainable(config: dict, ctx: TrialContext) -> None:
        torch.set_num_threads(ctx.threads)
        res = run_trial(ctx, TrialSpec.model_validate(config["spec"]), root)
        tune.report({"accuracy": res.accuracy, "bytes_mean": res.bytes_mean, "trial_id": res.id,
                     "device_ms": -1.0 if res.device_ms is None else res.device_ms})

    fn = tune.with_resources(tune.with_parameters(trainable, ctx=ctx), {"cpu": 1})
    tuner = tune.Tuner(
        fn,
        param_space={"spec": tune.grid_search([s.model_dump() for s in todo])},
        tune_config=tune.TuneConfig(max_concurrent_trials=max(1, jobs) if jobs > 1 else None),
        run_config=tune.RunConfig(storage_path=str(store.root / "ray"),
                                  name=f"sweep-{ctx.key}-{int(time.time())}", verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=0)))
    grid = tuner.fit()
    by_spec = {}
    for r in grid:
        spec = TrialSpec.model_validate(r.config["spec"])
        by_spec[spec] = r
    for spec in todo:
        r = by_spec.get(spec)
        res = store.result(ctx, spec)
        if res is not None:
            finished(spec, res, None)
        else:
            err = getattr(r, "error", None) if r is not None else "Ray returned no result"
            finished(spec, None, f"Ray Tune trial failed: {err}")
