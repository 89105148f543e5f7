"""Build a model's similarity index from its predictions table, or add a backfill's new files to it.

    python jobs/index.py                                   # the model at predictor.checkpoint, data's catalog
    python jobs/index.py storage=s3 paths.root=s3://bucket/cv
    python jobs/index.py index.predictions=data/output/predictions/<model_id>/<catalog_id>
"""

import hydra
from omegaconf import DictConfig, OmegaConf

from catalog_vision.runtime import setup_logging
from catalog_vision.search import build_index


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    setup_logging()
    build_index(OmegaConf.to_container(cfg, resolve=True))


if __name__ == "__main__":
    main()
