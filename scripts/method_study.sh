#!/usr/bin/env bash
# The method study (docs/method_study.md): every adapter method on the demo's stand-in backbone with
# the same data, steps and seed, on the CPU in minutes.
#
#   bash scripts/method_study.sh [--quick] [--out runs/method_study] [--methods "lora dora ..."]
#                                [--backbone DIR] [--data_dir data] [--data_mirror DIR]
#                                [--steps N] [--lr_scale X] [--no_decode]
#
#   1. prepare-data   E2E from the data mirror (scripts/create_datasets.sh, no download)
#   2. pretrain       the demo's stand-in for pretrained GPT-2 (scripts/steps.sh; --backbone DIR: use
#                     that model instead, e.g. demo_out/pretrain/checkpoints/step-300/model)
#   3. for each method M (default: every one of lora_nlg/pipeline/method_study.py's METHODS):
#      train-M        gpt2_ft.py --config configs/tiny.yaml with M's flags and learning rate: 1,600
#                     training pairs drawn at random, 2 epochs of 200 steps, seed 110, no label
#                     smoothing (the stand-in already fits the pairs' distribution: smoothing would make
#                     the validation loss reward learning nothing), validation on 200 pairs; its wall
#                     time and peak memory recorded (OUT/M/usage.json)
#      decode-M       gpt2_beam.py (configs/e2e.beam.yaml: beam 10) on 48 dev inputs drawn at random
#   4. report         OUT/results.md, results.json, method_study.png: trained parameters, ms per step,
#                     peak memory, last validation loss, dev BLEU
# --quick: 30 pretraining steps, 2 x 10 steps per method, 4 dev inputs (numbers meaningless).
# --steps N: N steps per method instead (the linear schedule spans them); --lr_scale X: every
# method at X times its learning rate; --no_decode: no dev BLEU. The learning rates' probe
# (docs/method_study.md): --steps 100 --no_decode --lr_scale 0.5, 1 and 2, each into its own --out.
set -euo pipefail
CALLER="$PWD"
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"  # ROOT, the venv, PYTHONPATH, PY
cd "$ROOT"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # as demo.sh: one thread per process on 2 shared cores

die() { echo "method_study.sh: error: $*" >&2; exit 2; }
path() { [[ "$1" == /* ]] && echo "$1" || echo "$CALLER/$1"; }
need() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"; }

QUICK=0
OUT="$ROOT/runs/method_study"
DATA_DIR="$ROOT/data"
MIRROR=()
BACKBONE=""
METHODS=""
STEPS=""
LR_SCALE=1
DECODE=1
while (($#)); do
  case "$1" in
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    --quick) QUICK=1 ;;
    --out) need "$@"; OUT="$(path "$2")"; shift ;;
    --methods) need "$@"; METHODS="$2"; shift ;;
    --backbone) need "$@"; BACKBONE="$(path "$2")"; shift ;;
    --data_dir) need "$@"; DATA_DIR="$(path "$2")"; shift ;;
    --data_mirror) need "$@"; MIRROR=(--mirror "$(path "$2")"); shift ;;
    --steps) need "$@"; STEPS="$2"; shift ;;
    --lr_scale) need "$@"; LR_SCALE="$2"; shift ;;
    --no_decode) DECODE=0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done
[[ -z "$BACKBONE" || -f "$BACKBONE/config.json" ]] || die "--backbone $BACKBONE: no config.json there (a model folder)"
METHODS="${METHODS:-$("$PY" -c 'from lora_nlg.pipeline.method_study import METHODS; print(*METHODS)')}"
if ((QUICK)); then
  PRE_STEPS=30; PRE_VALID=50; TRAIN=80; VALID=50; N_DEV=4
else
  PRE_STEPS=300; PRE_VALID=200; TRAIN=1600; VALID=200; N_DEV=48
fi
[[ -z "$STEPS" || "$STEPS" =~ ^[1-9][0-9]*$ ]] || die "--steps must be a positive integer, got '$STEPS'"
[[ "$LR_SCALE" =~ ^[0-9]*\.?[0-9]+$ ]] || die "--lr_scale must be a positive number, got '$LR_SCALE'"
STEPS="${STEPS:-$((2 * TRAIN / 8))}"
for M in $METHODS; do
  "$PY" -m lora_nlg.pipeline.method_study flags "$M" "$OUT" "$STEPS" "$LR_SCALE" > /dev/null 2>&1 || die "--methods: unknown method '$M'"
done

mkdir -p "$OUT"
: > "$OUT/run.log"
PROG=method_study.sh
# shellcheck source=scripts/steps.sh
source scripts/steps.sh
START=$SECONDS
log "method study: $([[ "$QUICK" == 1 ]] && echo quick || echo full) mode, methods $METHODS, output $OUT"

step prepare-data bash scripts/create_datasets.sh e2e --data_dir "$DATA_DIR" --no_download ${MIRROR[@]+"${MIRROR[@]}"}
[[ -n "$BACKBONE" ]] || standin_backbone "$DATA_DIR" "$PRE_STEPS" "$PRE_VALID"  # sets BACKBONE
step subset-train "$PY" -m lora_nlg.data.subset "$DATA_DIR/e2e/train.jsonl" "$OUT/train.jsonl" --sample "$TRAIN" --seed 0
step subset-valid "$PY" -m lora_nlg.data.subset "$DATA_DIR/e2e/valid.jsonl" "$OUT/valid.jsonl" --sample "$VALID" --seed 0
step subset-dev "$PY" -m lora_nlg.data.subset "$DATA_DIR/e2e/valid_unique.jsonl" "$OUT/dev.jsonl" --sample "$N_DEV" --seed 0

for M in $METHODS; do
  read -r -a FLAGS <<< "$("$PY" -m lora_nlg.pipeline.method_study flags "$M" "$OUT" "$STEPS" "$LR_SCALE")"
  rm -rf "${OUT:?}/$M"
  mkdir -p "$OUT/$M"
  step "train-$M" "$PY" -m lora_nlg.pipeline.method_study measure "$OUT/$M/usage.json" -- \
      "$PY" src/gpt2_ft.py --config configs/tiny.yaml --init_checkpoint "$BACKBONE" \
      --train_data "$OUT/train.jsonl" --valid_data "$OUT/valid.jsonl" --label_smooth 0 --warmup_step $((STEPS / 40)) \
      --max_epoch 2 --max_step "$STEPS" --eval_interval $((STEPS / 4)) --save_interval "$STEPS" \
      --log_interval $((STEPS / 20 > 0 ? STEPS / 20 : 1)) --random_seed 110 --tensorboard false --work_dir "$OUT/$M" \
      ${FLAGS[@]+"${FLAGS[@]}"}
  ((DECODE)) || continue
  CK="$("$PY" -m lora_nlg.weights.layout decodable "$OUT/$M/checkpoints/step-$STEPS" 2>&1)" || fail "decode-$M" "$CK"
  step "decode-$M" "$PY" src/gpt2_beam.py --config configs/e2e.beam.yaml --data "$OUT/dev.jsonl" \
      --init_checkpoint "$CK" --work_dir "$OUT/$M" --output_file dev.jsonl
done

step report "$PY" -m lora_nlg.pipeline.method_study report "$OUT" "$OUT/dev.jsonl" $METHODS
log "method study done in $((SECONDS - START)) s: $OUT/results.md, $OUT/method_study.png"
