#!/usr/bin/env bash
# The whole chain on this machine: Fashion-MNIST catalog -> Ray Train -> backfill of the 10,000
# test images -> DuckDB query summary. Extra arguments are Hydra overrides, e.g.
#   bash jobs/demo.sh trainer.epochs=3
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
export CATALOG_VISION_ROOT="${CATALOG_VISION_ROOT:-$REPO/data}"
exec python jobs/pipeline.py experiment=fashion_mnist "$@"
