"""Explore: where to split, measured and modelled.

::

    sweep.py    every cut x every bottleneck ─► rows of costs, bytes, latency ─► plot.py
    evaluate.py accuracy and real payload bytes of a split or bundle vs JPEG/WebP inputs
    latency.py  device time + bytes / link + server time
    trials.py   one (point, bottleneck, β): fit, measure on held-out data, store; jobs / Ray Tune
    measure.py  a sweep with data=: every row a trial, + input codecs + BD-rates
    codecs.py   JPEG, WebP, AVIF, HEIF, JPEG XL baselines with real file sizes
    bd.py       BD-rate / BD-accuracy (bjontegaard) vs an anchor curve
    ratecontrol.py  β bisection to a target payload size
    plan.py     the fastest (or smallest) measured split within an accuracy-drop bound

Imports ``compile``, ``train`` and ``deploy``; never the CLI.
"""
