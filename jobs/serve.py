"""Serve a checkpoint online: Ray Serve with the Open Inference Protocol v2 REST API and POST /classify.

    python jobs/serve.py [overrides...]      e.g. predictor.checkpoint=data/output/model serve.port=8080

Blocks until interrupted (Ctrl-C / SIGTERM), then shuts the application down.
"""

import hydra
from omegaconf import DictConfig, OmegaConf

from catalog_vision.runtime import setup_logging
from catalog_vision.serve.run import serve_forever


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    setup_logging()
    serve_forever(OmegaConf.to_container(cfg, resolve=True))


if __name__ == "__main__":
    main()
