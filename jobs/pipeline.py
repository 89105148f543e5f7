"""The whole chain: make_catalog -> train -> backfill -> query summary -> evaluation report.

    python jobs/pipeline.py [overrides...]      e.g. storage=s3 paths.root=s3://bucket/cv
"""

import shlex

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from catalog_vision.pipeline import run_pipeline
from catalog_vision.runtime import setup_logging


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    setup_logging()
    command = shlex.join(["python", "jobs/pipeline.py", *HydraConfig.get().overrides.task])
    run_pipeline(OmegaConf.to_container(cfg, resolve=True), command=command)


if __name__ == "__main__":
    main()
