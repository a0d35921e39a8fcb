"""Probes of a trained model's loss surface: Hessian spectra, sharpness, loss landscapes. Every probe
evaluates in eval mode and leaves the model bit-identical."""
