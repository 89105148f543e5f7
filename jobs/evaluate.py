"""Evaluate a checkpoint on a labeled split; write metrics, figures and a model card.

    python jobs/evaluate.py [overrides...]      e.g. evaluate.split=val, evaluate.source=predictions
"""

import shlex

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from catalog_vision.evaluate import evaluate
from catalog_vision.runtime import setup_logging


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    setup_logging()
    # The command as a user would retype it (the same however the job was started, e.g. under ray job submit).
    command = shlex.join(["python", "jobs/evaluate.py", *HydraConfig.get().overrides.task])
    evaluate(OmegaConf.to_container(cfg, resolve=True), command=command)


if __name__ == "__main__":
    main()
