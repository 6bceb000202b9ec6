"""Quickstart: cut a CNN after its first stage, insert an entropy bottleneck, distil it from
the original model, and send real bytes from a device half to a server half.

Offline and about a minute on a laptop CPU: the teacher is the demo's small CNN trained on
scikit-learn's handwritten digits (trained once, then cached). Run from the repository root:

    python examples/quickstart.py
"""

import torch

import splitter
from splitter.cli.demo_run import INPUT_SIZE, digits_teacher
from splitter.train.data import digits

torch.set_num_threads(1)
teacher, _ = digits_teacher()  # timm test_resnet at 3x16x16, ~99 % on the test digits
train, test = digits("train", INPUT_SIZE), digits("test", INPUT_SIZE)

# Where can it be cut? The stage outputs, with the tensor that would cross (per sample).
g = splitter.trace(teacher, INPUT_SIZE)
for name in g.stage_names():
    cp = g.cut(name)
    print(f"{name:8s} {'x'.join(map(str, cp.shape[1:]))}  {cp.nbytes:,} bytes as fp32")

# Insert a learned bottleneck right after layer1 and distil it (stage 1: the teacher's
# features + rate; stage 2: knowledge distillation with the encoder frozen).
s = splitter.split(teacher, at="layer1", bottleneck="entropy", channels=8, input_shape=INPUT_SIZE)
splitter.fit(s, train, teacher=teacher, val_data=test, cache_teacher=True, stages=[
    {"kind": "features", "epochs": 12, "lr": 3e-3, "beta": 0.01, "match_output": 10, "tau": 1},
    {"kind": "kd", "epochs": 2, "lr": 1e-4, "tau": 1},
])

x, label = test[0]
payload = s.encode(x)  # device side: head + quantize + entropy code -> bytes
print(f"{len(payload)} bytes on the wire; server predicts {int(s.decode(payload).argmax(-1))} "
      f"(label {label})")
print(f"device encoder: {s.costs.encoder_params:,} parameters, {s.costs.encoder_macs:,} MACs")

# Deploy: ONNX head for the device, tail for the server, coder tables, manifest.
inputs = torch.stack([test[i][0] for i in range(32)])
splitter.export(s, "runs/quickstart_bundle", inputs=inputs, overwrite=True)
bundle = splitter.load_bundle("runs/quickstart_bundle")
data = bundle.device().encode(x.unsqueeze(0))
print("bundle round trip:", int(bundle.server().decode(data).argmax(-1)[0]), f"({len(data)} bytes)")
