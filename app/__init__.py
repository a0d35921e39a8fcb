"""The CraftLab Gradio app: ``craftlab app`` or ``python -m craftlab_app`` (see :func:`craftlab_app.ui.launch`).

One package per tab (the folder ``app/`` installs as the package ``craftlab_app``), each with a ``service``
(what it computes; no Gradio), a ``view`` (Gradio layout and handlers) and ``texts`` (its words):

* ``explore`` — a model's plain arm and its CrAFT twin under compression: :class:`~craftlab_app.explore.service.
  Explorer` composed of its parts (``curves``: curves, seeds and the paired verdict; ``sharpness``; ``landscapes``:
  coarse then fine, cancellable) over the shared ``points`` and ``arms``; ``handlers`` (its events), ``session``
  (one state object per browser view), ``panels`` (the words of a view), ``figures``, ``export``, ``links``;
* ``train`` — fine-tuning, pretraining and transfer runs (``make_run_spec``: the form's values into a ``RunSpec``);
* ``supernet``, ``adapt``, ``compose`` — one paper's view each; ``learn`` — the Learn tab;
* ``common`` — what every tab may use: ``concurrency`` (single-flight LRU, scheduler, ``Deferred``), ``stores``
  (the on-disk JSON caches), ``jobs`` (background training jobs: the one trainer), ``errors`` (``user_errors``),
  ``figures`` (the plotly frame), ``transfers`` (names of pairs fine-tuned from a pretraining run), ``hub``;
* ``ui`` — the shell: builds the tabs, wires the events that cross tabs, ``launch``; ``texts`` — the page's style.

A tab package imports ``common`` and ``craftlab``, never another tab (``tests/test_architecture.py``).
"""
