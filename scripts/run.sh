#!/usr/bin/env bash
# One command per dataset: the LoRA paper's experiment from raw data to a results table.
#
#   bash scripts/run.sh e2e|webnlg|dart [--model_card gpt2.md] [--nproc N] [--seeds K] [options]
#                       [flags for gpt2_ft.py ...]
#
# Steps (each logs the command it runs; the first failure stops the chain and names its step):
#   prepare-data      scripts/create_datasets.sh DATASET          -> DATA_DIR/<dataset>/
#   fetch-gpt2        scripts/download_pretrained_checkpoints.sh  -> pretrained_checkpoints/<hub name>/
#   then for each seed S:
#   train-S           torchrun --nproc_per_node N src/gpt2_ft.py --config CONFIG ...  -> OUT/seed-S/
#   decode-dev-S-C    src/gpt2_beam.py on the dev inputs with each epoch's checkpoint C -> OUT/seed-S/dev/C.jsonl
#   select-S          dev BLEU of each C (lora_nlg.pipeline.model_selection)                  -> OUT/seed-S/selection.json
#   decode-test-S     src/gpt2_beam.py on the test inputs with the chosen checkpoint -> OUT/seed-S/test/predictions.jsonl
#   eval-P-S          eval/eval.sh DATASET ... --protocol P (official, paper)        -> OUT/seed-S/test/eval.P.json
#   results           mean and std over the seeds (lora_nlg.pipeline.results_table)          -> OUT/results.{md,json}
# Every command and its duration goes to OUT/run.log, each step's output to OUT/logs/<step>.log.
#
# Options:
#   --model_card C     gpt2.sm | gpt2.md (default) | gpt2.lg | gpt2.xl | gpt2.tiny (same as --tiny)
#   --nproc N          processes (GPUs) for training and decoding (default 1); the config's
#                      train_batch_size is the global batch: each process gets train_batch_size / N
#   --seeds K          seeds: the config's random_seed (110), +1, ... (default 1); --seed_list "110 7 42"
#   (Paths are relative to the folder run.sh is called from.)
#   --method M         the adapter method: a recipe configs/DATASET.M.yaml (e2e: dora, vera, fourierft,
#                      loraplus, adalora), else gpt2_ft.py's --method M on the dataset's LoRA recipe
#                      (lora, dora, vera, fourierft; peft with --peft_config F); tiny: configs/tiny.yaml
#                      with --method M. The run folder gets _M; selection, decoding and scoring stay the same
#   --config F         training config (default configs/DATASET.yaml; tiny: configs/tiny.yaml)
#   --beam_config F    decoding config (default configs/DATASET.beam.yaml)
#   --out DIR          run folder (default runs/DATASET_CARD)
#   --init_checkpoint P  the backbone (skips fetch-gpt2); tiny: without it the backbone is random
#   --data_dir DIR     prepared data (default data); --data_mirror DIR raw-data mirror
#                      (else $NLG_DATA_MIRROR, else ../shared/data); --no_download: never download
#   --model_mirror DIR pretrained GPT-2 mirror (else $NLG_MODEL_MIRROR, else the Hugging Face Hub)
#   --protocols "P.."  evaluation protocols (default "official paper")
#   --tiny             a CPU run in minutes: gpt2.tiny, configs/tiny.yaml, 400 training pairs
#                      (--limit_train), 2 epochs, 200 validation pairs, 20 dev and 20 test inputs
#   --limit_train N, --limit_valid N   train on / validate on N pairs drawn at random (seeded)
#   --limit_eval N     decode and score only N dev and N test inputs drawn at random (seeded, in
#                      file order; --limit_dev N, --limit_test N: one of them)
#   anything else      goes to gpt2_ft.py after the config (e.g. --max_step 100 --lr 0.001 --resume)
set -euo pipefail
CALLER="$PWD"
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"  # ROOT, the venv, PYTHONPATH, PY
cd "$ROOT"

die() { echo "run.sh: error: $*" >&2; exit 2; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

# ------------------------------------------------------------------------------ arguments
DATASET=""
CARD=""
NPROC=1
SEEDS=1
SEED_LIST=""
CONFIG=""
METHOD=""
BEAM_CONFIG=""
OUT=""
INIT=""
DATA_DIR="data"
DATA_MIRROR=""
MODEL_MIRROR=""
NO_DOWNLOAD=0
PROTOCOLS="official paper"
TINY=0
LIMIT_TRAIN=""
LIMIT_VALID=""
LIMIT_EVAL=""
TRAIN_EXTRA=()
LIMIT_DEV=""
LIMIT_TEST=""
need() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"; }
path() { [[ "$1" == /* ]] && echo "$1" || echo "$CALLER/$1"; }  # paths given are relative to the caller's folder
ARGS=()
for a in "$@"; do  # --option=value is --option value
  case "$a" in
    --model_card=*|--nproc=*|--seeds=*|--seed_list=*|--method=*|--config=*|--beam_config=*|--out=*|--init_checkpoint=*|\
    --data_dir=*|--data_mirror=*|--model_mirror=*|--protocols=*|--limit_*=*) ARGS+=("${a%%=*}" "${a#*=}") ;;
    *) ARGS+=("$a") ;;
  esac
done
set -- ${ARGS[@]+"${ARGS[@]}"}
while (($#)); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    e2e|webnlg|dart) [[ -z "$DATASET" ]] || die "one dataset per run (got $DATASET and $1)"; DATASET="$1" ;;
    --model_card) need "$@"; CARD="$2"; shift ;;
    --nproc) need "$@"; NPROC="$2"; shift ;;
    --seeds) need "$@"; SEEDS="$2"; shift ;;
    --seed_list) need "$@"; SEED_LIST="$2"; shift ;;
    --method) need "$@"; METHOD="$2"; shift ;;
    --config) need "$@"; CONFIG="$(path "$2")"; shift ;;
    --beam_config) need "$@"; BEAM_CONFIG="$(path "$2")"; shift ;;
    --out) need "$@"; OUT="$(path "$2")"; shift ;;
    --init_checkpoint) need "$@"; INIT="$(path "$2")"; shift ;;
    --data_dir) need "$@"; DATA_DIR="$(path "$2")"; shift ;;
    --data_mirror) need "$@"; DATA_MIRROR="$(path "$2")"; shift ;;
    --model_mirror) need "$@"; MODEL_MIRROR="$(path "$2")"; shift ;;
    --no_download) NO_DOWNLOAD=1 ;;
    --protocols) need "$@"; PROTOCOLS="$2"; shift ;;
    --tiny) TINY=1 ;;
    --limit_train) need "$@"; LIMIT_TRAIN="$2"; shift ;;
    --limit_valid) need "$@"; LIMIT_VALID="$2"; shift ;;
    --limit_eval) need "$@"; LIMIT_EVAL="$2"; shift ;;
    --limit_dev) need "$@"; LIMIT_DEV="$2"; shift ;;
    --limit_test) need "$@"; LIMIT_TEST="$2"; shift ;;
    --random_seed|--random_seed=*) die "seeds are set by --seeds K or --seed_list \"S1 S2 ...\"" ;;
    --train_data|--train_data=*|--valid_data|--valid_data=*|--work_dir|--work_dir=*)
      die "$1 is set by run.sh (use --data_dir, --limit_train, --limit_valid, --out)" ;;
    *) TRAIN_EXTRA+=("$1") ;;
  esac
  shift
done
[[ -n "$DATASET" ]] || { usage >&2; die "name a dataset: e2e, webnlg or dart"; }
[[ "$CARD" == gpt2.tiny ]] && TINY=1
if ((TINY)); then
  [[ -z "$CARD" || "$CARD" == gpt2.tiny ]] || die "--tiny is gpt2.tiny; it contradicts --model_card $CARD"
  CARD=gpt2.tiny
  CONFIG="${CONFIG:-configs/tiny.yaml}"
  LIMIT_TRAIN="${LIMIT_TRAIN:-400}"
  LIMIT_VALID="${LIMIT_VALID:-200}"
  LIMIT_EVAL="${LIMIT_EVAL:-20}"
  TINY_EPOCHS=2
fi
CARD="${CARD:-gpt2.md}"
# The dataset's folder and the card's Hub folder, from the catalogue (lora_nlg/catalog.py).
CATALOG="$("$PY" -m lora_nlg.catalog "$DATASET" "$CARD" 2>&1)" || die "--model_card $CARD: ${CATALOG#catalog: error: }"
eval "$CATALOG"  # FOLDER, HUB_DIR
if [[ -n "$METHOD" ]]; then  # a recipe of the method for this dataset, else gpt2_ft.py's --method on LoRA's
  if [[ -z "$CONFIG" && -f "configs/$DATASET.$METHOD.yaml" && $TINY == 0 ]]; then
    CONFIG="configs/$DATASET.$METHOD.yaml"
  else
    METHODS="$("$PY" -c 'import typing; from lora_nlg.train.config import Method; print(*typing.get_args(Method))')"
    [[ " $METHODS " == *" $METHOD "* ]] || die "--method $METHOD: no configs/$DATASET.$METHOD.yaml$( ((TINY)) && echo ' (tiny runs use configs/tiny.yaml)'), and gpt2_ft.py's methods are: $METHODS"
    TRAIN_EXTRA=(--method "$METHOD" ${TRAIN_EXTRA[@]+"${TRAIN_EXTRA[@]}"})
  fi
fi
CONFIG="${CONFIG:-configs/$DATASET.yaml}"
BEAM_CONFIG="${BEAM_CONFIG:-configs/$DATASET.beam.yaml}"
OUT="${OUT:-runs/${DATASET}_${CARD#gpt2.}${METHOD:+_$METHOD}}"
[[ -f "$CONFIG" ]] || die "--config $CONFIG: no such file"
[[ -f "$BEAM_CONFIG" ]] || die "--beam_config $BEAM_CONFIG: no such file"
[[ "$NPROC" =~ ^[1-9][0-9]*$ ]] || die "--nproc must be a positive integer, got '$NPROC'"
[[ "$SEEDS" =~ ^[1-9][0-9]*$ ]] || die "--seeds must be a positive integer, got '$SEEDS'"
LIMIT_DEV="${LIMIT_DEV:-$LIMIT_EVAL}"
LIMIT_TEST="${LIMIT_TEST:-$LIMIT_EVAL}"
for n in "$LIMIT_TRAIN" "$LIMIT_VALID" "$LIMIT_DEV" "$LIMIT_TEST"; do
  [[ -z "$n" || "$n" =~ ^[1-9][0-9]*$ ]] || die "--limit_* must be positive integers, got '$n'"
done
for p in $PROTOCOLS; do [[ "$p" == official || "$p" == paper ]] || die "--protocols: '$p' is not official or paper"; done
[[ -z "$INIT" || -e "$INIT" ]] || die "--init_checkpoint $INIT: no such file or folder"

# The config's global batch and first seed (flags given to run.sh win).
CONFIG_VALUES="$("$PY" - "$CONFIG" 2>&1 <<'PYEOF'
import sys
from lora_nlg.cli import load_config_file
from lora_nlg.train.config import TrainConfig as T
try:
    cfg = load_config_file(T, sys.argv[1])  # with its base file's values
except (ValueError, OSError) as e:
    sys.exit(str(e))
print(cfg.get("train_batch_size", T.train_batch_size), cfg.get("random_seed", T.random_seed))
PYEOF
)" || die "$CONFIG_VALUES"  # names the file
read -r GLOBAL_BATCH BASE_SEED <<< "$CONFIG_VALUES"
PER_RANK=()
if [[ " ${TRAIN_EXTRA[*]-} " != *" --train_batch_size "* ]]; then
  ((GLOBAL_BATCH % NPROC == 0)) || die "train_batch_size $GLOBAL_BATCH (the global batch, $CONFIG) is not divisible by --nproc $NPROC; pass --train_batch_size (per process)"
  PER_RANK=(--train_batch_size $((GLOBAL_BATCH / NPROC)))
fi
if ((TINY)); then  # 2 epochs, the linear schedule spanning them (flags given to run.sh come later and win)
  TRAIN_EXTRA=(--max_epoch "$TINY_EPOCHS" --max_step $((TINY_EPOCHS * ((LIMIT_TRAIN + GLOBAL_BATCH - 1) / GLOBAL_BATCH)))
               ${TRAIN_EXTRA[@]+"${TRAIN_EXTRA[@]}"})
fi
if [[ -z "$SEED_LIST" ]]; then
  SEED_LIST="$(seq "$BASE_SEED" $((BASE_SEED + SEEDS - 1)) | tr '\n' ' ')"
fi
for s in $SEED_LIST; do [[ "$s" =~ ^[0-9]+$ ]] || die "--seed_list: '$s' is not a non-negative integer"; done
SEED_LIST="$(echo $SEED_LIST)"

mkdir -p "$OUT/logs"
# One run.sh per run folder: the lock is the kernel's (flock), so it ends with the process that holds
# it however that ends; the file names the holder. Training holds a lock of its own per seed folder.
exec 9>>"$OUT/.lock"
flock -n 9 || die "$OUT is in use by $(cat "$OUT/.lock" 2>/dev/null || echo 'another run.sh'): wait for it, stop it, or use another --out"
PREVIOUS_HOLDER="$(cat "$OUT/.lock")"
printf 'pid %s on %s (started %s)\n' "$$" "${HOSTNAME:-$(uname -n)}" "$(date '+%Y-%m-%dT%H:%M:%S%z')" > "$OUT/.lock"
trap ': > "$OUT/.lock"' EXIT  # a clean end leaves no holder to take over
RUN_START=$SECONDS
PROG=run.sh
# shellcheck source=scripts/steps.sh
source scripts/steps.sh

# Training always runs under torchrun (gloo on the CPU, NCCL on GPUs); one decoding process needs none.
TRAIN_LAUNCH=("$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC")
BEAM_LAUNCH=("$PY")
((NPROC > 1)) && BEAM_LAUNCH=("${TRAIN_LAUNCH[@]}")

[[ -z "$PREVIOUS_HOLDER" ]] || log "warning: took over the lock of $PREVIOUS_HOLDER, which is no longer running"
log "run.sh $DATASET | $CARD${METHOD:+ | method $METHOD} | $NPROC process(es) | seeds $SEED_LIST | config $CONFIG | decoding $BEAM_CONFIG | out $OUT"

# ------------------------------------------------------------------------------ data
PREP=(bash scripts/create_datasets.sh "$DATASET" --data_dir "$DATA_DIR")
[[ -n "$DATA_MIRROR" ]] && PREP+=(--mirror "$DATA_MIRROR")
((NO_DOWNLOAD)) && PREP+=(--no_download)
step prepare-data "${PREP[@]}"
D="$DATA_DIR/$FOLDER"
TRAIN="$D/train.jsonl"; VALID="$D/valid.jsonl"; DEV="$D/valid_unique.jsonl"; TEST="$D/test_unique.jsonl"
# limit NAME VAR N: with N set, the file named by $VAR becomes N of its records drawn at random
# (seeded) into $OUT/data/, by step subset-NAME.
limit() {
  local -n file="$2"
  [[ -n "$3" ]] || return 0
  local subset="$OUT/data/$(basename "$file")"
  step "subset-$1" "$PY" -m lora_nlg.data.subset "$file" "$subset" --sample "$3" --seed 0
  file="$subset"
}
limit train TRAIN "$LIMIT_TRAIN"
limit valid VALID "$LIMIT_VALID"
limit dev DEV "$LIMIT_DEV"
limit test TEST "$LIMIT_TEST"

# ------------------------------------------------------------------------------ backbone
BACKBONE=()
if [[ -n "$INIT" ]]; then
  BACKBONE=(--init_checkpoint "$INIT")
elif [[ "$CARD" != gpt2.tiny ]]; then
  FETCH=(bash scripts/download_pretrained_checkpoints.sh "$CARD" --out pretrained_checkpoints)
  [[ -n "$MODEL_MIRROR" ]] && FETCH+=(--mirror "$MODEL_MIRROR")
  step fetch-gpt2 "${FETCH[@]}"
  BACKBONE=(--init_checkpoint "pretrained_checkpoints/$HUB_DIR")
else
  log "gpt2.tiny without --init_checkpoint: the backbone is random (a pipeline check, not a result);" \
      "checkpoints keep the full model (--save_full) so that decoding needs no backbone"
  BACKBONE=(--save_full)
fi

# ------------------------------------------------------------------------------ seeds
# decodable CKPT: what gpt2_beam.py loads from a checkpoint folder: its adapter, or its full model
# when the backbone is random (--save_full) or there is no adapter (full fine-tuning).
decodable() {
  local full=()
  [[ "${BACKBONE[0]}" == --save_full ]] && full=(--full)
  "$PY" -m lora_nlg.weights.layout decodable "$1" ${full[@]+"${full[@]}"} 2>&1
}
SEED_DIRS=()
for SEED in $SEED_LIST; do
  W="$OUT/seed-$SEED"
  SEED_DIRS+=("$W")
  step "train-$SEED" "${TRAIN_LAUNCH[@]}" src/gpt2_ft.py --config "$CONFIG" --model_card "$CARD" \
      "${BACKBONE[@]}" --train_data "$TRAIN" --valid_data "$VALID" ${PER_RANK[@]+"${PER_RANK[@]}"} \
      ${TRAIN_EXTRA[@]+"${TRAIN_EXTRA[@]}"} --random_seed "$SEED" --work_dir "$W"

  # Candidates: every epoch's checkpoint; the last one too when training stopped inside an epoch
  # (lora_nlg/weights/layout.py knows the folder).
  CANDIDATES=()
  while IFS= read -r name; do [[ -n "$name" ]] && CANDIDATES+=("$name"); done < <("$PY" -m lora_nlg.weights.layout candidates "$W")
  ((${#CANDIDATES[@]})) || fail "select-$SEED" "$W/checkpoints holds no checkpoint to choose from"
  SCORED=()
  for C in "${CANDIDATES[@]}"; do
    CK="$(decodable "$W/checkpoints/$C")" || fail "decode-dev-$SEED-$C" "$CK"
    step "decode-dev-$SEED-$C" "${BEAM_LAUNCH[@]}" src/gpt2_beam.py --config "$BEAM_CONFIG" --data "$DEV" \
        --init_checkpoint "$CK" --work_dir "$W/dev" --output_file "$C.jsonl"
    SCORED+=("$C=$W/dev/$C.jsonl")
  done
  step "select-$SEED" "$PY" -m lora_nlg.pipeline.model_selection --dataset "$DATASET" --references "$DEV" \
      --out "$W/selection.json" "${SCORED[@]}"
  CHOSEN="$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["chosen"])' "$W/selection.json")"
  CK="$(decodable "$W/checkpoints/$CHOSEN")" || fail "decode-test-$SEED" "$CK"
  log "seed $SEED: chose $CHOSEN by dev BLEU"
  step "decode-test-$SEED" "${BEAM_LAUNCH[@]}" src/gpt2_beam.py --config "$BEAM_CONFIG" --data "$TEST" \
      --init_checkpoint "$CK" --work_dir "$W/test" --output_file predictions.jsonl
  for P in $PROTOCOLS; do
    step "eval-$P-$SEED" bash eval/eval.sh "$DATASET" "$W/test/predictions.jsonl" "$TEST" \
        --protocol "$P" --json "$W/test/eval.$P.json" --data-dir "$DATA_DIR"
  done
done

step results "$PY" -m lora_nlg.pipeline.results_table --dataset "$DATASET" --model_card "$CARD" --out_dir "$OUT" "${SEED_DIRS[@]}"
log "done in $((SECONDS - RUN_START)) s: $OUT/results.md, $OUT/results.json"
