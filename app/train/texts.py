"""The Train tab's words: its introductions and the train-time transforms it offers."""

from __future__ import annotations

__all__ = ["INTRO", "PRETRAIN_INTRO", "TRANSFORM_CHOICES"]

INTRO = ("Fine-tune a model with a chosen optimizer, learning rate, SAM radius ρ and epochs. With "
         "*twin*, the same run without SAM (or with ρ = 0.05 when ρ = 0) is trained too, so Explore "
         "can compare them. Runs are cached: the same settings never train twice.")

TRANSFORM_CHOICES = [("none", "none"), ("expand (ExpandNets-style factors)", "expand"),
                     ("repvgg (RepVGG-style branches; CNNs)", "repvgg"), ("weight-noise", "weight-noise")]
"""Train-time transforms offered (``craftlab.transforms``); each folds back into the plain architecture."""

PRETRAIN_INTRO = ("### Build your own foundation\nPretrain a zoo architecture on **mnist5k** (the source task) "
                  "with a chosen "
         "optimizer, SAM radius and train-time transformation (folded away after training, SNT's idea), then "
         "fine-tune an AdamW run and its CrAFT twin from it on a target task: the pair opens in **Explore** like "
         "any model. Runs are cached and train one at a time.")
