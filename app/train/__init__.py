"""The Train tab: fine-tuning, pretraining and transfer runs (service: ``TrainService``)."""
