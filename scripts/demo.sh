#!/usr/bin/env bash
# README command 1: set up, then reproduce the whole pipeline on the active profile (the demo).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
dvc repro "$@"
dvc metrics show
