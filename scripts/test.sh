#!/usr/bin/env bash
# Installs keraslm with its test extra into .venv and runs the whole test suite (CPU only).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install.sh test
# The playground page's test drives Debian's chromium through chromedriver (it skips, saying so,
# without them). Installed here when missing and this is a root shell with apt (CI's fresh machine).
if ! { command -v chromium && command -v chromedriver; } >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's chromium and chromium-driver for the browser test..."
  export DEBIAN_FRONTEND=noninteractive
  { apt-get install -y -qq chromium chromium-driver || { apt-get update -qq && apt-get install -y -qq chromium chromium-driver; }; } \
    >/tmp/keraslm-chromium-install.log 2>&1 || echo "could not install chromium (see /tmp/keraslm-chromium-install.log); the browser test will be skipped"
fi
# Two test processes, each taking whole files (session fixtures are per process): on 2 cores the
# suite took 1,030 s instead of 1,766 s (most tests wait on subprocess start-up and small models).
.venv/bin/python -m pytest -q -n 2 --dist loadfile tests "$@"
