"""Generate the Ray Serve config for `serve deploy` (and a RayService's serveConfigV2) from conf/.

    python jobs/serve_config.py --out cluster/serve-deploy.yaml --rayservice cluster/rayservice.yaml [overrides...]
    python jobs/serve_config.py --out - predictor.checkpoint=s3://bucket/cv/output/model     # print it

Overrides are the Hydra overrides jobs/serve.py takes (storage=s3 paths.root=s3://... serve.num_replicas=2).
The generated file's header records the command, and tests/test_serve_deploy.py checks that
running it again gives the committed cluster/ files. Values resolved from the environment
(storage.endpoint_url from AWS_ENDPOINT_URL, paths.root from CATALOG_VISION_ROOT) are written
as they resolve here: pass them as overrides to make the output independent of the shell.
"""

import argparse
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from catalog_vision.serve.deploy import generate

CONF = Path(__file__).resolve().parents[1] / "conf"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="cluster/serve-deploy.yaml", help="the serve deploy config to write; - prints it")
    ap.add_argument("--rayservice", default=None, help="a RayService manifest whose serveConfigV2 block is replaced (in place)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = OmegaConf.to_container(compose(config_name="config", overrides=args.overrides), resolve=True)
    try:
        files = generate(cfg, args.overrides, args.out, args.rayservice)
    except ValueError as e:
        sys.exit(f"serve_config: {e}")
    for path, text in files.items():
        if path == "-":
            sys.stdout.write(text)
        else:
            Path(path).write_text(text)
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
