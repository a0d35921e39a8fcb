"""The one helper that scales test timeouts with the machine (tests/conftest.py ``slowness``)."""

from __future__ import annotations

import time

import torch
from conftest import CALIBRATION_CPU_S, _calibration_work, scaled, scaled_ms, slowness


def test_slowness_is_the_override_else_measured_and_bounded(monkeypatch):
    measure = slowness.__wrapped__  # uncached
    monkeypatch.setenv("CRAFTLAB_TEST_SLOW", "3")
    assert measure() == 3.0
    monkeypatch.setenv("CRAFTLAB_TEST_SLOW", "0.2")
    assert measure() == 1.0  # never shorter than the waits as written
    monkeypatch.delenv("CRAFTLAB_TEST_SLOW")
    threads = torch.get_num_threads()
    assert 1.0 <= measure() <= 10.0
    assert torch.get_num_threads() == threads  # the calibration's one thread is given back
    assert scaled(2.0) == 2.0 * slowness() and scaled_ms(1000) == int(1000 * slowness())


def test_the_calibration_constant_is_the_workloads_cpu_time():
    """CALIBRATION_CPU_S must follow the workload: CPU time (not wall) on one thread, within a machine's spread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cpu = []
        for _ in range(3):
            t0 = time.process_time()
            _calibration_work()
            cpu.append(time.process_time() - t0)
    finally:
        torch.set_num_threads(threads)
    assert CALIBRATION_CPU_S / 4 < sorted(cpu)[1] < CALIBRATION_CPU_S * 4
