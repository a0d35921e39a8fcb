"""Sweeps, here or on a Ray cluster, and scale-out on existing engines (the data-parallel hook of fine-tuning is
:mod:`craftlab.train.ddp`).

Nothing here is a scheduler or a cluster of its own: Ray schedules the sweep's tasks and Tune's trials,
``torchrun`` (or ``accelerate launch``) starts the data-parallel processes and ``torch.distributed`` moves the
gradients. The modules (each imports Ray / ``torch.distributed`` only when used, so ``import craftlab`` stays
light):

* :mod:`~craftlab.distributed.sweep` — ``craftlab.sweep``: models × compression settings → one table, in this
  process or as Ray tasks (``engine=``);
* :mod:`~craftlab.distributed.cells` — one sweep cell (model x setting -> one table row), its content key and
  the on-disk store that makes an interrupted sweep resume;
* :mod:`~craftlab.distributed.connect` — the Ray address checked in seconds (a closed port, an HTTP server or
  a silent proxy is one line, never a hang), Ray's connection errors as one line;
* :mod:`~craftlab.distributed.ray_engine` — ``craftlab.sweep(..., engine="ray")``: checking that
  ``CRAFTLAB_HOME`` is shared, running the cells and fine-tunes (GPU tasks single-use);
* the ``craftlab sweep`` command lives in :mod:`craftlab.cli.sweep`;
* :mod:`~craftlab.distributed.tune` — a ρ / learning-rate search of the CrAFT recipe with Ray Tune and ASHA;

See ``docs/scale_out.md``.
"""
