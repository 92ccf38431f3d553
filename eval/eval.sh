#!/usr/bin/env bash
# Score outputs as the official E2E scorer / GenerationEval do. Usage:
#   eval/eval.sh e2e|webnlg|dart PREDICTIONS [REFERENCES] [--protocol official|paper] [--json OUT]
#   eval/eval.sh --install-punkt        # fetch nltk's English Punkt model from PyPI, once
# See eval/README.md. Uses the repository's .venv when no virtual environment is active.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"  # ROOT, the venv, PYTHONPATH, PY
exec "$PY" -m lora_nlg.metrics.evaluate --data-dir "$ROOT/data" "$@"
