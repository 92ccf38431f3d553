#!/usr/bin/env bash
# Create (if needed) a virtual environment, install everything, and run the whole test suite.
#   bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
if [[ -z "${VIRTUAL_ENV:-}" ]]; then
  [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
  # shellcheck disable=SC1091
  source "$VENV/bin/activate"
fi
if ! python -c "import torch" 2>/dev/null; then
  # Without a GPU, take the CPU build (TORCH_SPEC overrides); with one, pip's default CUDA build.
  if command -v nvidia-smi >/dev/null 2>&1; then
    python -m pip install "${TORCH_SPEC:-torch}"
  else
    python -m pip install "${TORCH_SPEC:-torch==2.13.0}"
  fi
fi
# Install only when the requirement files changed since the last install (a stamp in the venv keyed
# on their hash), so that running one test file is fast.
STAMP="$VIRTUAL_ENV/.lora-nlg-installed"
WANT="$(python -c 'import hashlib, sys; print(hashlib.sha256(b"".join(open(f, "rb").read() for f in sys.argv[1:])).hexdigest())' \
  requirements.txt requirements-test.txt pyproject.toml)"
if [[ "$(cat "$STAMP" 2>/dev/null)" == "$WANT" ]] && python -c "import lora_nlg, pytest, ruff" 2>/dev/null; then
  echo "test.sh: requirements unchanged since the last install: not reinstalling" >&2
else
  python -m pip install -q -r requirements-test.txt
  python -m pip install -q --no-deps -e .
  echo "$WANT" > "$STAMP"
fi
# Lint and format (pyproject.toml [tool.ruff]) before the tests: CI enforces both.
python -m ruff check --quiet . && python -m ruff format --check --quiet . || {
  echo "test.sh: ruff found problems above; 'python -m ruff check --fix . && python -m ruff format .' fixes most" >&2
  exit 1
}
exec python -m pytest "$@"
