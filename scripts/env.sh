# The project's environment for its shell scripts (sourced, not run): ROOT (the repository), the
# repository's .venv activated unless a virtual environment is active already, src/ on
# PYTHONPATH, PY the Python to run ($PYTHON, else python3).
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${VIRTUAL_ENV:-}" && -x "$ROOT/.venv/bin/python" ]]; then
  # shellcheck disable=SC1091
  source "$ROOT/.venv/bin/activate"
fi
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
