#!/usr/bin/env bash
# The alpha/r study (docs/scaling_study.md): LoRA rank r in {1..32} under alpha/r and alpha/sqrt(r)
# at a fixed alpha and learning rate, on a tiny GPT-2, on the CPU in minutes.
#   bash scripts/scaling_study.sh [--out_dir runs/scaling_study] [--lrs 0.002 0.008] [--seeds 1 2 3] [--quick]
# Flags: python -m lora_nlg.pipeline.scaling_study --help. Reads the raw E2E files from the data mirror
# (--mirror DIR, else $NLG_DATA_MIRROR, else ../shared/data). Writes results.md, results.json and
# scaling_study.png into --out_dir.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"  # ROOT, the venv, PYTHONPATH, PY
cd "$ROOT"
LORA_NLG_PROG="scripts/scaling_study.sh" exec "$PY" -m lora_nlg.pipeline.scaling_study "$@"
