#!/usr/bin/env bash
# Installs keraslm with its test extra into .venv and runs the whole test suite (CPU only).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install.sh test
.venv/bin/python -m pytest -q tests "$@"
