#!/usr/bin/env bash
# Creates .venv (Python 3.11) and installs keraslm with its pinned dependencies into it.
# Usage: bash scripts/install.sh [extras]   e.g. "bash scripts/install.sh test"
# A second run with the same setup.py and extras installs nothing (the code is an editable
# install, so edits need no reinstall); delete .venv to start from scratch.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), f"keraslm needs Python 3.11, found {sys.version.split()[0]}"'
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
extras="${1:-}"
stamp=".venv/.keraslm-install"
setup_hash="$(sha256sum setup.py | cut -d' ' -f1)"
wanted="${setup_hash} extras=${extras}"
installed="$(cat "$stamp" 2>/dev/null || true)"
# Up to date: the same setup.py, and the extras asked for (none, or the same as installed).
if { [ "$installed" = "$wanted" ] || { [ -z "$extras" ] && [ "${installed%% *}" = "$setup_hash" ]; }; } \
    && .venv/bin/python -c 'import keraslm' 2>/dev/null; then
  exit 0
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# setuptools warns about every editable install ("Please be careful with folders in your working
# directory..."): expected here, so not shown.
PYTHONWARNINGS="ignore:Editable installation" .venv/bin/python -m pip install --quiet --editable ".${extras:+[$extras]}"
echo "$wanted" > "$stamp"
