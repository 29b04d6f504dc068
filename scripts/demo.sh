#!/usr/bin/env bash
# The main job on a fresh machine: install, train a character Transformer on tinyshakespeare
# (nanoGPT's CPU shape, 2000 steps, about 1.5 minutes on 2 cores), export it, generate from it.
# Running it again changes nothing: the run has nothing left to train, the newest export already
# holds its checkpoint, and it generates again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install.sh
.venv/bin/keraslm-train --flagfile=configs/tinyshakespeare_char.flags
.venv/bin/keraslm-generate --model_dir=saved_models/shakespeare --prompt="ROMEO:" --max_new_tokens=200 --seed=1
