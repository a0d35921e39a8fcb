"""Compression: pruning (:mod:`.prune`), fake-quant PTQ (:mod:`.quant`), the prune-then-quantize pipeline
(:mod:`.pipeline`) and sweeps (:mod:`.sweep`).

(Named ``compression``, not ``compress``, because ``craftlab.compress`` is the pipeline function.)"""
