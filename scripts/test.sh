#!/usr/bin/env bash
# README command 2: set up, then lint and run every test (including a `dvc repro` of the smoke profile).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
ruff check .
pytest -q "$@"
