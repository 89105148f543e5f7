"""Top-k similar images from a model's similarity index (build it first: jobs/index.py).

    python jobs/similar.py similar.image_id=test-00042
    python jobs/similar.py 'similar.image_id=[test-00042,test-00043]' similar.k=5 similar.label=Sneaker
    python jobs/similar.py similar.image=/path/to/new.png similar.output=out/similar.parquet

Exit status 2 for a query the index cannot answer (an unknown image_id or label, an unreadable image).
"""

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from catalog_vision.runtime import setup_logging
from catalog_vision.search import UnknownImage, similar


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    setup_logging()
    try:
        similar(OmegaConf.to_container(cfg, resolve=True))
    except (UnknownImage, ValueError, FileNotFoundError) as e:
        logging.getLogger("catalog_vision").error("%s", e)
        sys.exit(2)


if __name__ == "__main__":
    main()
