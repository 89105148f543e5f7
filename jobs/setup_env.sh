# Sourced by jobs/demo.sh and tests/run.sh: create or reuse a virtualenv, install the project and
# (where apt is available) the Fashion-MNIST data. Idempotent: a second run installs nothing.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CV_VENV:-$REPO/.venv}"
EXTRAS="${CV_EXTRAS:-}"
PYTHON_BIN="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtualenv $VENV"
  "$PYTHON_BIN" -m venv "$VENV"
fi
stamp="$VENV/.catalog-vision-$(cat "$REPO/pyproject.toml" | sha256sum | cut -c1-12)${EXTRAS:+-$EXTRAS}"
if [ ! -f "$stamp" ]; then
  echo "[setup] installing catalog-vision${EXTRAS:+[$EXTRAS]} into $VENV (first run only; ~2-3 minutes)"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e "$REPO${EXTRAS:+[$EXTRAS]}"
  touch "$stamp"
fi

FMNIST_DIR="${CV_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}"
if [ ! -f "$FMNIST_DIR/t10k-images-idx3-ubyte.gz" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "[setup] installing Debian's dataset-fashion-mnist"
    apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; }
  else
    echo "[setup] Fashion-MNIST not found in $FMNIST_DIR: install Debian's dataset-fashion-mnist or set CV_FASHION_MNIST" >&2
  fi
fi
export PATH="$VENV/bin:$PATH"
export RAY_USAGE_STATS_ENABLED=0
cd "$REPO"
