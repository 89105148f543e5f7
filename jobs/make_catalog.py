"""Write a catalog (image files + manifest.parquet) from Fashion-MNIST IDX files.

    python jobs/make_catalog.py [overrides...]      e.g. storage=s3 paths.root=s3://bucket/cv
"""

import hydra
from omegaconf import DictConfig, OmegaConf

from catalog_vision.catalogs import make_catalog
from catalog_vision.runtime import setup_logging


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    setup_logging()
    make_catalog(OmegaConf.to_container(cfg, resolve=True))


if __name__ == "__main__":
    main()
