"""Label and embed a catalog; write Parquet + a run manifest.

    python jobs/backfill.py [overrides...]      e.g. storage=s3 paths.root=s3://bucket/cv
"""

import hydra
from omegaconf import DictConfig, OmegaConf

from catalog_vision.backfill import backfill
from catalog_vision.runtime import setup_logging


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    setup_logging()
    backfill(OmegaConf.to_container(cfg, resolve=True))


if __name__ == "__main__":
    main()
