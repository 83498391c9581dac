#!/usr/bin/env bash
# On a CUDA machine, in under 12 minutes: the CUDA-marked tests, then the paper-size GPU benchmarks
# (tokenizer train step with a random-init DINOv2-L at 336 px in bf16, GPT-B and GPT-L training
# MFU (GPT-L also under torch.compile), KV-cache vs. full-prefix sampling of 256 tokens at batch
# 64 and 256), then the KV-cache figure (kv_cache.py, compiled decode step included). Figures go
# to reports/benchmarks/<date>-<gpu>{,-kv_cache}.{json,md}, the test log beside them.
#
#   bash benchmarks/gpu.sh            # PYTHON=/path/to/python to pick the interpreter
#
# Exit status: 0 when the tests passed and the benchmarks ran; 3 without a CUDA device.
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
export HF_HUB_OFFLINE=1

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu.sh: no CUDA device visible to $PY; nothing to do" >&2
  exit 3
fi
gpu=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0))")
slug=$(echo "$gpu" | tr '[:upper:]' '[:lower:]' | tr -cs 'a-z0-9' '-' | sed 's/-*$//')
stem="reports/benchmarks/$(date +%Y-%m-%d)-${slug}"
mkdir -p reports/benchmarks
echo "gpu.sh: $gpu -> ${stem}.{json,md}"
start=$SECONDS

# 1. CUDA-marked tests (about a minute; the limits keep the whole script under 12 minutes).
timeout 200 "$PY" -m pytest -m cuda -q -p no:cacheprovider 2>&1 | tee "${stem}-pytest.txt"
tests=${PIPESTATUS[0]}
echo "gpu.sh: pytest -m cuda exit $tests after $((SECONDS - start)) s"

# 2. Paper-size benchmarks.
timeout 300 "$PY" benchmarks/bench.py --suite gpu --compile --out "$stem"
bench=$?
echo "gpu.sh: benchmarks exit $bench, total $((SECONDS - start)) s"

# 3. The KV-cache figure on the GPU: GPT-B and RAR-B, 256 tokens at batch 64, eager and with the
#    compiled decode step (sample.compile), median and range of 3 repeats (about 2-3 minutes).
timeout 200 "$PY" benchmarks/kv_cache.py --device cuda --models GPT-B RAR-B --batch 64 --repeats 3 \
  --compile --out "${stem}-kv_cache"
kv=$?
echo "gpu.sh: kv_cache exit $kv, total $((SECONDS - start)) s"

if [[ $tests -ne 0 || $bench -ne 0 || $kv -ne 0 ]]; then exit 1; fi
