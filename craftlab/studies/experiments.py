"""Experiments the tutorial notebooks run (one import for them): arms × seeds of cached fine-tuning runs,
their compression sweeps, the claim check and sharpness tables.

The notebooks in ``notebooks/`` call these so that no cell re-implements training, compression or
probing. Every fine-tuning run goes through :func:`craftlab.get_run`, so a (model, data, optimizer,
ρ, ASAM, epochs, seed) combination is trained once and shared by every notebook, the app and the CLI.

Typical use::

    arms = {"AdamW": {}, "SAM ρ=0.05": {"sam_rho": 0.05}}
    runs = run_arms(arms, seeds=(0, 1, 2, 3, 4))           # one row per (arm, seed), checkpoints cached
    data = load_data_for(runs)
    df = sweep_runs(runs, data, settings=craftlab.settings_grid())   # one row per (run, setting)
    table = paired_gains(df, "AdamW", "SAM ρ=0.05")                 # per setting: paired test, Holm
    print(claim_report(table))                                      # words generated from the numbers

The claim check is :mod:`craftlab.analysis.stats`: a paired t test per compression setting (seeds are the
pairs), Holm correction across the settings of the claim, effect sizes with confidence intervals, and a
power statement saying which effects the design could detect. With no true effect it says "supports" or
"partly supports" in at most α of the experiments.
"""

from __future__ import annotations

from ..analysis.claims import CLAIM, claim_report, paired_gains, verdict
from ..analysis.stats import spearman
from ..settings import bits_label, parse_setting
from .craft import (
    DEFAULT_BITS,
    arm_label,
    compress_kwargs,
    compress_setting,
    load_data_for,
    load_run,
    run_arms,
    setting_label,
    sweep_runs,
)
from .craft_sharpness import (
    finite,
    probe_batches,
    rescale_attention,
    scale_invariance_table,
    second_order_table,
    sharpness_table,
    spearman_table,
    spearman_test,
)

__all__ = [
    "CLAIM", "DEFAULT_BITS", "arm_label", "bits_label", "claim_report", "compress_kwargs", "compress_setting",
    "finite", "load_data_for", "load_run", "paired_gains", "parse_setting", "probe_batches", "rescale_attention",
    "run_arms", "scale_invariance_table", "second_order_table", "setting_label", "sharpness_table", "spearman",
    "spearman_table", "spearman_test", "sweep_runs", "verdict",
]
