"""Training: SAM/ASAM (:mod:`.sam`), fine-tuning (:mod:`.finetune`), pretraining and the model factory
(:mod:`.pretrain`), cached runs (:mod:`.runs`)."""
