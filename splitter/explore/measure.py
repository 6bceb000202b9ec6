"""measure: turn an analytic sweep into a measured one.

::

    SweepResult (analytic rows) ──► one TrialSpec per row (× β, or a β bisected to a rate)
        ──► run_trials (store; jobs | Ray)  ──► rows: measured accuracy, bytes, device time
    held-out data ──► input codecs (JPEG … JPEG XL) ──► CodecPoint per quality
    curves {codec, "point config" over β} ──► BD-rate / BD-accuracy vs the anchor
        ──► SweepResult(rows, codecs, bd, anchor, teacher_accuracy)

Latency of a measured row = its measured device encode time (or the device profile's)
+ link transfer of its measured mean payload + server FLOPs / GFLOP/s (the server side is
still an estimate; ``device_ms_source`` names where the device part came from).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from splitter.errors import ConfigError, SplitterError
from splitter.explore.sweep import (
    PLAIN,
    BottleneckSpec,
    Skipped,
    SweepResult,
    SweepRow,
    _latency,
    _mark_pareto,
)
from splitter.explore.trials import (
    DEFAULT_BETA,
    TrialContext,
    TrialResult,
    TrialSpec,
    TrialStore,
    has_rate,
    run_trials,
)

__all__ = ["measured_sweep", "resolve_data", "load_device_profile", "curves_of"]


def resolve_data(data: Any, input_shape: Sequence[int], model: nn.Module | None = None,
                 seed: int = 0) -> tuple[Dataset, Dataset, str]:
    """``(train, held-out test, name)`` from a name, a folder, a Dataset or a pair."""
    from splitter.train.data import as_dataset, holdout

    if isinstance(data, (tuple, list)) and len(data) == 2:
        train, test = data
        return train, test, getattr(test, "name", "test data")
    if isinstance(data, Dataset):
        train, test = holdout(data, 0.2, seed)
        return train, test, test.name
    if isinstance(data, str):
        if data in ("digits", "fashion-mnist", "fashion_mnist", "fashionmnist"):
            return (as_dataset(data, split="train", input_size=input_shape, seed=seed),
                    as_dataset(data, split="test", input_size=input_shape, seed=seed),
                    f"{data}/test")
        if not os.path.isdir(data):
            raise ConfigError(f"--data {data!r} is neither 'digits', 'fashion-mnist' nor a directory; "
                              f"give an image folder (DIR/<class>/<image>, or DIR/train and DIR/test)")
        if os.path.isdir(os.path.join(data, "train")) and os.path.isdir(os.path.join(data, "test")):
            return (as_dataset(data, split="train", model=model, input_size=input_shape),
                    as_dataset(data, split="test", model=model, input_size=input_shape),
                    os.path.join(data, "test"))
        whole = as_dataset(data, split="all", model=model, input_size=input_shape)
        train, test = holdout(whole, 0.2, seed)
        return train, test, test.name
    raise ConfigError(f"cannot read data {type(data).__name__}; give 'digits', 'fashion-mnist', a "
                      f"directory, a Dataset or a (train, test) pair")


def _labelled(data: Dataset) -> bool:
    if getattr(data, "labelled", True) is False:
        return False
    targets = getattr(data, "targets", None)
    return not (targets is not None and len(targets) and all(int(t) < 0 for t in targets))


def load_device_profile(source: str | dict | None) -> tuple[dict[str, float], str, float | None]:
    """Encode times keyed ``"point kind"`` / ``"point config"`` / ``"point"`` (plain), a label
    naming their source, and the device's effective GFLOP/s when the profile gives one.

    Reads a :class:`splitter.deploy.profile.DeviceProfile` (``splitter profile BUNDLE``
    writes one: its cut, kind, ``encode_ms_p50`` and ``device_gflops``), or a JSON file
    ``{"encode_ms": {"layer1 entropy": 3.4, "layer2": 2.1}}`` (the label then says so).
    """
    if source is None:
        return {}, "", None
    if isinstance(source, dict):
        data, label = source, "dict"
    else:
        path = Path(source)
        if not path.exists():
            raise ConfigError(f"device profile {source!r} does not exist; run `splitter profile "
                              f"BUNDLE -o FILE` on the device, or write a JSON file "
                              f'{{"encode_ms": {{"layer1 entropy": 2.1}}}}')
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"device profile {source!r} is not JSON ({e})") from e
        label = f"{path.name} (JSON encode_ms)"
        if isinstance(data, dict) and "encode_ms_p50" in data:
            from splitter.deploy.profile import load_profile

            prof = load_profile(path)
            return ({f"{prof.cut} {prof.kind}": float(prof.encode_ms_p50)},
                    f"{path.name} (DeviceProfile, {prof.threads or 'all'} thread(s), p50)",
                    prof.device_gflops)
    enc = data.get("encode_ms") if isinstance(data, dict) else None
    if not isinstance(enc, dict) or not all(isinstance(v, (int, float)) for v in enc.values()):
        raise ConfigError("a device profile needs 'encode_ms': {'point kind' or 'point': milliseconds}, "
                          "or is a DeviceProfile written by `splitter profile`")
    return {str(k): float(v) for k, v in enc.items()}, label, None


def _profile_ms(profile: dict[str, float], point: str, config: str) -> float | None:
    kind = config.split(":", 1)[0]
    for key in [f"{point} {config}", f"{point} {kind}"] + ([point] if config == PLAIN else []):
        if key in profile:
            return profile[key]
    return None


def _row(analytic: SweepRow, res: TrialResult, teacher_acc: float, link, device, server,
         profile: dict[str, float] | None = None, profile_label: str = "") -> SweepRow:
    r = analytic.model_copy(deep=True)
    r.beta = res.spec.beta
    r.measured, r.fitted, r.metric = True, res.fitted, res.metric
    r.accuracy = res.accuracy
    r.accuracy_drop = round(100 * (teacher_acc - res.accuracy), 6)
    r.payload_bytes = res.bytes_mean
    r.payload_measured = res.bytes_source == "payload"
    r.bytes_p50, r.bytes_p95, r.bpp = res.bytes_p50, res.bytes_p95, res.bpp
    r.encoder_params, r.encoder_bits = res.encoder_params, res.encoder_bits
    r.encoder_macs, r.encoder_flops = res.encoder_macs, res.encoder_flops
    r.tail_macs, r.tail_flops = res.tail_macs, res.tail_flops
    r.device_ms, r.device_ms_source = res.device_ms, (res.device_ms_source if res.device_ms is not None
                                                      else f"estimate ({res.device_ms_source})")
    prof = _profile_ms(profile or {}, r.point, r.config)
    if prof is not None:  # the device's own measurement beats this machine's
        r.device_ms, r.device_ms_source = prof, f"profile {profile_label}"
    r.bundle, r.trial_id = res.bundle, res.id
    r.latency_ms = _latency(r, link, device, server, r.device_ms)
    return r


def curves_of(rows: Sequence[SweepRow], codecs: Sequence[Any]) -> dict[str, list[tuple[float, float]]]:
    """Accuracy-vs-bytes curves: one per codec, one per (point, bottleneck config) over β."""
    curves: dict[str, list[tuple[float, float]]] = {}
    for c in codecs:
        curves.setdefault(c.method, []).append((c.bytes_mean, c.accuracy))
    for r in rows:
        if r.measured and r.config != PLAIN and r.payload_measured and r.accuracy is not None:
            curves.setdefault(f"{r.point} {r.config}", []).append((r.payload_bytes, r.accuracy))
    return curves


def measured_sweep(analytic: SweepResult, model: Any, data: Any, *, fit: str | None = "quick",
                   teacher: nn.Module | None = None, betas: Sequence[float] | None = None,
                   rate: float | str | None = None, store: str | None = None, jobs: int = 1,
                   ray: str | bool | None = None, threads: int = 1, codecs: Sequence[str] | None = None,
                   qualities: Sequence[int] | None = None, anchor: str | None = None,
                   eval_limit: int | None = None, device_profile: str | dict | None = None,
                   schedules: dict[str, list[dict]] | None = None, batch_size: int = 16, seed: int = 0,
                   export: bool = True, exporter: str = "auto",
                   input_shape: Sequence[int] | None = None, progress: bool = False) -> SweepResult:
    """Fit and measure every row of ``analytic`` (see :func:`splitter.explore.sweep.sweep`)."""
    from splitter.explore import bd

    fit_mode = "none" if fit in (None, "none") else fit
    if fit_mode not in ("quick", "full", "none"):
        raise ConfigError(f"fit must be 'quick', 'full' or None, not {fit!r}")
    module = _module_of(model)
    shape = tuple(analytic.input_shape)
    train, test, data_name = resolve_data(data, input_shape or shape, module, seed)
    labelled = _labelled(test)
    profile, profile_label, gflops = load_device_profile(device_profile)
    if gflops:  # the profiled device's effective rate, for rows it did not time
        from splitter.explore.latency import Machine

        analytic = analytic.under(device=Machine(gflops=gflops, name=f"device ({profile_label})"))
    ctx = TrialContext(module, train, test, input_shape=shape, teacher=teacher, labelled=labelled,
                       batch_size=batch_size, threads=threads, eval_limit=eval_limit, export=export,
                       schedules=schedules, name=analytic.model, exporter=exporter)
    # (the device profile applies per row, in _row)
    st = TrialStore(store or os.path.join("runs", "sweep", analytic.model))

    specs, rate_pairs = _trial_specs(analytic, module, shape, fit_mode, betas, rate, seed)
    results, failed, _ = run_trials(ctx, specs, st, jobs=jobs, ray=ray, progress=progress)
    if rate is not None and rate_pairs:
        results += _rate_controlled(ctx, st, rate_pairs, rate, fit_mode, seed)
    if not results:
        reasons = "; ".join(f"{f.spec.point} {f.spec.config}: {f.error}" for f in failed[:3])
        raise SplitterError(f"no trial of the sweep finished ({reasons}); see the trial logs under "
                            f"{st.root / 'trials'}")
    t_acc = next((r.teacher_accuracy for r in results), None)
    rows = _measured_rows(analytic, results, t_acc, profile, profile_label)
    skipped = list(analytic.skipped) + [Skipped(point=f.spec.point, config=f.spec.config, reason=f.error)
                                        for f in failed]

    names, points_ = _codec_points(ctx, st, codecs, qualities, progress)
    curves = curves_of(rows, points_)
    anchor_name = anchor or bd.best_codec(curves, names)
    bd_rows = bd.compare(curves, anchor_name) if anchor_name else []
    return analytic.model_copy(update=dict(
        rows=rows, skipped=skipped, data=data_name, fit=fit_mode, teacher_accuracy=t_acc,
        metric="accuracy" if labelled else "agreement", codecs=points_, bd=bd_rows, anchor=anchor_name))


def _module_of(model: Any) -> nn.Module:
    """The ``nn.Module`` whose weights the trials fit and run (a traced Graph's module)."""
    from splitter.compile.trace import Graph

    if isinstance(model, Graph):
        return model.gm
    if isinstance(model, nn.Module):
        return model
    raise ConfigError("a measured sweep needs the model's weights: pass an nn.Module (or load "
                      "the name with splitter.compile.trace.load_model first)")


def _trial_specs(analytic: SweepResult, module: nn.Module, shape: tuple[int, ...], fit_mode: str,
                 betas: Sequence[float] | None, rate: float | str | None, seed: int
                 ) -> tuple[list[TrialSpec], list[tuple[str, str]]]:
    """One trial per analytic row: plain points unfitted, rate-less bottlenecks once, entropy-
    coded ones at each β; ``(specs, (point, config) pairs left to rate control)``."""
    from splitter.compile.split import split
    from splitter.compile.trace import trace

    graph = trace(module, shape)
    plain_specs: list[TrialSpec] = []
    bn_specs: list[TrialSpec] = []
    rate_pairs: list[tuple[str, str]] = []
    beta_list = list(betas) if betas else [DEFAULT_BETA]
    for r in analytic.rows:
        if r.config == PLAIN:
            plain_specs.append(TrialSpec(point=r.point, fit="none", seed=seed))
            continue
        b = BottleneckSpec.of(r.config)
        s = split(graph, r.point, bottleneck=b.kind, mode=b.mode, **b.options)
        if not has_rate(s.bottleneck):
            bn_specs.append(TrialSpec(point=r.point, config=r.config, fit=fit_mode, seed=seed))
        elif rate is not None and fit_mode != "none":
            rate_pairs.append((r.point, r.config))
        else:
            bn_specs += [TrialSpec(point=r.point, config=r.config, beta=float(x), fit=fit_mode, seed=seed)
                         for x in beta_list]
    return plain_specs + bn_specs, rate_pairs


def _rate_controlled(ctx: TrialContext, st: TrialStore, pairs: Sequence[tuple[str, str]],
                     rate: float | str, fit_mode: str, seed: int) -> list[TrialResult]:
    """For each (point, config): the trial whose β bisection landed nearest ``rate`` bytes."""
    from splitter.explore.ratecontrol import bisect_beta, parse_size

    target = parse_size(rate)
    results: list[TrialResult] = []
    for point, config in pairs:
        def measure(beta: float, point: str = point, config: str = config) -> float:
            spec = TrialSpec(point=point, config=config, beta=beta, fit=fit_mode, seed=seed)
            got, bad, _ = run_trials(ctx, [spec], st, jobs=1, ray=None, progress=False)
            if bad:
                raise ConfigError(f"rate search at {point} {config}: trial β={beta:g} failed: "
                                  f"{bad[0].error}")
            return got[0].bytes_mean

        search = bisect_beta(measure, target)
        results.append(st.result(ctx, TrialSpec(point=point, config=config, beta=search.beta,
                                                fit=fit_mode, seed=seed)))
    return results


def _measured_rows(analytic: SweepResult, results: Sequence[TrialResult], t_acc: float | None,
                   profile: dict[str, float], profile_label: str) -> list[SweepRow]:
    """The analytic rows with their trials' figures, in the analytic order (then by β), with
    Pareto marks."""
    by_key = {(r.point, r.config): r for r in analytic.rows}
    rows = [_row(by_key[(res.spec.point, res.spec.config)], res, t_acc, analytic.link, analytic.device,
                 analytic.server, profile, profile_label) for res in results]
    order = {(r.point, r.config): k for k, r in enumerate(analytic.rows)}
    rows.sort(key=lambda r: (order[(r.point, r.config)], r.beta or 0.0))
    _mark_pareto(rows)
    return rows


def _codec_points(ctx: TrialContext, st: TrialStore, codecs: Sequence[str] | None,
                  qualities: Sequence[int] | None, progress: bool = False) -> tuple[list[str], list[Any]]:
    """``(codec names, CodecPoint per codec and quality)``: the input codecs on the trials'
    held-out samples (none when the data keeps no source images). Each (codec, quality)
    point is cached in the store as it finishes, so an interrupted sweep keeps the points it
    measured (HEIF at 26 ms per 28×28 image takes over four minutes per quality on 10,000)."""
    from splitter.explore.codecs import ALL_CODECS, QUALITIES, CodecPoint, available, codec_curves
    from splitter.train.checkpoint import write_text

    names = [c for c in (codecs if codecs is not None else ALL_CODECS) if codecs is not None or available(c)]
    if not names or not hasattr(ctx.test, "raw"):
        return names, []
    qs = tuple(qualities or QUALITIES)
    root = st.root / f"codecs-{ctx.key}"

    def path(codec: str, q: int):
        return root / f"{codec}-q{q}.json"

    def keep(point) -> None:
        root.mkdir(parents=True, exist_ok=True)
        write_text(point.model_dump_json(), str(path(point.method, point.quality)))  # no half file

    done = [(c, q) for c in names for q in qs if path(c, q).exists()]
    if len(done) < len(names) * len(qs):
        codec_curves(ctx.teacher, ctx.test, codecs=names, qualities=qs, labelled=ctx.labelled,
                     limit=ctx.eval_limit, progress=progress, skip=done, on_point=keep)
    return names, [CodecPoint.model_validate_json(path(c, q).read_text()) for c in names for q in qs]
