"""Each paper's study recipe (layer 3, above the algorithms and runs it combines): the grid it runs, the tables it
returns and its claim checks through :mod:`craftlab.analysis.stats`.

* :mod:`.snt` — SNT: pretraining arms (Adam, SAM, the stand-in transforms) × fine-tuning × compression, sharpness
  and the paired claim checks (``benchmarks/bench_snt.py`` and notebook 04 run it);
* :mod:`.compose` + :mod:`.compose_costs` — the composition study: pipelines × seeds from cached runs (its factorial
  analysis is :mod:`craftlab.analysis.factorial`) and each step's cost.

The other papers' recipes live beside their algorithms for now: CrAFT in :mod:`craftlab.analysis.arms` and
:mod:`craftlab.analysis.sharpness_study`, the supernet in :mod:`craftlab.supernet.study`, LAST / MIET in
:mod:`craftlab.adapt.compare` and :mod:`craftlab.adapt.curves`.
"""
