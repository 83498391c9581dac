#!/usr/bin/env bash
# README command 1: set up, reproduce the whole pipeline on the active profile (the demo) as one
# Prefect run (`dvc repro` stage by stage, each stage folded into its task;
# a plain `dvc repro` does the same but every stage starts a throw-away Prefect API of its own),
# then a short summary: the headline metrics, where the pictures are, how to compare a change.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
vfmtok-pipeline reproduce "$@"
echo
vfmtok-pipeline summary
