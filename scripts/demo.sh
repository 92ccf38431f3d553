#!/usr/bin/env bash
# The whole chain, offline, on the CPU, in minutes: a stand-in for pretrained GPT-2, LoRA fine-tuning
# on E2E with the paper's recipe scaled down, beam search on a slice of the test set, the official-
# parity E2E metric table, and a plot of training and validation loss.
#
#   bash scripts/demo.sh [--quick] [--out demo_out] [--data_dir data] [--data_mirror DIR]
#   DEMO_QUICK=1 bash scripts/demo.sh            (the same as --quick)
#
# No pretrained GPT-2 is available offline, so:
#   1. prepare-data  E2E from the raw files of the data mirror (scripts/create_datasets.sh, no download)
#   2. pretrain      the stand-in for pretrained GPT-2: a tiny GPT-2 (4 layers, 4 heads, 128 wide,
#                    GPT-2's vocabulary, 7.4M parameters) trained from random weights on the E2E
#                    training pairs as plain text: every parameter (--lora_dim 0), loss on every
#                    token (--obj jlm), 300 steps of 8 pairs
#   3. run.sh        scripts/run.sh e2e --tiny --init_checkpoint <that model>: LoRA r=4 on q and v,
#                    alpha 32, LoRA dropout 0.1, label smoothing 0.1, AdamW (bias-corrected, beta2
#                    0.999, weight decay 0.01), linear schedule with warmup, 2 epochs on 1,600
#                    training pairs drawn at random (a larger learning rate than the paper's);
#                    each epoch's checkpoint decodes 24 dev inputs and the better dev BLEU picks
#                    one, which decodes 60 test inputs drawn at random with the paper's beam search
#                    (beam 10, length penalty 0.9, no-repeat-ngram 4, stop at "\n\n");
#                    eval/eval.sh scores them (official E2E scorer parity)
#   4. plot          training and validation loss of both stages -> OUT/loss.png
# --quick: 30 pretraining steps, 2 x 10 LoRA steps, 4 dev and 6 test inputs (numbers meaningless).
# Writes OUT/metrics.json (eval/eval.sh's report: BLEU, NIST, METEOR, ROUGE_L, CIDEr), OUT/loss.png,
# OUT/run.log (every command), OUT/pretrain/ and OUT/run/ (the two training runs and their outputs).
# How the numbers arise: in step 2 the backbone already reads the E2E training pairs (MR followed
# by text, loss on every token), so much of the task is learned before LoRA starts; a 7M-parameter
# model trained for minutes is then scored on a few test inputs. They show that the chain works,
# not what LoRA on GPT-2 M reaches (scripts/run.sh e2e on a GPU does that).
set -euo pipefail
CALLER="$PWD"
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"  # ROOT, the venv, PYTHONPATH, PY
cd "$ROOT"
# One thread per process unless set: on 2 cores shared with anything else, torch's two threads wait
# on each other at every operation and a tiny model's step takes 3 to 6 times as long.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

die() { echo "demo.sh: error: $*" >&2; exit 2; }
path() { [[ "$1" == /* ]] && echo "$1" || echo "$CALLER/$1"; }
need() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"; }

QUICK="${DEMO_QUICK:-0}"
OUT="$ROOT/demo_out"
DATA_DIR="$ROOT/data"
MIRROR=()
while (($#)); do
  case "$1" in
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    --quick) QUICK=1 ;;
    --out) need "$@"; OUT="$(path "$2")"; shift ;;
    --data_dir) need "$@"; DATA_DIR="$(path "$2")"; shift ;;
    --data_mirror) need "$@"; MIRROR=(--data_mirror "$(path "$2")"); shift ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done

# Sizes: the full demo takes about 5 to 8 minutes on 2 cores; --quick about 1 to 2 (numbers meaningless).
if [[ "$QUICK" == 1 ]]; then
  PRE_STEPS=30; PRE_VALID=50; LORA_TRAIN=80; LORA_VALID=50; N_DEV=4; N_TEST=6
else
  PRE_STEPS=300; PRE_VALID=200; LORA_TRAIN=1600; LORA_VALID=200; N_DEV=24; N_TEST=60
fi

mkdir -p "$OUT"
: > "$OUT/run.log"
PROG=demo.sh
# shellcheck source=scripts/steps.sh
source scripts/steps.sh
START=$SECONDS
log "demo: $([[ "$QUICK" == 1 ]] && echo quick || echo full) mode, output $OUT"

RAW=(bash scripts/create_datasets.sh e2e --data_dir "$DATA_DIR" --no_download)
[[ ${#MIRROR[@]} -gt 0 ]] && RAW+=(--mirror "${MIRROR[1]}")
step prepare-data "${RAW[@]}"

# 2. The stand-in for pretraining: full training of a random gpt2.tiny, loss on every token.
standin_backbone "$DATA_DIR" "$PRE_STEPS" "$PRE_VALID"  # sets BACKBONE (scripts/steps.sh)

# 3. LoRA fine-tuning, dev-BLEU epoch choice, test decoding and evaluation: run.sh's tiny chain.
rm -rf "$OUT/run"
step run.sh bash scripts/run.sh e2e --tiny --init_checkpoint "$BACKBONE" --out "$OUT/run" \
    --data_dir "$DATA_DIR" ${MIRROR[@]+"${MIRROR[@]}"} --no_download --protocols official \
    --limit_train "$LORA_TRAIN" --limit_valid "$LORA_VALID" --limit_dev "$N_DEV" --limit_test "$N_TEST" \
    --lr 0.004 --warmup_step $((LORA_TRAIN / 80)) --log_interval $((LORA_TRAIN / 160 > 0 ? LORA_TRAIN / 160 : 1)) \
    --eval_interval $((LORA_TRAIN / 32)) --save_interval 100000 --tensorboard false
REPORT="$(ls "$OUT"/run/seed-*/test/eval.official.json 2>/dev/null | head -n 1)"
[[ -n "$REPORT" ]] || fail run.sh "no evaluation report under $OUT/run"
cp "$REPORT" "$OUT/metrics.json.tmp" && mv "$OUT/metrics.json.tmp" "$OUT/metrics.json"  # never half-written

# 4. The loss curves of both stages.
SEED_DIR="$(dirname "$(dirname "$REPORT")")"
step plot "$PY" -m lora_nlg.pipeline.loss_plot --out "$OUT/loss.png" \
    "stand-in pretraining (full, joint LM)=$OUT/pretrain" "LoRA fine-tuning on E2E=$SEED_DIR"

echo
echo "=== E2E test metrics, $N_TEST test inputs drawn at random (eval/eval.sh, official E2E scorer parity) ==="
"$PY" - "$OUT/metrics.json" <<'PYEOF'
import json, sys
from lora_nlg.metrics.report import format_table
print(format_table(json.load(open(sys.argv[1], encoding="utf-8"))))
PYEOF
echo
"$PY" - "$SEED_DIR/selection.json" <<'PYEOF'
import json, sys
from lora_nlg.pipeline.model_selection import bleu_0_100
d = json.load(open(sys.argv[1], encoding="utf-8"))
scores = ", ".join(f"{k} {bleu_0_100('e2e', v):.2f}" for k, v in d["scores"].items())
print(f"chosen checkpoint: {d['chosen']} (dev BLEU on 0-100: {scores}; the table above is on eval.sh's scales)")
for name, warning in d.get("warnings", {}).items():
    print(f"WARNING: {name}: {warning}")
PYEOF
echo "predictions: $SEED_DIR/test/predictions.jsonl"
echo "metrics:     $OUT/metrics.json"
echo "loss plot:   $OUT/loss.png"
log "demo done in $((SECONDS - START)) s"
