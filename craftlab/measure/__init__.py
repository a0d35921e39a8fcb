"""Measures, one of each (layer 2; they import torch and :mod:`craftlab.threads` only): training memory
(:mod:`.memory`), BitOPs and MACs (:mod:`.bitops`), model size (:mod:`.size`) and step timing (:mod:`.timing`).
Every paper reads its published number from these, so one quantity has one definition.

Example::

    from craftlab.measure.memory import measure_step
    from craftlab.measure.bitops import bitops
    bitops(macs=1000, w_bits=4, a_bits=8)   # 32000
"""
