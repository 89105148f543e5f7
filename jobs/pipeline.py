"""The whole chain: make_catalog -> train -> backfill -> query summary -> evaluation report.

    python jobs/pipeline.py [overrides...]      e.g. storage=s3 paths.root=s3://bucket/cv
"""

import hydra
from omegaconf import DictConfig, OmegaConf

from catalog_vision.pipeline import run_pipeline
from catalog_vision.runtime import job_command, setup_logging


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    setup_logging()
    run_pipeline(OmegaConf.to_container(cfg, resolve=True), command=job_command("jobs/pipeline.py"))


if __name__ == "__main__":
    main()
