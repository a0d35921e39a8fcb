"""benchmarks/gpu_check.py on a machine without CUDA: a clear skip and exit status 0 (the GPU paths
themselves only run where a GPU is)."""

import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def test_without_cuda_it_says_skipped_and_exits_0(monkeypatch, capsys):
    sys.path.insert(0, str(ROOT))
    from benchmarks import gpu_check

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 0
    assert capsys.readouterr().out.strip() == "no CUDA device: skipped"


def test_the_script_runs_as_a_command():
    if torch.cuda.is_available():  # the real check takes minutes: only the no-CUDA path is tested here
        return
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "no CUDA device: skipped" in done.stdout
