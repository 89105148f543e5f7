"""Training: Ray Train's ``TorchTrainer`` over Ray Data shards (jobs/train.py, ``conf/trainer/``)."""

from .trainer import train

__all__ = ["train"]
