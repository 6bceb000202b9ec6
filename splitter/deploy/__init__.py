"""Deploy: a split becomes files, and the files run.

::

    export.py  Split ─► bundle dir (targets/: head.onnx, tail, tables, manifest)
    runtime.py bundle dir ─► Device.encode(x) ─► payload.py bytes ─► Server.decode ─► y
    serve.py   HTTP in front of a Server       preprocess.py  image file ─► input array

``payload`` and ``preprocess`` are leaves (no torch). ``export`` imports ``compile``.
"""
