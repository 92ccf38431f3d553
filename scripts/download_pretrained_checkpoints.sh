#!/usr/bin/env bash
# Fetch pretrained GPT-2 checkpoints (Hugging Face Hub, sha256-checked) into pretrained_checkpoints/.
#   bash scripts/download_pretrained_checkpoints.sh [gpt2.sm gpt2.md gpt2.lg gpt2.xl] [--mirror DIR]
# Default: gpt2.sm gpt2.md gpt2.lg (as upstream's script). Offline: --mirror DIR or NLG_MODEL_MIRROR.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"  # ROOT, the venv, PYTHONPATH, PY
cd "$ROOT"
args=("$@")
if [[ ${#args[@]} -eq 0 || "${args[0]}" == --* ]]; then args=(gpt2.sm gpt2.md gpt2.lg "${args[@]}"); fi
LORA_NLG_PROG="scripts/download_pretrained_checkpoints.sh" exec "$PY" -m lora_nlg.weights.hub "${args[@]}"
