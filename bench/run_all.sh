#!/usr/bin/env bash
# Run the training, decoding and evaluation benchmarks and print one table of their speed ratios.
#
#   bash bench/run_all.sh [--quick] [--out DIR] [--only train,beam,eval,methods]
#
# With CUDA: each benchmark at its full size on the GPU (train_bench.py, beam_bench.py defaults).
# Without CUDA, or with --quick: the CPU sizes of their docstrings (train: 4 steps, upstream method 1;
# decoding: 16 of the 630 E2E test inputs, 8 for the transformers comparison, 2 seed lines;
# evaluation always runs whole: it is CPU work; methods: 3 steps per system). Reports go to DIR
# (default bench_out/: train.json, beam.json, eval.json, methods.json, each benchmark's output in
# <name>.log, table.md). A benchmark
# that fails is reported in the table; the exit status is then 1. Each benchmark's output shows as it
# runs; how long each takes on a 2-core CPU: README, "Benchmarks".
set -euo pipefail
CALLER="$PWD"
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"  # ROOT, the venv, PYTHONPATH, PY
cd "$ROOT"
QUICK=0
OUT="$ROOT/bench_out"
ONLY="train,beam,eval,methods"
while (($#)); do
  case "$1" in
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    --quick) QUICK=1 ;;
    --out) [[ $# -ge 2 ]] || { echo "run_all.sh: --out needs a value" >&2; exit 2; }
           OUT="$2"; [[ "$OUT" == /* ]] || OUT="$CALLER/$OUT"; shift ;;
    --only) [[ $# -ge 2 ]] || { echo "run_all.sh: --only needs a value" >&2; exit 2; }; ONLY="$2"; shift ;;
    *) echo "run_all.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
for b in ${ONLY//,/ }; do
  [[ "$b" == train || "$b" == beam || "$b" == eval || "$b" == methods ]] || { echo "run_all.sh: --only: '$b' is not train, beam, eval or methods" >&2; exit 2; }
done
mkdir -p "$OUT"
CUDA="$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))')"
if [[ "$CUDA" == 1 && "$QUICK" == 0 ]]; then
  TRAIN_ARGS=(); BEAM_ARGS=(); METHOD_ARGS=()
else
  TRAIN_ARGS=(--device cpu --steps 4 --seed_steps 1)
  BEAM_ARGS=(--device cpu --n_inputs 16 --hf_inputs 8 --seed_lines 2 --batch_size 8)
  METHOD_ARGS=(--device cpu --steps 3 --warmup 1)
fi

FAILED=()
TOTAL=$(echo ${ONLY//,/ } | wc -w)
N=0
bench() {  # bench NAME COMMAND...: run one benchmark, keep going if it fails; its output goes to
  # OUT/NAME.log and, line by line with the benchmark's name in front, to the terminal
  local name="$1"; shift
  local start=$SECONDS rc=0
  N=$((N + 1))
  rm -f "$OUT/$name.json"
  echo "[run_all.sh $(date +%H:%M:%S)] benchmark $N of $TOTAL: $name: $*" >&2
  set +e
  "$@" --json "$OUT/$name.json" 2>&1 | tee "$OUT/$name.log" | sed -u "s/^/  [$name] /" >&2
  rc=${PIPESTATUS[0]}
  set -e
  if ((rc != 0)); then
    echo "[run_all.sh] $name FAILED (exit $rc) after $((SECONDS - start)) s; last lines of $OUT/$name.log:" >&2
    tail -n 15 "$OUT/$name.log" >&2
    FAILED+=("$name")
  else
    echo "[run_all.sh] $name done in $((SECONDS - start)) s" >&2
  fi
}
[[ ",$ONLY," == *,train,* ]] && bench train "$PY" bench/train_bench.py ${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"}
[[ ",$ONLY," == *,beam,* ]] && bench beam "$PY" bench/beam_bench.py ${BEAM_ARGS[@]+"${BEAM_ARGS[@]}"}
[[ ",$ONLY," == *,eval,* ]] && bench eval "$PY" bench/eval_bench.py
[[ ",$ONLY," == *,methods,* ]] && bench methods "$PY" bench/method_bench.py ${METHOD_ARGS[@]+"${METHOD_ARGS[@]}"}

TABLE_ARGS=()
for name in train beam eval methods; do
  [[ ",$ONLY," == *,$name,* ]] && TABLE_ARGS+=("--$name" "$OUT/$name.json")
done
echo
"$PY" bench/ratio_table.py "${TABLE_ARGS[@]}"
"$PY" bench/ratio_table.py "${TABLE_ARGS[@]}" --markdown > "$OUT/table.md"
echo
echo "reports: $OUT (table.md, <bench>.json, <bench>.log)"
if ((${#FAILED[@]})); then
  echo "run_all.sh: failed: ${FAILED[*]}" >&2
  exit 1
fi
