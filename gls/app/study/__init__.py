"""Studies: grids of ordinary ``gls.train`` runs, evaluated alike and summarised (``python -m gls.study``).

One study so far, ``paradox`` (:mod:`gls.app.study.paradox`): optimizer {grad, rgs, pgpe} x relaxation
{ibp, hbox, crown-ibp, deeppoly}, the "paradox of certified training" and whether Gaussian Loss
Smoothing reverses it. :mod:`gls.app.study.runner` runs the jobs (resumable, in parallel processes),
:mod:`gls.app.study.evaluate` evaluates one final network, :mod:`gls.app.study.report` writes the results.
"""
