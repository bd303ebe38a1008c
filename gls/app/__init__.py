"""The experiment application built on the gls library: training runs, their config, data, networks,
checkpoints, evaluation, plots and studies.

The library (every other module of gls) bounds and trains populations of networks and imports nothing
from here; tests/test_layout.py checks it. The commands ``python -m gls.train``, ``python -m gls.certify``
and ``python -m gls.study`` are one-line entry modules that call this package's ``main`` functions.
"""
