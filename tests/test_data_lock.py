"""Concurrent ``load_data`` of a torchvision dataset: one process downloads, the others wait (a file lock beside the
data), with real processes. torchvision's network download is replaced by a stand-in dataset class (in the child
processes only) whose "download" writes the archive in slow pieces and appends to a log: two downloads at once
would interleave their pieces (a corrupt archive) and log twice."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PIECES = 6

CHILD = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path

    import numpy as np
    import torchvision.datasets as D
    from PIL import Image

    PIECES = int(sys.argv[2])

    class SlowCIFAR10:  # torchvision's interface: root, train, transform, download
        def __init__(self, root, train=True, transform=None, download=False):
            archive = Path(root) / "fake-cifar.bin"
            if download and not archive.exists():
                with open(Path(root) / "downloads.log", "a") as log:
                    log.write(f"{os.getpid()}\\n")
                part = Path(root) / "fake-cifar.bin.part"
                for i in range(PIECES):  # a download: pieces appended over time, then renamed into place
                    with open(part, "a") as f:
                        f.write(f"{i}\\n")
                    time.sleep(0.15)
                os.replace(part, archive)
            if not archive.exists():
                raise RuntimeError("Dataset not found. You can use download=True to download it")
            lines = archive.read_text().split()
            if lines != [str(i) for i in range(PIECES)]:
                raise RuntimeError(f"corrupt archive: {lines}")
            self.transform = transform
            self.targets = [i % 2 for i in range(20)]
            self.classes = ["a", "b"]

        def __len__(self):
            return len(self.targets)

        def __getitem__(self, i):
            img = Image.fromarray(np.full((8, 8, 3), 10 * i, dtype=np.uint8))
            return (self.transform(img) if self.transform else img), self.targets[i]

    D.CIFAR10 = SlowCIFAR10  # the stand-in for torchvision's network download
    import craftlab

    go = float(sys.argv[3])
    while time.time() < go:  # both processes start loading at the same moment
        time.sleep(0.005)
    d = craftlab.load_data("cifar10", root=sys.argv[1], image_size=8, calib_size=4)
    x, y = next(iter(d.loader("test")))
    print("ok", d.num_classes, tuple(x.shape))
""")


def _run_two(root: Path, tmp_path: Path) -> list[subprocess.CompletedProcess]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "CRAFTLAB_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1", "CRAFTLAB_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    go = time.time() + 25  # after both children have imported torch, even on a loaded machine
    procs = [subprocess.Popen([sys.executable, str(script), str(root), str(PIECES), str(go)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    done = []
    for p in procs:
        out, err = p.communicate(timeout=240)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return done


def test_two_processes_loading_a_missing_dataset_download_it_once(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    done = _run_two(root, tmp_path)
    for p in done:
        assert p.returncode == 0 and p.stdout.startswith("ok 2 (20, 3, 8, 8)"), p.stderr[-2000:]
    log = (root / "downloads.log").read_text().split()
    assert len(log) == 1, f"the dataset was downloaded {len(log)} times (by pids {log})"
    assert (root / "fake-cifar.bin").read_text().split() == [str(i) for i in range(PIECES)]


def test_the_lock_is_released_and_refuses_clearly_after_its_timeout(tmp_path):
    from craftlab.cache import LockTimeout, file_lock

    path = tmp_path / "x.lock"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from craftlab.cache import file_lock
        with file_lock({str(path)!r}):
            print("held", flush=True)
            time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        with pytest.raises(LockTimeout, match=rf"x\.lock.*held by pid {holder.pid} on"):
            with file_lock(path, timeout=0.5):
                pass
        assert time.monotonic() - t0 < 10
    finally:
        holder.kill()  # a process that dies releases its lock
        holder.wait()
    with file_lock(path, timeout=10):
        pass
