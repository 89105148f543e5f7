#!/usr/bin/env bash
# The whole chain on this machine: Fashion-MNIST catalog -> Ray Train -> backfill of the 10,000
# test images -> DuckDB query summary. Extra arguments are Hydra overrides, e.g.
#   bash jobs/demo.sh trainer.epochs=3
#   bash jobs/demo.sh experiment=fashion_mnist_94     # the accuracy recipe (README "The accuracy recipe")
# Afterwards bench/results/demo-<experiment>.json holds the run's figures (the README's Results table).
start=$SECONDS
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
export CATALOG_VISION_ROOT="${CATALOG_VISION_ROOT:-$REPO/data}"
# experiment=fashion_mnist unless the arguments name another (e.g. experiment=fashion_mnist_94).
default=experiment=fashion_mnist
experiment=fashion_mnist
for arg in "$@"; do [[ "$arg" == experiment=* ]] && default= && experiment=${arg#experiment=}; done
python jobs/pipeline.py $default "$@"
# Only the demo's own runs (no overrides but the experiment) become result files.
if [ $# -eq 0 ] || { [ $# -eq 1 ] && [ -z "$default" ]; }; then
  python bench/demo_results.py "$CATALOG_VISION_ROOT/output/pipeline.json" --experiment "$experiment" \
    --wall-seconds $((SECONDS - start)) --args "$*"
fi
