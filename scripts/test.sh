#!/usr/bin/env bash
# README command 2: set up, then lint and run every test (including a `dvc repro` of the smoke profile).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"

# Headless Chromium (Debian's `chromium`) for the real-browser check of the Prefect UI
# (tests/test_prefect_server.py). Best effort: where it cannot be installed that check is skipped
# and says why.
if ! command -v chromium >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
  if { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium; } \
      >/dev/null 2>&1; then
    echo "[test] installed chromium for the Prefect UI check"
  else
    echo "[test] could not install chromium: the Prefect UI browser check will be skipped"
  fi
fi

ruff check .
pytest -q --durations=30 "$@"   # the 30 slowest tests: where CI time goes
