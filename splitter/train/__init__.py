"""Train: distil a split's bottleneck from its teacher.

::

    data.py (datasets) ─► fit.py (stage 1: features + rate, stage 2: KD) ─► checkpoint.py
    config.py (YAML ─► FitConfig ─► fit)     distributed.py (torchrun / DDP context)

Imports ``splitter.compile`` and below; never ``deploy``, ``explore`` or the CLI.
"""
