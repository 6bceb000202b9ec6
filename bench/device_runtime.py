"""The device runtime (base install, no torch) against the runtime it replaced, in one run.

::

    this venv (compiler):  split ResNet-50 Entropic Student ─► export (current code)  ─► bundle/
                           git archive BASELINE ─► export (the old code)                ─► old/
    device venv (pip install -e ., no extras):   fresh process: import, load, encode one image
    this venv + BASELINE code on PYTHONPATH:     fresh process: import, load, encode one image

Printed per runtime: import time of the device runtime (median of 7 fresh processes, and their range), peak
RSS (``VmHWM``) of a process that imports, loads the bundle and encodes one 224x224 image, the installed
size of its environment, head and coding time per image (median of ``--n``, one thread,
round-robin) and coding as % of encode; wall time, and CPU time (``process_time``), which
load from other processes on a shared machine does not inflate. The model is ResNet-50 with the Entropic Student
head (``splitter.split("resnet50", at="layer1", bottleneck="entropy", mode="replace",
channels=24)``), random weights (seed 0), on a synthetic image: sizes are only indicative.

    python bench/device_runtime.py [--device-venv DIR] [--baseline REV] [--n 30] [--work DIR]

``--device-venv`` is created (``python3 -m venv`` + ``pip install -e .``) when missing.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASELINE = "c3481e8"  # the last commit whose device runtime ran the torch bottleneck
HEAVY = ("torch", "torchvision", "timm", "compressai")
SPLIT = dict(at="layer1", bottleneck="entropy", mode="replace", channels=24)

IMPORT = r"""
import time
t0, c0 = time.perf_counter(), time.process_time()
import numpy, onnxruntime
import splitter
from splitter.deploy.runtime import load_bundle
from splitter.deploy.device import Device
print(time.perf_counter() - t0, time.process_time() - c0)
"""

MEASURE = r"""
import json, statistics, sys, time
import numpy as np
import splitter
from splitter.deploy import payload

bundle_dir, x_path, n, old = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "old"
x = np.load(x_path)
dev = splitter.load_bundle(bundle_dir).device(threads=1)
data = dev.encode(x)  # one 224x224 image: the peak below covers import, load and this encode
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the (torch-laden) parent
rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
head = lambda: dev.symbols(x)
sym = head()
if old:  # the torch bottleneck's compress, as the old Device.encode ran it
    import torch
    def code():
        with torch.no_grad():
            return payload.encode_symbols(dev.bottleneck, sym, dev._spatial)
else:
    code = lambda: dev.pack(dev.compress(sym))
assert code() == data
times = {"head": [], "coding": [], "head_cpu": [], "coding_cpu": []}
for _ in range(3):
    head(), code()
for _ in range(n):
    for k, fn in (("head", head), ("coding", code)):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        times[k].append(time.perf_counter() - t0)
        times[k + "_cpu"].append(time.process_time() - c0)
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "torchvision", "timm", "compressai"})
print(json.dumps({"rss_mb": rss, "bytes": len(data), "heavy": heavy,
                  **{k: statistics.median(v) for k, v in times.items()}}))
"""

EXPORT_OLD = r"""
import sys, torch, numpy as np
import splitter
torch.manual_seed(0)
s = splitter.split("resnet50", at="layer1", bottleneck="entropy", mode="replace", channels=24,
                   input_shape=(3, 224, 224))
splitter.export(s, sys.argv[1], threads=1)
"""


def site_size(venv_site: Path, exclude: tuple[str, ...] = ()) -> int:
    total = 0
    for root, _, files in os.walk(venv_site):
        rel = Path(root).relative_to(venv_site).parts
        if rel and rel[0].split("-")[0] in exclude:
            continue
        for f in files:
            p = Path(root) / f
            if not p.is_symlink():
                total += p.stat().st_size
    return total


def ensure_device_venv(path: Path) -> Path:
    py = path / "bin" / "python"
    if not py.exists():
        print(f"creating the device venv {path} (pip install -e {REPO}, no extras) ...", flush=True)
        subprocess.run(["python3", "-m", "venv", str(path)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "-e", str(REPO)], check=True)
    return py


def baseline_tree(rev: str, work: Path) -> Path:
    out = work / f"baseline-{rev}"
    if not out.exists():
        data = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True,
                              capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(data)) as t:
            t.extractall(out, filter="data")
    return out


def run(py: str, code: str, *args: str, pythonpath: Path | None = None) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    proc = subprocess.run([py, "-c", code, *args], cwd=tempfile.gettempdir(), env=env,
                          capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"subprocess failed:\n{proc.stderr[-3000:]}")
    lines = proc.stdout.strip().splitlines()
    return lines[-1] if lines else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device-venv", default="/tmp/splitter-device-venv")
    ap.add_argument("--baseline", default=BASELINE, help="git revision of the runtime to compare with")
    ap.add_argument("--n", type=int, default=30, help="timed encodes per runtime (median reported)")
    ap.add_argument("--import-runs", type=int, default=7,
                    help="fresh interpreters timed per runtime's import (median and range reported)")
    ap.add_argument("--work", default=None, help="where bundles go (default: a temporary directory)")
    args = ap.parse_args()

    import numpy as np
    import torch
    from device_encode import synthetic_image

    import splitter

    torch.set_num_threads(1)
    work = Path(args.work or tempfile.mkdtemp(prefix="device-runtime-"))
    work.mkdir(parents=True, exist_ok=True)
    dev_py = str(ensure_device_venv(Path(args.device_venv)))

    if (work / "bundle").exists():  # a rerun with the same --work measures the same bundles
        b = splitter.load_bundle(work / "bundle")
    else:
        torch.manual_seed(0)
        s = splitter.split("resnet50", input_shape=(3, 224, 224), **SPLIT)
        b = splitter.export(s, work / "bundle", threads=1)
    x = b.device(threads=1).preprocess(synthetic_image(224))[None]
    np.save(work / "x.npy", x)
    old_tree = baseline_tree(args.baseline, work)
    if not (work / "old").exists():
        run(sys.executable, EXPORT_OLD, str(work / "old"), pythonpath=old_tree)

    rows = {}
    for name, py, bundle, tree, tag in [
        (f"today's runtime ({args.baseline}, full venv)", sys.executable, work / "old", old_tree, "old"),
        ("device runtime (base install, device/ only)", dev_py, work / "bundle" / "device", None, "new"),
    ]:
        imports = [tuple(map(float, run(py, IMPORT, pythonpath=tree).split()))
                   for _ in range(args.import_runs)]
        r = json.loads(run(py, MEASURE, str(bundle), str(work / "x.npy"), str(args.n), tag,
                           pythonpath=tree))
        site = Path(run(py, "import sysconfig; print(sysconfig.get_paths()['purelib'])"))
        r.update(import_s=statistics.median(i[0] for i in imports),
                 import_cpu=statistics.median(i[1] for i in imports), site=site_size(site),
                 import_range=(min(i[0] for i in imports), max(i[0] for i in imports)),
                 site_no_tooling=site_size(site, ("pip", "setuptools", "pkg_resources",
                                                  "_distutils_hack", "distutils")),
                 bundle_mb=sum(f.stat().st_size for f in Path(bundle).iterdir()) / 2**20)
        rows[name] = r

    print(f"ResNet-50 Entropic Student head ({SPLIT}), 224x224, random weights, onnxruntime 1 "
          f"thread, median of {args.n}; this venv: {sysconfig.get_paths()['purelib']}")
    w = max(map(len, rows))
    print(f"{'':{w}}  {'import':>8} {'peak RSS':>9} {'installed':>10} {'bundle':>8} {'head':>8} "
          f"{'coding':>8} {'coding %':>8} {'payload':>8}  heavy modules")
    for name, r in rows.items():
        enc = r["head"] + r["coding"]
        print(f"{name:{w}}  {r['import_s']:7.2f}s {r['rss_mb']:7.0f}MB {r['site'] / 2**20:8.0f}MB "
              f"{r['bundle_mb']:6.1f}MB {r['head'] * 1e3:6.2f}ms {r['coding'] * 1e3:6.2f}ms "
              f"{100 * r['coding'] / enc:7.1f}% {r['bytes']:7,}B  {r['heavy'] or 'none'}")
    old, new = rows.values()
    print("CPU time (process_time: what load from other processes does not inflate): "
          + "; ".join(f"{name.split(' (')[0]}: import {r['import_cpu']:.2f}s, head "
                      f"{r['head_cpu'] * 1e3:.2f}ms, coding {r['coding_cpu'] * 1e3:.2f}ms "
                      f"({100 * r['coding_cpu'] / (r['head_cpu'] + r['coding_cpu']):.1f}%)"
                      for name, r in rows.items()))
    print(f"import wall time over {args.import_runs} fresh interpreters (median above): "
          + "; ".join(f"{name.split(' (')[0]}: {r['import_range'][0]:.2f}-{r['import_range'][1]:.2f}s"
                      for name, r in rows.items()))
    print(f"installed size without venv tooling (pip, setuptools): today "
          f"{old['site_no_tooling'] / 2**20:.0f} MB, device {new['site_no_tooling'] / 2**20:.0f} MB")
    print(f"ratios today/device: import {old['import_s'] / new['import_s']:.1f}x, peak RSS "
          f"{old['rss_mb'] / new['rss_mb']:.1f}x, installed {old['site'] / new['site']:.1f}x, "
          f"coding {old['coding'] / new['coding']:.2f}x, payload {old['bytes'] / new['bytes']:.3f}x")


if __name__ == "__main__":
    main()
