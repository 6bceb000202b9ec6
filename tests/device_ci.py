"""CI's proof that the device runtime needs no torch (``.ci/run`` calls both steps).

::

    full venv:    python tests/device_ci.py make DIR    split + export two bundles, write test
                  images, and the bytes the full runtime (and the torch coder) encode them to
    device venv:  python tests/device_ci.py check DIR   (``pip install -e .``, no extras)
                  encode the same images from each bundle's device/ half; every payload must
                  equal the expected bytes, and torch & co must be neither installed nor imported

The bundles: an Entropic Student at ``layer1`` of timm's ``test_resnet`` (64x64 input, a
6,144-symbol latent: the long-stream coder), a ``crbq`` split (raw 8-bit bytes) and a
``hyperprior`` at ``layer1`` (its integer h_a/h_s in numpy, two short streams). Random
weights; what is checked is bytes, not accuracy.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HEAVY = ("torch", "torchvision", "timm", "compressai")
BUNDLES = {
    "student": dict(model="test_resnet", at="layer1", bottleneck="entropy", mode="replace",
                    channels=24, input_shape=(3, 64, 64)),
    "crbq": dict(model="test_resnet", at="layer2", bottleneck="crbq", channels=4,
                 input_shape=(3, 64, 64)),
    "hyperprior": dict(model="test_resnet", at="layer1", bottleneck="hyperprior", channels=8,
                       input_shape=(3, 64, 64)),
}


def _images(out: Path, n: int = 3) -> list[Path]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        h, w = 72 + 8 * i, 96 - 8 * i  # other sizes than the input: preprocessing runs too
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        arr = np.stack([120 + 100 * xx, 80 + 120 * yy, 160 - 90 * xx * yy], -1)
        arr = (arr + rng.normal(0, 8, arr.shape)).clip(0, 255).astype("uint8")
        paths.append(out / f"image{i}.png")
        Image.fromarray(arr).save(paths[-1])
    return paths


def make(out: Path) -> None:
    import torch

    import splitter
    from splitter.deploy import payload

    out.mkdir(parents=True, exist_ok=True)
    images = _images(out)
    expected: dict[str, dict[str, str]] = {}
    for name, kw in BUNDLES.items():
        kw = dict(kw)
        torch.manual_seed(0)
        s = splitter.split(kw.pop("model"), **kw)
        b = splitter.export(s, out / name, exporter="torchscript", threads=1, overwrite=True)
        device = b.device(threads=1)
        spatial = tuple(b.manifest.symbols.spatial)
        expected[name] = {}
        for img in images:
            data = device.encode_images([img])
            # the torch bottleneck writes the same bytes from the same symbols
            sym = torch.from_numpy(device.symbols(device.preprocess(img)))
            with torch.no_grad():
                ref = payload.pack(s.bottleneck.kind, spatial, s.bottleneck.compress(sym),
                                   expected=spatial)
            if data != ref:
                sys.exit(f"device_ci make: {name}/{img.name}: the device coder's bytes differ "
                         f"from the torch bottleneck's")
            expected[name][img.name] = data.hex()
    (out / "expected.json").write_text(json.dumps(expected, indent=1))
    print(f"device_ci make: {len(BUNDLES)} bundles, {len(images)} images -> {out}")


def check(out: Path) -> None:
    import importlib.util

    present = [m for m in HEAVY if importlib.util.find_spec(m) is not None]
    if present:
        sys.exit(f"device_ci check: {present} are installed in this environment; run it in a "
                 f"venv with only `pip install -e .`")
    import splitter

    expected = json.loads((out / "expected.json").read_text())
    n = 0
    for name, want in expected.items():
        device = splitter.load_bundle(out / name / "device").device(threads=1)
        for img, hexdata in want.items():
            got = device.encode_images([out / img])
            if got.hex() != hexdata:
                sys.exit(f"device_ci check: {name}/{img}: {len(got)} bytes differ from the full "
                         f"runtime's {len(hexdata) // 2}")
            n += 1
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
    if loaded:
        sys.exit(f"device_ci check: the device runtime imported {loaded}")
    print(f"device_ci check: {n} payloads byte-identical to the full runtime's; no torch, "
          f"torchvision, timm or compressai imported or installed")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("make", "check"):
        sys.exit("usage: python tests/device_ci.py make|check DIR")
    (make if sys.argv[1] == "make" else check)(Path(sys.argv[2]))
