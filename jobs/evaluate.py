"""Evaluate a checkpoint on a labeled split; write metrics, figures and a model card.

    python jobs/evaluate.py [overrides...]      e.g. evaluate.split=val, evaluate.source=predictions
"""

import hydra
from omegaconf import DictConfig, OmegaConf

from catalog_vision.evaluate import evaluate
from catalog_vision.runtime import job_command, setup_logging


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    setup_logging()
    evaluate(OmegaConf.to_container(cfg, resolve=True), command=job_command("jobs/evaluate.py"))


if __name__ == "__main__":
    main()
