#!/usr/bin/env bash
# README command 1: set up, reproduce the whole pipeline on the active profile (the demo), then a
# short summary: the headline metrics, where the pictures are, how to compare a change.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
dvc repro "$@"
echo
vfmtok-pipeline summary
