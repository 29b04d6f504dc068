#!/usr/bin/env bash
# Creates .venv (Python 3.11) and installs keraslm with its pinned dependencies into it.
# Usage: bash scripts/install.sh [extras]   e.g. "bash scripts/install.sh test"
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), f"keraslm needs Python 3.11, found {sys.version.split()[0]}"'
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
extras="${1:-}"
.venv/bin/python -m pip install --quiet --editable ".${extras:+[$extras]}"
