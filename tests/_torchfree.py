"""A script for a fresh interpreter in which torch & co (and pydantic, which the device's
encode path does without: targets/device_manifest.py) cannot be imported: it loads a device
bundle, encodes ``x`` (a .npy) sample by sample and as one batch, and writes the payloads' hex
to a JSON file (argv: bundle, x.npy, out.json). Shared by the device-runtime tests."""

TORCH_FREE = r"""
import importlib.abc, json, sys
BLOCKED = ("torch", "torchvision", "timm", "compressai", "pydantic")  # pydantic: import time

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: the device runtime must not import it")

sys.meta_path.insert(0, Block())
import numpy as np
import splitter

bundle, x_path, out_path = sys.argv[1:]
device = splitter.load_bundle(bundle).device(threads=1)
x = np.load(x_path)
data = [device.encode(x[i:i + 1]) for i in range(len(x))] + [device.encode(x)]
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not loaded, loaded
open(out_path, "wb").write(json.dumps([d.hex() for d in data]).encode())
print("torch-free ok")
"""


def encode_without_torch(device_dir, x, tmp_path) -> list[bytes]:
    """Payloads of ``x`` sample by sample, then of the whole batch, from the device bundle
    at ``device_dir`` in a fresh interpreter where torch & co cannot be imported."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    import numpy as np

    repo = Path(__file__).resolve().parent.parent
    np.save(tmp_path / "x.npy", x)
    env = dict(os.environ, PYTHONPATH=str(repo), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", TORCH_FREE, str(device_dir), str(tmp_path / "x.npy"),
                           str(tmp_path / "out.json")], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [bytes.fromhex(h) for h in json.loads((tmp_path / "out.json").read_text())]
