"""Label and embed a catalog; write Parquet + a run manifest.

    python jobs/backfill.py [overrides...]      e.g. storage=s3 paths.root=s3://bucket/cv

Exit status: 0 succeeded; 1 failed (counts that do not add up, output.max_error_fraction passed,
another run holds the lease, or the lease was lost); 75 incomplete (images left for a rerun after
storage errors that can pass). ``status`` in the run's ``_run.json`` says the same.
"""

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from catalog_vision.backfill import backfill
from catalog_vision.backfill.lease import LeaseHeld
from catalog_vision.backfill.outcome import EXIT_CODES, BackfillFailed
from catalog_vision.runtime import setup_logging


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    setup_logging()
    try:
        backfill(OmegaConf.to_container(cfg, resolve=True))
    except BackfillFailed as e:
        logging.getLogger("catalog_vision").error("%s", e)
        sys.exit(EXIT_CODES.get(e.status, 1))
    except LeaseHeld as e:
        logging.getLogger("catalog_vision").error("not started: %s", e)
        sys.exit(EXIT_CODES["failed"])


if __name__ == "__main__":
    main()
