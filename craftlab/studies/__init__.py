"""Each paper's study recipe (layer 3, above the algorithms and runs it combines): the grid it runs, the tables it
returns and its claim checks through :mod:`craftlab.analysis.stats`.

* :mod:`.craft` + :mod:`.craft_sharpness` — CrAFT: arms × seeds of cached fine-tuning runs, their compression
  sweeps, the benchmark's grid and paired claim checks (``benchmarks/bench_craft.py``), and the sharpness tables
  (notebooks 01–02); :mod:`.experiments` is the one import the notebooks use (``craftlab.experiments``);
* :mod:`.qwt` — QwT / QwT-v2: compensation on PTQ and pruning, paired gains, the CrAFT × compensation
  interaction and notebook 03's three claim tables (``benchmarks/bench_qwt.py`` and notebook 03 run it);
* :mod:`.snt` — SNT: pretraining arms (Adam, SAM, the stand-in transforms) × fine-tuning × compression, sharpness
  and the paired claim checks (``benchmarks/bench_snt.py`` and notebook 04 run it);
* :mod:`.supernet` — the mixed-precision supernet: which supernets, budgets, PTQ baselines, the memory stand-in and
  the "without degradation" non-inferiority check (notebook 05, ``benchmarks/bench_supernet.py``);
* :mod:`.adapt` — LAST / MIET: the adaptation methods' arms side by side (memory, time, bytes, accuracy), the K-way
  speed-up and the accuracy curves at tuned learning rates (notebook 06, ``benchmarks/bench_adapt*.py``);
* :mod:`.compose` + :mod:`.compose_costs` — the composition study: pipelines × seeds from cached runs (its factorial
  analysis is :mod:`craftlab.analysis.factorial`) and each step's cost.

Example::

    from craftlab.studies import qwt
    table, verdicts = qwt.paired_gains(pd.read_csv("benchmarks/results/qwt.csv"))
"""
