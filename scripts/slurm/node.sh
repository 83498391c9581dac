#!/bin/bash
# One node's part of a Slurm launch (scripts/slurm/stage.sbatch runs it once a node).
#
#   node.sh STAGE [--params FILE]  every node runs `python -m pipeline.stage STAGE`
#   node.sh dvc repro ... STAGE    node 0 runs the DVC command (its stage process joins the launch
#                                  and DVC records the outputs); the others run the stage's worker
#                                  part, `python -m pipeline.stage STAGE` (STAGE: the last word),
#                                  if DVC has it to run: node 0 says so in logs/STAGE/
#
# Global rank 0 (the one that writes the outputs) runs on node 0 (static rendezvous by node rank), so
# DVC on node 0 records outputs that are complete when its own stage process ends.
set -euo pipefail
if [ -f .venv/bin/activate ]; then source .venv/bin/activate; fi
export PYTHONUNBUFFERED=1
if [ "$1" != "dvc" ]; then
    exec python -m pipeline.stage "$@"
fi
stage="${!#}"
decision="logs/$stage/slurm-${SLURM_JOB_ID:-0}.todo"
if [ "${SLURM_NODEID:-0}" = "0" ]; then
    mkdir -p "logs/$stage"
    todo=run
    if [[ " $* " != *" --force "* && " $* " != *" -f "* ]] && dvc status --quiet "$stage" >/dev/null; then
        todo=current  # DVC will not run it: the other nodes must not wait for it
    fi
    echo "$todo" > "$decision.tmp" && mv "$decision.tmp" "$decision"
    exec "$@"
fi
until [ -f "$decision" ]; do sleep 1; done
if [ "$(cat "$decision")" = current ]; then
    echo "$stage is current: DVC runs nothing, nor does node ${SLURM_NODEID}"
    exit 0
fi
exec python -m pipeline.stage "$stage"
