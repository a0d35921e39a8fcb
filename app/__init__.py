"""The CraftLab Gradio app: ``craftlab app`` or ``python -m app`` (see :func:`craftlab_app.ui.launch`).

Modules (the folder ``app/`` installs as the package ``craftlab_app``):

* ``service`` — :class:`~craftlab_app.service.Explorer`, what the app computes: compress, curves,
  sharpness, landscapes, training, over the two fine-tuning arms of a model;
* ``arms`` — resolving a model into its arms (plain run and CrAFT twin) and loading them with their data;
* ``training`` — ``make_run_spec`` (the one validation of a run request) and the background runs;
* ``concurrency`` — single-flight bounded LRU, the foreground pool and the low-priority background worker;
* ``stores`` — the on-disk JSON caches (atomic writes, bounded landscape store);
* ``hub`` — the Hugging Face Hub reachability check;
* ``figures`` — plotly figures of both arms (drawn with :mod:`craftlab.viz.plots`);
* ``ui`` — Gradio layout and callbacks (wiring only), ``launch``; ``texts`` — the page's static texts.
"""
