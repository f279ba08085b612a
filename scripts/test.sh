#!/usr/bin/env bash
# Sets up .venv (scripts/setup_env.sh), lints with ruff (pyproject.toml) and runs the whole test
# suite; extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
ruff check .
python -m pytest -q "$@"
