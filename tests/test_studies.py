"""craftlab.studies: each paper's study recipe, its claim checks through craftlab.analysis.stats."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest


def _craft_table(shift: float, seeds=(0, 1, 2, 3, 4)) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for arch in ("vit-tiny", "resnet-tiny"):
        for seed in seeds:
            for setting in ("FP32", "magnitude 50%", "W4A4"):
                base = 0.8 + 0.01 * rng.standard_normal()
                for arm in ("AdamW", "SAM 0.05"):
                    gain = 0.0 if arm == "AdamW" or setting == "FP32" else shift + 0.002 * (seed - 2)
                    rows.append({"arch": arch, "seed": seed, "setting": setting, "arm": arm, "accuracy": base + gain})
    return pd.DataFrame(rows)


def test_craft_bench_claims_are_paired_by_seed_over_the_compressed_settings():
    from craftlab.studies.craft import bench_claims

    df = _craft_table(0.05)
    table, verdicts = bench_claims(df, "AdamW", ["AdamW", "SAM 0.05"])
    assert set(verdicts) == {("vit-tiny", "SAM 0.05"), ("resnet-tiny", "SAM 0.05")}
    assert set(table["setting"]) == {"magnitude 50%", "W4A4"}  # FP32 is not a compressed setting
    # the mean paired difference by hand: SAM − AdamW at the same (arch, seed, setting)
    wide = df.pivot_table(index=["arch", "seed", "setting"], columns="arm", values="accuracy")
    by_hand = (wide["SAM 0.05"] - wide["AdamW"]).groupby(level=["arch", "setting"]).mean()
    for _, r in table.iterrows():
        assert r["mean_diff"] == pytest.approx(by_hand[(r["arch"], r["setting"])])
    assert all(v.status == "supports" for v in verdicts.values())
    _, none = bench_claims(_craft_table(0.0), "AdamW", ["SAM 0.05"])
    assert all(v.status != "supports" for v in none.values())
