"""A script for a fresh interpreter in which torch & co cannot be imported: it loads a device
bundle, encodes ``x`` (a .npy) sample by sample and as one batch, and writes the payloads' hex
to a JSON file (argv: bundle, x.npy, out.json). Shared by the device-runtime tests."""

TORCH_FREE = r"""
import importlib.abc, json, sys
BLOCKED = ("torch", "torchvision", "timm", "compressai")

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
