"""Build a catalog: ``manifest.parquet`` (image_id, uri, label, group, split) + ``catalog_summary.json``.

    python jobs/make_catalog.py                                               # Fashion-MNIST demo
    python jobs/make_catalog.py data=photos source=folders source.prefix=s3://bucket/photos
    python jobs/make_catalog.py data=photos source=table source.path=export.csv source.columns.uri=image_url
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
