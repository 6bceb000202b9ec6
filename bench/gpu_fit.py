"""Fit steps per second on a CUDA GPU vs the CPU: one distillation step of ``splitter.fit``.

::

    resnet50 (random weights) ─► split at layer1, entropy bottleneck (insert: 256 channels
    at the cut, latent 64×28×28 at 224×224)
    random images (B, 3, S, S), labels ─► fit's own _Run / _Prepared for one stage kind
        ─► warm-up steps ─► N timed steps of _Run.train_step (host→device copy, teacher
           signals, student forward, backward, optimizer step; torch.cuda.synchronize()
           before and after the timed loop) ─► steps/s, images/s per device and kind
        ─► cuda / cpu ratio per kind

The step is fit's (``splitter.train.fit._Run.train_step``), not a copy of it: ``features``
trains the bottleneck on the frozen ``pre`` features (stage 1), ``kd`` the decoder and the
layers after the cut against the teacher's logits (stage 2, a full ResNet-50 forward of
the teacher each step). Setup (tracing, the teacher's copy, the feature variance) is not
timed. The CPU part is small (``--cpu-steps``, stopped early past ``--cpu-budget`` seconds)
because a ResNet-50 step takes seconds there; ``--cpu-steps 0`` skips it. Idle OpenMP
threads sleep (``OMP_WAIT_POLICY=PASSIVE`` unless set, as in tests/conftest.py): with
spinning threads a step on a shared 2-core machine ran 18-26x slower.

    python bench/gpu_fit.py                        # cuda and cpu, batch 32 of 224x224
    python bench/gpu_fit.py --device cpu --steps 2 --batch 2 --size 64   # a quick check here
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads its OpenMP runtime

import torch  # noqa: E402


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def measure(model, kind: str, dev: torch.device, *, batch: int, size: int, steps: int,
            warmup: int, budget_s: float) -> dict:
    """Time ``steps`` of fit's train step of stage ``kind`` on ``dev`` (after ``warmup``)."""
    from torch.utils.data import TensorDataset

    import splitter
    from splitter.train.distributed import Context
    from splitter.train.fit import _Prepared, _Run
    from splitter.train.stages import Stage, set_trainable

    torch.manual_seed(0)
    s = splitter.split(model, at="layer1", bottleneck="entropy", input_shape=(3, size, size))
    n = batch  # the data only feeds feature_variance; the steps reuse one batch
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.randint(0, 1000, (n,), generator=g)
    data = TensorDataset(x, y)
    total = warmup + steps
    stage = Stage(kind=kind, steps=total, beta=0.01)
    ctx = Context(0, 1, dev, False)
    run = _Run(s, data, model, [stage], val_data=None, batch_size=batch, seed=0,
               output_dir=None, labelled=True, checkpoint_every=None, progress=False, ctx=ctx,
               num_workers=0, cache_teacher=False, max_steps=None)
    try:
        set_trainable(s, stage)
        p = _Prepared(run, 0, stage, total, 0, False)
        xb, yb, idx = x[:batch], y[:batch], torch.arange(batch)
        for i in range(warmup):
            run.train_step(p, i, xb, yb, idx)
        _sync(dev)
        done = 0
        t0 = time.perf_counter()
        for i in range(steps):
            run.train_step(p, warmup + i, xb, yb, idx)
            done += 1
            if dev.type == "cpu" and time.perf_counter() - t0 > budget_s:
                break
        _sync(dev)
        secs = time.perf_counter() - t0
        loss = p.sums["loss"] / max(p.sums["n"], 1.0)
    finally:
        s.to("cpu")
        del run
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return {"kind": kind, "device": str(dev), "steps": done, "warmup": warmup, "seconds": secs,
            "steps_per_s": done / secs, "images_per_s": done * batch / secs, "mean_loss": loss}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["both", "cuda", "cpu"], default="both",
                    help="where to measure (both: cuda, then cpu unless --cpu-steps 0)")
    ap.add_argument("--kinds", default="features,kd", help="stage kinds to time, comma-separated")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=224, help="image side (S x S)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps on cuda")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps before, on cuda")
    ap.add_argument("--cpu-steps", type=int, default=2, help="timed steps on the cpu (0: skip)")
    ap.add_argument("--cpu-warmup", type=int, default=1)
    ap.add_argument("--cpu-budget", type=float, default=20.0,
                    help="stop the cpu's timed steps of one kind after this many seconds")
    ap.add_argument("--threads", type=int, default=0, help="cpu threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import timm

    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    t_start = time.time()
    print(f"torch {torch.__version__}, cuda available: {torch.cuda.is_available()}, "
          f"cpu threads: {torch.get_num_threads()} of {os.cpu_count()} cores, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    if torch.cuda.is_available():
        print(f"gpu: {torch.cuda.get_device_name(0)}; cudnn.benchmark="
              f"{torch.backends.cudnn.benchmark}, cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}, "
              f"matmul precision={torch.get_float32_matmul_precision()} (torch defaults, as fit runs)")
    print(f"measuring: splitter fit train step, resnet50 (random weights) split at layer1, "
          f"entropy bottleneck, batch {args.batch} of {args.size}x{args.size} random images, "
          f"fp32, stage kinds {kinds}")

    plan: list[tuple[torch.device, int, int]] = []
    if args.device in ("both", "cuda"):
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA GPU visible (torch.cuda.is_available() is False); "
                             "run with --device cpu")
        plan.append((torch.device("cuda", 0), args.steps, args.warmup))
    if args.device == "cpu" or (args.device == "both" and args.cpu_steps > 0):
        plan.append((torch.device("cpu"), args.cpu_steps if args.device == "both" else args.steps,
                     args.cpu_warmup))

    torch.manual_seed(0)
    model = timm.create_model("resnet50", pretrained=False).eval()
    rows = []
    for dev, steps, warmup in plan:
        for kind in kinds:
            r = measure(model, kind, dev, batch=args.batch, size=args.size, steps=steps,
                        warmup=warmup, budget_s=args.cpu_budget)
            rows.append(r)
            print(f"  {r['device']:>6} {kind:>8}: {r['steps']} timed steps (after {r['warmup']} "
                  f"warm-up) in {r['seconds']:.3f} s = {r['steps_per_s']:.3f} steps/s, "
                  f"{r['images_per_s']:.1f} images/s, mean loss {r['mean_loss']:.4g}", flush=True)

    by = {(r["device"].split(":")[0], r["kind"]): r for r in rows}
    for kind in kinds:
        g, c = by.get(("cuda", kind)), by.get(("cpu", kind))
        if g and c:
            print(f"RATIO {kind}: cuda {g['steps_per_s']:.3f} steps/s / cpu {c['steps_per_s']:.3f} "
                  f"steps/s = {g['steps_per_s'] / c['steps_per_s']:.1f}x (cpu: {c['steps']} steps, "
                  f"{torch.get_num_threads()} threads)")
    print(f"total {time.time() - t_start:.1f} s")


if __name__ == "__main__":
    main()
