"""Train a classifier with Ray Train and export the best checkpoint to paths.model.

    python jobs/train.py [overrides...]      e.g. storage=s3 paths.root=s3://bucket/cv
"""

import hydra
from omegaconf import DictConfig, OmegaConf

from catalog_vision.train import train
from catalog_vision.runtime import setup_logging


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    setup_logging()
    train(OmegaConf.to_container(cfg, resolve=True))


if __name__ == "__main__":
    main()
