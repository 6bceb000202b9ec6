"""Emitters that turn a finished :class:`~splitter.compile.split.Split` into deployable files.

- :mod:`targets.onnx_head`: the device head (image -> symbols) as ONNX, weights inside;
- :mod:`targets.tail`: the server tail (symbols -> output) as ``tail.pt2`` and ``tail.onnx``;
- :mod:`targets.tables`: the bottleneck's state (entropy tables, coder weights) in safetensors;
- :mod:`targets.manifest`: the versioned pydantic schema of ``manifest.json``;
- :mod:`targets.bundle`: writing all of it into a directory, hashed and atomically.

``splitter.export`` drives these and checks the result; ``splitter.load_bundle`` reads it.
"""
