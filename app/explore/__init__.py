"""The Explore tab: a model's plain arm and its CrAFT twin under compression (service: ``Explorer``)."""
