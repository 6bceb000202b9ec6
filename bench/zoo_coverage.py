"""Zoo coverage: is the plain split exact at every stage output, for one model per timm family?

A *family* is the timm module that registers the model (``timm.models.resnet``,
``timm.models.vision_transformer``, ...). For each family the smallest model (fewest
parameters, counted on the ``meta`` device so nothing is allocated) is built with random
weights at the smallest input it accepts, traced, and split at every ``feature_info`` stage
output, at ``input``, ``output`` and three interior cuts (1/4, 1/2, 3/4 of the cut list, plus
the first multi-tensor cut). Each split must give ``torch.equal(tail(head(x)), model(x))``
against the *original* module run eagerly.

Every model runs in a forked child with a wall-clock limit, so one hang or crash costs one
family, not the run.

::

    python bench/zoo_coverage.py                       # every family
    python bench/zoo_coverage.py --families resnet,vit --timeout 300 --json out.json
    python bench/zoo_coverage.py --limit 10

Prints one line per family, then the coverage rate (families exact at every checked cut,
with every ``feature_info`` stage module a cut point / families tried) and each failure with
its reason. ``feature_info`` names that are no module of the model (timm bugs) are listed
as notes; they cannot count against the split.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
import traceback
import warnings
from collections import defaultdict

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import timm  # noqa: E402
import torch  # noqa: E402
from pydantic import BaseModel, Field  # noqa: E402
from timm.models import _registry  # noqa: E402

import splitter  # noqa: E402

# Size words in timm names, smallest first: a name with an earlier word is tried first.
_SIZE_WORDS = ["atto", "femto", "pico", "nano", "xxxs", "xxs", "tiny", "xs", "mini", "small", "t0",
               "s0", "b0", "lite0", "050", "18", "_t", "_s"]
_SIZES = (64, 96, 128, 160, 192, 224)  # input sizes tried, smallest first


class CutCheck(BaseModel):
    name: str
    tensors: int
    exact: bool
    error: str | None = None


class ModelResult(BaseModel):
    """Outcome for one family's model."""

    family: str
    model: str
    params: int | None = None
    input_shape: list[int] | None = None
    frontend: str | None = None
    attempts: dict[str, str] = Field(default_factory=dict)  # frontends that failed and why
    stages: list[str] = Field(default_factory=list)
    missing_stages: list[str] = Field(default_factory=list)  # feature_info modules that are no cut
    unknown_stages: list[str] = Field(default_factory=list)  # feature_info names no module has
    cuts: list[CutCheck] = Field(default_factory=list)
    n_cut_points: int = 0
    status: str = "error"  # exact|mismatch|missing_stage|trace_error|build_error|timeout|error
    reason: str | None = None
    seconds: float = 0.0


def families(include_test: bool = False) -> dict[str, list[str]]:
    """timm module (short name) -> its registered model names."""
    fam: dict[str, list[str]] = defaultdict(list)
    for n in timm.list_models():
        if n.startswith("test_") and not include_test:  # timm's unit-test stand-ins
            continue
        fam[_registry._model_to_module[n]].append(n)
    return dict(sorted(fam.items()))


def _size_rank(name: str) -> tuple[int, int, str]:
    for k, w in enumerate(_SIZE_WORDS):
        if w in name:
            return (k, len(name), name)
    return (len(_SIZE_WORDS), len(name), name)


def meta_params(name: str) -> int | None:
    """Parameter count of ``name`` built on the meta device (no memory, no init)."""
    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            m = timm.create_model(name, pretrained=False)
        return sum(p.numel() for p in m.parameters())
    except Exception:  # noqa: BLE001 - some models cannot be built on meta; rank them last
        return None


def pick_model(names: list[str], candidates: int = 8) -> tuple[str, int | None]:
    """The smallest of the ``candidates`` names whose size word ranks first."""
    pool = sorted(names, key=_size_rank)[:candidates]
    counted = [(meta_params(n), n) for n in pool]
    counted.sort(key=lambda t: (t[0] is None, t[0] or 0, _size_rank(t[1])))
    return counted[0][1], counted[0][0]


def _create(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **kwargs).eval()


def _runs(model: torch.nn.Module, shape: tuple[int, ...]) -> bool:
    try:
        with torch.no_grad():
            model(torch.randn(2, *shape))
        return True
    except Exception:  # noqa: BLE001 - this size does not work
        return False


def build(name: str) -> tuple[torch.nn.Module, tuple[int, ...]]:
    """Build ``name`` (random weights, eval) at the smallest square input it runs on.

    A model with a fixed input size is rebuilt with ``img_size=`` per size tried (one
    without that argument runs at its default size); the others are built once and run at
    each size.
    """
    cfg = timm.models.get_pretrained_cfg(name)
    c, h, w = cfg.input_size if cfg else (3, 224, 224)
    smaller = [(c, s, s) for s in _SIZES if s < min(h, w)]
    if cfg and getattr(cfg, "fixed_input_size", False):
        for shape in smaller:
            try:
                model = _create(name, img_size=shape[1])
            except TypeError:  # no img_size= argument
                break
            except Exception:  # noqa: BLE001 - e.g. a window size that does not divide
                continue
            if _runs(model, shape):
                return model, shape
    else:
        model = _create(name)
        for shape in smaller:
            if _runs(model, shape):
                return model, shape
    model = _create(name)
    if not _runs(model, (c, h, w)):
        model(torch.randn(2, c, h, w))  # raises the model's own error
    return model, (c, h, w)


def pick_cuts(graph: splitter.Graph) -> list[str]:
    """Stage outputs, both ends, the cuts at 1/4, 1/2 and 3/4, and the first multi-tensor cut."""
    cuts = graph.cut_points()
    picks = ["input", *graph.stage_names(), "output"]
    picks += [cuts[len(cuts) * k // 4].name for k in (1, 2, 3)]
    multi = [c.name for c in cuts if len(c.tensors) > 1]
    if multi and not any(len(graph.cut(p).tensors) > 1 for p in picks):
        picks.append(multi[len(multi) // 2])
    return list(dict.fromkeys(picks))


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def check(name: str, family: str = "", params: int | None = None) -> ModelResult:
    """Build, trace and split ``name`` at every picked cut; exactness against eager."""
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    res = ModelResult(family=family, model=name, params=params)
    try:
        model, shape = build(name)
    except Exception as e:  # noqa: BLE001
        res.status, res.reason = "build_error", str(e)
        res.seconds = time.perf_counter() - t0
        return res
    res.input_shape = list(shape)
    try:
        g = splitter.trace(model, shape)
    except splitter.errors.TraceError as e:
        res.status, res.reason, res.attempts = "trace_error", str(e)[:600], e.attempts
        res.seconds = time.perf_counter() - t0
        return res
    res.frontend, res.attempts, res.stages = g.frontend, g.attempts, g.stage_names()
    modules = {n for n, _ in model.named_modules()}
    for f in dict.fromkeys(g.feature_modules):
        if f not in modules:  # timm's feature_info names a module the model does not have
            res.unknown_stages.append(f)
            continue
        try:
            g.cut(f)
        except splitter.errors.UnknownLayerError:
            res.missing_stages.append(f)
    res.n_cut_points = len(g.cut_points())
    # fx graphs take any batch: check at batch 2; export graphs are fixed to the example's.
    batch = 2 if g.frontend == "fx" else g.example_input.shape[0]
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x)
        for at in pick_cuts(g):
            try:
                s = splitter.split(g, at)
                ok = _same(s.tail(s.head(x)), ref)
                res.cuts.append(CutCheck(name=at, tensors=len(s.cut.tensors), exact=ok))
            except Exception as e:  # noqa: BLE001
                res.cuts.append(CutCheck(name=at, tensors=-1, exact=False,
                                         error=f"{type(e).__name__}: {str(e)[:200]}"))
    bad = [c for c in res.cuts if not c.exact]
    if not bad and res.missing_stages:
        res.status = "missing_stage"
        res.reason = (f"feature_info stages with no cut point: {res.missing_stages} "
                      f"(a Python value live there cannot be re-created by the tail)")
    elif not bad:
        res.status = "exact"
    else:
        res.status = "mismatch"
        first = bad[0]
        # Is the traced graph itself off (frontend) or only the split?
        with torch.no_grad():
            whole = _same(g.gm(x), ref)
        res.reason = (f"first mismatching cut {first.name!r} ({first.tensors} tensors)"
                      + (f": {first.error}" if first.error else "")
                      + ("" if whole else "; the unsplit traced graph differs from eager too"))
    res.seconds = time.perf_counter() - t0
    return res


def _child(name: str, family: str, params: int | None, conn) -> None:
    warnings.filterwarnings("ignore")
    try:
        r = check(name, family, params)
    except BaseException as e:  # noqa: BLE001 - report anything, including SystemExit
        r = ModelResult(family=family, model=name, params=params, status="error",
                        reason=f"{type(e).__name__}: {str(e)[:300]} "
                               f"{traceback.format_exc(limit=-1).strip()[-300:]}")
    conn.send(r.model_dump_json())
    conn.close()


def run_isolated(name: str, family: str, params: int | None, timeout: float) -> ModelResult:
    """``check`` in a forked child, killed after ``timeout`` seconds."""
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_child, args=(name, family, params, child), daemon=True)
    t0 = time.perf_counter()
    p.start()
    child.close()
    if parent.poll(timeout):
        try:
            out = ModelResult.model_validate_json(parent.recv())
        except EOFError:
            out = None
        p.join(5)
        if out is not None:
            return out
    if p.is_alive():
        p.kill()
        p.join()
        return ModelResult(family=family, model=name, params=params, status="timeout",
                           reason=f"over {timeout:.0f} s", seconds=time.perf_counter() - t0)
    return ModelResult(family=family, model=name, params=params, status="error",
                       reason=f"child died with exit code {p.exitcode}",
                       seconds=time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=None, help="only the first N families")
    ap.add_argument("--families", default=None,
                    help="comma-separated family (module) names, e.g. resnet,vision_transformer")
    ap.add_argument("--models", default=None,
                    help="comma-separated model names to check instead of one per family")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per model")
    ap.add_argument("--json", default=None, help="write every result to this file")
    ap.add_argument("--include-test-models", action="store_true",
                    help="also consider timm's test_* stand-in models when picking")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")

    fam = families(args.include_test_models)
    if args.models:
        todo = [(_registry._model_to_module[m], m) for m in args.models.split(",")]
    else:
        chosen = list(fam)
        if args.families:
            want = [f.strip() for f in args.families.split(",") if f.strip()]
            unknown = [f for f in want if f not in fam]
            if unknown:
                ap.error(f"unknown families {unknown}; known: {', '.join(fam)}")
            chosen = want
        if args.limit:
            chosen = chosen[: args.limit]
        todo = [(f, None) for f in chosen]

    results: list[ModelResult] = []
    t_all = time.perf_counter()
    for k, (f, name) in enumerate(todo, 1):
        if name is None:
            name, params = pick_model(fam[f])
        else:
            params = meta_params(name)
        r = run_isolated(name, f, params, args.timeout)
        results.append(r)
        cuts = f"{sum(c.exact for c in r.cuts)}/{len(r.cuts)} cuts exact" if r.cuts else ""
        print(f"[{k}/{len(todo)}] {f:28s} {name:40s} {r.status:12s} {r.frontend or '-':6s} "
              f"{cuts:18s} {r.seconds:6.1f}s", flush=True)
        if args.json:  # rewrite as we go, so a killed run still leaves its results
            with open(args.json, "w") as fh:
                json.dump([x.model_dump() for x in results], fh, indent=1)

    ok = [r for r in results if r.status == "exact"]
    print(f"\ncoverage: {len(ok)}/{len(results)} families exact at every checked cut "
          f"({100 * len(ok) / max(1, len(results)):.1f}%), {time.perf_counter() - t_all:.0f} s")
    fe = defaultdict(int)
    for r in ok:
        fe[r.frontend] += 1
    print("frontends of the exact ones: " + ", ".join(f"{k}={v}" for k, v in sorted(fe.items())))
    for r in results:
        if r.unknown_stages:
            print(f"\nNOTE {r.family} ({r.model}): timm's feature_info names modules the model "
                  f"does not have, so they cannot be cut at: {r.unknown_stages}")
    for r in results:
        if r.status != "exact":
            print(f"\nFAIL {r.family} ({r.model}): {r.status}: {r.reason}")
            for fe_name, why in r.attempts.items():
                print(f"    {fe_name}: {why}")
    return 0 if len(ok) == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
