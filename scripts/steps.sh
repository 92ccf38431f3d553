# Logged steps for scripts/run.sh, demo.sh and method_study.sh (sourced, not run). Before sourcing set
#   PROG  the script's name, for messages
#   OUT   its output folder: every step's command and duration go to OUT/run.log, its output to
#         OUT/logs/<step>.log (and to the terminal)
# step NAME COMMAND... runs COMMAND; if it fails, the script stops with the step's name, its exit
# status and where its output is.

quote() { local out="" a; for a in "$@"; do out+="$(printf '%q' "$a") "; done; echo "${out% }"; }

log() { echo "[$PROG $(date +%H:%M:%S)] $*" | tee -a "$OUT/run.log" >&2; }

step() {
  local name="$1"; shift
  local start=$SECONDS rc=0
  mkdir -p "$OUT/logs"
  log "step $name: $(quote "$@")"
  "$@" 2>&1 | tee "$OUT/logs/$name.log" || rc=$?
  if ((rc != 0)); then
    log "FAILED step $name (exit $rc) after $((SECONDS - start)) s; its output: $OUT/logs/$name.log"
    echo "$PROG: step '$name' failed (exit $rc): $(quote "$@")" >&2
    exit "$rc"
  fi
  log "step $name done in $((SECONDS - start)) s"
}

# fail NAME MESSAGE: stop with the step's name when a step's result is unusable.
fail() {
  log "FAILED step $1: $2"
  echo "$PROG: step '$1' failed: $2" >&2
  exit 1
}

# standin_backbone DATA_DIR STEPS N_VALID: the stand-in for pretrained GPT-2 of demo.sh and
# method_study.sh: a random gpt2.tiny trained on every parameter (--lora_dim 0), loss on every token
# (--obj jlm), on DATA_DIR/e2e's training pairs as text for STEPS steps of 8, validated on N_VALID
# pairs, in OUT/pretrain/. Sets BACKBONE to its model folder.
standin_backbone() {
  local data_dir="$1" steps="$2" n_valid="$3"
  step subset-pretrain-valid "$PY" -m lora_nlg.data.subset "$data_dir/e2e/valid.jsonl" "$OUT/pretrain_valid.jsonl" \
      --sample "$n_valid" --seed 1
  step pretrain "$PY" src/gpt2_ft.py --config configs/tiny.yaml --train_data "$data_dir/e2e/train.jsonl" \
      --valid_data "$OUT/pretrain_valid.jsonl" --lora_dim 0 --lora_dropout 0 --label_smooth 0 --obj jlm \
      --lr 0.003 --warmup_step $((steps / 10)) --max_step "$steps" \
      --eval_interval $((steps / 5)) --save_interval "$steps" --log_interval $((steps / 30 > 0 ? steps / 30 : 1)) \
      --tensorboard false --work_dir "$OUT/pretrain" --overwrite
  BACKBONE="$OUT/pretrain/checkpoints/step-$steps/model"
  [[ -f "$BACKBONE/config.json" ]] || fail pretrain "no model in $BACKBONE"
}
