"""Deploy: a split becomes files, and the files run.

::

    export.py   Split ─► out/device/ (head.onnx, coder tables, manifest)
                         out/server/ (tail.onnx, tail.pt2, decoder state, manifest)
    runtime.py  out/ or one half ─► verified Bundle
    device.py   Device.encode(x) ─► coder.py strings ─► payload.py bytes     (no torch)
    server.py   bytes ─► Server.decode ─► y                                   (torch)
    serve.py    HTTP in front of a Server       preprocess.py  image file ─► input array

``payload``, ``coder`` and ``preprocess`` are leaves (no torch) that anyone may import;
``runtime`` and ``device`` import no torch either: the base install runs them.
``export`` imports ``compile``.
"""
