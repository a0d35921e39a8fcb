"""Probes of a trained model's loss surface: Hessian spectra, sharpness, loss landscapes. Every probe
evaluates in eval mode and leaves the model bit-identical.

Modules (``craftlab.hessian``, ``craftlab.sharpness`` and ``craftlab.landscape`` are aliases of the
public ones):

- :mod:`.hessian`: Hessian-vector products (the one implementation), top eigenvalues, Hutchinson
  trace, spectral density (stochastic Lanczos quadrature);
- :mod:`.lanczos`: the Lanczos solver on a plain matrix-vector product (restarts for repeated eigenvalues);
- :mod:`.sharpness`: ε-sharpness, per-layer curvature, a quick summary (re-exports the Hessian probes);
- :mod:`.landscape`: directions, lines, planes, interpolations (re-exports :mod:`.compression`);
- :mod:`.compression`: the compression path w → C(w), its second-order prediction, the compression plane;
- :mod:`.results`: the result records and their one JSON serializer;
- ``_probe`` (model restore, batches, probed parameters, flat vectors) and ``_grid`` (the landscape
  evaluation engine): shared plumbing.
"""
