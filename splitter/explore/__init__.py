"""Explore: where to split, measured and modelled.

::

    sweep.py    every cut x every bottleneck ─► rows of costs, bytes, latency ─► plot.py
    evaluate.py accuracy and real payload bytes of a split or bundle vs JPEG/WebP inputs
    latency.py  device time + bytes / link + server time

Imports ``compile``, ``train`` and ``deploy``; never the CLI.
"""
