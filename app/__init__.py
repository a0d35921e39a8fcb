"""The CraftLab Gradio app: ``craftlab app`` or ``python -m craftlab_app`` (see :func:`craftlab_app.ui.launch`).

Modules (the folder ``app/`` installs as the package ``craftlab_app``):

* ``service`` — :class:`~craftlab_app.service.Explorer`, what the app computes: compress, curves, seeds and
  the paired verdict (``sweeps``), sharpness, landscapes (``landscapes``: coarse then fine, cancellable),
  training, over the two fine-tuning arms of a model;
* ``arms`` — resolving a model into its arms (plain run and CrAFT twin, per seed) and loading them with their data;
* ``training`` — ``make_run_spec`` (the one validation of a run request), the background runs, duration estimates;
* ``concurrency`` — single-flight bounded LRU, cancellation, the foreground pool, the low-priority background
  worker, and ``Deferred`` (the Explorer is built on a background thread while the page is served);
* ``stores`` — the on-disk JSON caches (atomic writes, bounded landscape store);
* ``view`` — one state object per browser tab: every panel is drawn from the session's current view and
  titled with it; answers for a replaced view are dropped;
* ``callbacks`` — every event handler; ``panels`` — the words of a view (cards, the interpretation sentence,
  sharpness, presets, the URL of a view); ``figures`` — plotly figures of both arms (drawn with
  :mod:`craftlab.viz.plots`); ``export`` — a view as JSON and HTML;
* ``hub`` — the Hugging Face Hub check (the core's :func:`craftlab.models.check_hub`);
* ``ui`` — Gradio layout and event wiring, ``launch``; ``texts`` — the page's static texts and its one script.
"""
