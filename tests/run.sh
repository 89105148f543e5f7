#!/usr/bin/env bash
# The test suite against a real local Ray, a real S3 endpoint (moto server on 127.0.0.1), real HTTP,
# after the linter (ruff, configured in pyproject.toml). Extra arguments go to pytest, e.g.
#   bash tests/run.sh -m "not slow"      bash tests/run.sh -k s3
set -euo pipefail
CV_EXTRAS=test source "$(dirname "${BASH_SOURCE[0]}")/../jobs/setup_env.sh"
cd "$REPO"
ruff check .
# Test files or node ids first (bash tests/run.sh tests/test_serve.py -x): just those; else the suite.
if [ $# -gt 0 ] && [ -e "${1%%::*}" ]; then exec python -m pytest "$@"; fi
exec python -m pytest tests "$@"
