"""Compile: a model in, an exact split (optionally with a bottleneck) and its costs out.

::

    model / timm name / pkg.mod:factory ─► trace.py (FX graph + meta) ─► split.py (head | tail)
                                                  bottleneck.py (insert / replace) ◄─┘
                                                  costs.py (params, bits, MACs per side)

Imports only ``passes``, ``bottlenecks``, ``splitter.errors`` and the wire format
(``splitter.deploy.payload``, a leaf).
"""
