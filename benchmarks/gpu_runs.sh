#!/usr/bin/env bash
# Larger-scale IAMA vs linear GRPO runs on one GPU (no vLLM needed: HF generate rollouts).
#   bash benchmarks/gpu_runs.sh prep GGUF MODEL_DIR   # the default model's GGUF -> bf16 checkpoint
#   bash benchmarks/gpu_runs.sh smoke MODEL_DIR       # 2 steps, then --resume to 3 (GPU paths)
#   bash benchmarks/gpu_runs.sh train MODEL_DIR NAME PRESET [--set k=v ...]
#   bash benchmarks/gpu_runs.sh eval CONFIG.yaml
# Runs land in runs/gpu/<NAME>; numbers and settings are recorded in benchmarks/README.md.
set -euo pipefail
IAMA=(python3 -m iama.cli)
stage=$1; shift
case "$stage" in
  prep)
    python3 - "$1" "$2" <<'PY'
import sys
from pathlib import Path
from iama.models import _convert_gguf
out = Path(sys.argv[2])
if not (out / "config.json").is_file():
    _convert_gguf(Path(sys.argv[1]), out)
print("model ready:", out)
PY
    ;;
  smoke)
    d=runs/gpu/smoke
    "${IAMA[@]}" train length --output-dir "$d" --overwrite --set model="$1" --set steps=2 --set save_steps=1
    "${IAMA[@]}" train length --output-dir "$d" --resume --set model="$1" --set steps=3 --set save_steps=1
    python3 -c "import json; r=[json.loads(l) for l in open('$d/metrics.jsonl') if 'step_time' in l]; print('smoke steps', [x['step'] for x in r])"
    ;;
  train)
    model=$1 name=$2 preset=$3; shift 3
    "${IAMA[@]}" train "$preset" --output-dir "runs/gpu/$name" --overwrite --set model="$model" "$@"
    ;;
  eval)
    "${IAMA[@]}" eval "$1"
    ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
