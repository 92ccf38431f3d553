#!/usr/bin/env bash
# Prepare E2E, WebNLG 2017 and DART under data/ (formats: docs/CONVENTIONS.md).
#   bash scripts/create_datasets.sh [e2e|webnlg|dart|all ...] [--mirror DIR] [--force] [--no_download]
#                                   [--e2e_text raw|moses] [--data_dir DIR]
# Raw files come from the mirror folder (--mirror, else $NLG_DATA_MIRROR, else ../shared/data when
# it exists) or are downloaded from the official URLs in src/lora_nlg/data/sources.json into data/cache/; their
# sha256 is checked either way. Re-running rebuilds only what is out of date.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"  # ROOT, the venv, PYTHONPATH, PY
datasets=()
flags=()
while (($#)); do
  case "$1" in
    e2e|webnlg|dart|all) datasets+=("$1") ;;
    -h|--help) flags+=("$1") ;;
    --force|--no_download) flags+=("$1") ;;
    --*=*) flags+=("$1") ;;
    --*) [[ $# -ge 2 ]] || { echo "create_datasets.sh: $1 needs a value" >&2; exit 2; }
         flags+=("$1" "$2"); shift ;;
    *) echo "create_datasets.sh: unknown dataset '$1' (choose e2e, webnlg, dart or all)" >&2; exit 2 ;;
  esac
  shift
done
((${#datasets[@]})) || datasets=(all)
LORA_NLG_PROG="scripts/create_datasets.sh" exec "$PY" -m lora_nlg.data.prepare "${datasets[@]}" ${flags[@]+"${flags[@]}"}
