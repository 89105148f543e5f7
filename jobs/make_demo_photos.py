"""Write the photo-like demo catalog: product photos in nested class folders + ``products.csv``.

    python jobs/make_demo_photos.py                                            # ./data/photos
    python jobs/make_demo_photos.py storage=s3 demo_photos.out=s3://bucket/photos demo_photos.products=1000
"""

import hydra
from omegaconf import DictConfig, OmegaConf

from catalog_vision.catalogs import make_demo_photos
from catalog_vision.runtime import setup_logging


@hydra.main(version_base="1.3", config_path="../conf", config_name="demo_photos")
def main(cfg: DictConfig) -> None:
    setup_logging()
    make_demo_photos(OmegaConf.to_container(cfg, resolve=True))


if __name__ == "__main__":
    main()
