"""Summarise a model's predictions with DuckDB: label counts, errors, the low-confidence queue and
accuracy against the manifest's labels (per split).

    python jobs/query.py                                   # the model at predictor.checkpoint
    python jobs/query.py query.predictions=data/output/predictions/<model_id>/<catalog_id>/<run_id>
"""

import hydra
from omegaconf import DictConfig, OmegaConf

from catalog_vision.backfill.query import query
from catalog_vision.runtime import setup_logging


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    setup_logging()
    query(OmegaConf.to_container(cfg, resolve=True))


if __name__ == "__main__":
    main()
