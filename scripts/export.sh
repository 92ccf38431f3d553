#!/usr/bin/env bash
# Export our LoRA adapters to PEFT or to a merged Hugging Face GPT-2 folder; import PEFT adapters
# and upstream's released checkpoints. Arguments go to src/lora_export.py:
#   bash scripts/export.sh export peft   CKPT OUT_DIR
#   bash scripts/export.sh export merged CKPT OUT_DIR [--pretrained PATH]
#   bash scripts/export.sh import peft   ADAPTER_DIR OUT.safetensors
#   bash scripts/export.sh import seed   SEED.pt OUT.safetensors --lora_dim 4 --lora_alpha 32 --model_card gpt2.md
# Paths are taken relative to the current directory (the script does not cd).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"  # ROOT, the venv, PYTHONPATH, PY
LORA_NLG_PROG="scripts/export.sh" exec "$PY" "$ROOT/src/lora_export.py" "$@"
