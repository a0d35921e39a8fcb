"""What data-parallel fine-tuning equals: DDP on 2 gloo processes vs one process at the same global batch.

Run: ``python -m benchmarks.bench_ddp_equal`` (writes benchmarks/results/ddp_equal.json and ddp_equal.md).

vit-tiny (LayerNorm) and resnet-tiny (BatchNorm), AdamW and SGD, one epoch on a 300-image slice of digits at
global batch 32 (= 2 x 16 under ``torchrun --nproc_per_node 2``), BatchNorm per replica (the default) and with
``sync_bn=True``. Reported: the largest |difference| of any parameter from the one-process run, and the largest
relative difference of a BatchNorm running variance, next to the rounding floor: the same one-process run with 2
intra-op threads instead of 1 (another summation order, nothing else changed). One seed, one epoch: a small,
quick check (the 2-core machine is shared), not a study of how the gap grows with training.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CRAFTLAB_THREADS": "1"}
RUNS = [(model, opt, sync) for model in ("vit-tiny", "resnet-tiny") for opt in ("adamw", "sgd")
        for sync in ((False, True) if model == "resnet-tiny" else (False,))]

SCRIPT = textwrap.dedent("""
    import sys
    import torch
    import craftlab
    from craftlab.train.ddp import current_world

    out = sys.argv[1]
    x, y = craftlab.load_data("digits").train_set.tensors
    data = craftlab.from_tensors(x[:300], y[:300], name="digits300", batch_size=32)
    world = current_world()
    for model, opt, sync in RUNS:
        m = craftlab.create_model(model, num_classes=10, progress=False)
        res = craftlab.finetune(m, data, optimizer=opt, epochs=1, sync_bn=sync, progress=False)
        if world.is_main:
            torch.save(res.model.state_dict(), f"{out}/{model}-{opt}-{sync}.pt")
""")


def _small():
    import craftlab

    x, y = craftlab.load_data("digits").train_set.tensors
    return craftlab.from_tensors(x[:300], y[:300], name="digits300", batch_size=32)


def main() -> dict:
    import torch

    import craftlab

    torch.set_num_threads(1)
    out = Path(tempfile.mkdtemp(prefix="ddp-equal-"))
    (out / "script.py").write_text(f"RUNS = {RUNS!r}\n" + SCRIPT)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    str(out / "script.py"), str(out)], check=True, env=ENV, capture_output=True, text=True)
    data, rows, refs = _small(), [], {}

    def one_process(model: str, opt: str, threads: int) -> dict:
        torch.set_num_threads(threads)
        try:
            return craftlab.finetune(craftlab.create_model(model, num_classes=10, progress=False), data,
                                     optimizer=opt, epochs=1, progress=False).model.state_dict()
        finally:
            torch.set_num_threads(1)

    def diff(a: dict, b: dict) -> tuple[float, float | None]:
        stats = ("running_mean", "running_var", "num_batches_tracked")
        params = max((a[k].float() - b[k].float()).abs().max().item() for k in b if not k.endswith(stats))
        rv = [((a[k] - b[k]).abs() / b[k].abs()).max().item() for k in b if k.endswith("running_var")]
        return params, (max(rv) if rv else None)

    for model, opt, sync in RUNS:
        if (model, opt) not in refs:
            ref = one_process(model, opt, 1)
            refs[model, opt] = ref, diff(one_process(model, opt, 2), ref)  # the rounding floor
        ref, floor = refs[model, opt]
        params, rv = diff(torch.load(out / f"{model}-{opt}-{sync}.pt", weights_only=True), ref)
        rows.append({"model": model, "norm": "BatchNorm" if rv is not None else "LayerNorm", "optimizer": opt,
                     "sync_bn": sync, "max_abs_param_diff": params, "max_rel_running_var_diff": rv,
                     "floor_param_diff": floor[0], "floor_running_var_diff": floor[1]})
    res = {"rows": rows, "seconds": round(time.perf_counter() - t0, 1), "torch": torch.__version__,
           "python": platform.python_version(), "load_avg": os.getloadavg()[0], "date": time.strftime("%Y-%m-%d")}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ddp_equal.json").write_text(json.dumps(res, indent=1))
    lines = [f"`python -m benchmarks.bench_ddp_equal` ({res['seconds']} s, torch {res['torch']}, 1 thread per "
             f"process, load average {res['load_avg']:.1f}, {res['date']}); 2 gloo ranks x 16 vs 1 process x 32, "
             "one epoch on 300 digits images, one seed.", "",
             "| model | normalisation | optimizer | sync_bn | max abs parameter diff | max rel running-var diff "
             "| rounding floor: 1 process, 1 vs 2 threads (params / running var) |",
             "|---|---|---|---|---|---|---|"]

    def num(v: float | None) -> str:
        return "—" if v is None else f"{v:.2e}"

    for r in rows:
        lines.append(f"| {r['model']} | {r['norm']} | {r['optimizer']} | {'yes' if r['sync_bn'] else 'no'} | "
                     f"{num(r['max_abs_param_diff'])} | {num(r['max_rel_running_var_diff'])} | "
                     f"{num(r['floor_param_diff'])} / {num(r['floor_running_var_diff'])} |")
    (RESULTS / "ddp_equal.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return res


if __name__ == "__main__":
    main()
