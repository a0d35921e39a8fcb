"""Scale-out: a sweep on 1 vs 2 local Ray workers, and the per-step cost of DDP on 2 CPU processes.

Run: ``python -m benchmarks.bench_scale`` (writes benchmarks/results/scale.json and scale.md, prints the tables).

* Sweep: 2 vit-tiny checkpoints (AdamW, SAM; 2 epochs on digits) x 9 settings = 18 cells on the digits test
  split, with ``engine="process"`` and ``engine="ray"`` on a local cluster of 1 and of 2 CPUs (one worker per
  CPU, one thread each). "cold" includes starting the workers (importing torch in each); "warm" is the same
  sweep again with a fresh cell store (nothing cached), workers already up. Ray's own start is not counted.
* DDP: ``finetune`` of vit-tiny on digits (2 epochs, AdamW and SAM) in one process at batch 64 and at batch 32,
  and under ``torchrun --nproc_per_node 2`` (gloo) at global batch 64 = 2 x 32. The DDP overhead per step is
  the 2-process step minus the 1-process step at the per-rank batch (32): gradient all-reduce + synchronisation.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
REPEATS = 3
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CRAFTLAB_THREADS": "1"}

DDP_SCRIPT = textwrap.dedent("""
    import json, sys
    import craftlab
    from craftlab.train.ddp import current_world
    out, batch = sys.argv[1], int(sys.argv[2])
    world = current_world()
    data = craftlab.load_data("digits")
    model = craftlab.create_model("vit-tiny", num_classes=10, progress=False)
    res = {}
    for arm, rho in (("adamw", 0.0), ("sam", 0.05)):
        r = craftlab.finetune(model, data, epochs=3, sam_rho=rho, batch_size=batch, progress=False)
        steps = -(-len(data.train_set) // batch)
        res[arm] = min(h["time_s"] for h in r.history[1:]) / steps   # best epoch after the first (warm-up)
    if world is None or world.is_main:
        json.dump(res, open(out, "w"))
""")


def _sweep_times(checkpoints: list[str], data, settings, cpus: int, ref) -> dict[str, float]:
    import pandas as pd
    import ray

    import craftlab

    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level="warning")
    try:
        walls = []
        for rep in range(1 + REPEATS):
            os.environ["CRAFTLAB_HOME"] = tempfile.mkdtemp(prefix=f"bench-scale-{cpus}-{rep}-")
            t0 = time.perf_counter()
            df = craftlab.sweep(checkpoints, data, settings=settings, progress=False, engine="ray")
            walls.append(time.perf_counter() - t0)
            assert df.attrs["cells"]["computed"] == len(df)
            pd.testing.assert_frame_equal(df, ref, check_exact=True)
        return {"cold": walls[0], "warm": statistics.median(walls[1:]), "warm_all": walls[1:]}
    finally:
        ray.shutdown()


def bench_sweep() -> dict:
    import torch

    import craftlab

    torch.set_num_threads(1)
    home = tempfile.mkdtemp(prefix="bench-scale-")
    os.environ["CRAFTLAB_HOME"] = home
    data = craftlab.load_data("digits")
    vit = craftlab.create_model("vit-tiny", num_classes=10, progress=False)
    ckpts = [str(craftlab.finetune(vit, data, epochs=2, sam_rho=rho, progress=False).save(Path(home) / name))
             for name, rho in (("adamw", 0.0), ("sam", 0.05))]
    settings = craftlab.settings_grid(methods=["magnitude", "wanda"], sparsities=[0.5, 0.7], patterns=[],
                                      bits=[(8, 8), (6, 6), (4, 8), (4, 4)])
    walls = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        ref = craftlab.sweep(ckpts, data, settings=settings, progress=False)
        walls.append(time.perf_counter() - t0)
    out = {"cells": len(ref), "process_s": statistics.median(walls), "process_all": walls}
    for cpus in (1, 2):
        out[f"ray{cpus}"] = _sweep_times(ckpts, data, settings, cpus, ref)
    return out


def _ddp_step(nproc: int, batch: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        script, out = Path(tmp) / "ddp_bench.py", Path(tmp) / "out.json"
        script.write_text(DDP_SCRIPT)
        cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
               if nproc > 1 else [sys.executable])
        subprocess.run([*cmd, str(script), str(out), str(batch)], env=ENV, check=True, capture_output=True)
        return json.loads(out.read_text())


def bench_ddp() -> dict:
    return {"single_b64": _ddp_step(1, 64), "single_b32": _ddp_step(1, 32), "ddp2_b64": _ddp_step(2, 64)}


def _markdown(sweep: dict, ddp: dict) -> str:
    r1, r2 = sweep["ray1"], sweep["ray2"]
    lines = [
        f"### Sweep: {sweep['cells']} cells (2 vit-tiny checkpoints x 9 settings, digits test split)", "",
        "| engine | wall, cold (s) | wall, warm: best / median of 3 (s) | speed-up vs 1 worker: best / median |",
        "|---|---|---|---|",
        f"| in-process (1 thread) | | {min(sweep['process_all']):.1f} / {sweep['process_s']:.1f} | |",
        f"| Ray, 1 worker | {r1['cold']:.1f} | {min(r1['warm_all']):.1f} / {r1['warm']:.1f} | 1.00x / 1.00x |",
        f"| Ray, 2 workers | {r2['cold']:.1f} | {min(r2['warm_all']):.1f} / {r2['warm']:.1f} | "
        f"{min(r1['warm_all']) / min(r2['warm_all']):.2f}x / {r1['warm'] / r2['warm']:.2f}x |", "",
        "cold: workers start inside the sweep (torch imported in each); warm: the same sweep again with a fresh "
        f"cell store (nothing cached), median of {REPEATS}. Ray's own start (~10 s) is not counted. Every Ray table "
        "equals the in-process one exactly (checked in the benchmark).", "",
        "### DDP: vit-tiny fine-tuning on digits, ms per optimizer step (best epoch of 2 after a warm-up one)", "",
        "| arm | 1 process, batch 64 | 1 process, batch 32 | DDP 2 x 32 (gloo) | DDP overhead / step | "
        "speed-up vs 1 x 64 |", "|---|---|---|---|---|---|",
    ]
    for arm in ("adamw", "sam"):
        s64, s32, d = (ddp[k][arm] * 1e3 for k in ("single_b64", "single_b32", "ddp2_b64"))
        lines.append(f"| {'AdamW' if arm == 'adamw' else 'AdamW + SAM (local first gradient)'} | {s64:.1f} | "
                     f"{s32:.1f} | {d:.1f} | {d - s32:+.1f} ms ({(d - s32) / s32:+.0%}) | {s64 / d:.2f}x |")
    lines += ["", "DDP overhead = the 2-process step minus the 1-process step at the per-rank batch (all-reduce of "
              "139 k gradients + waiting for the slower rank). On 2 cores shared with other jobs both ranks compete "
              "with them; on a GPU node the all-reduce runs on NCCL and overlaps the backward pass."]
    return "\n".join(lines)


def main() -> str:
    load0 = os.getloadavg()[0]
    sweep = bench_sweep()
    ddp = bench_ddp()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps({"sweep": sweep, "ddp": ddp}, indent=1))
    md = _markdown(sweep, ddp)
    load = os.getloadavg()
    header = ("# Scale-out — `python -m benchmarks.bench_scale`\n\nMachine: 2 cores shared with other jobs "
              f"(load average {load0:.1f} before, {load[0]:.1f} after: with a load above 2 the second worker "
              f"and the second DDP rank wait for a core), OMP_NUM_THREADS=1; {time.strftime('%Y-%m-%d')}.\n\n")
    (RESULTS / "scale.md").write_text(header + md + "\n")
    print(f"load average before/after: {load0:.1f}/{load[0]:.1f}\n" + md)
    return md


if __name__ == "__main__":
    main()
