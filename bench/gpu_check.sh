#!/usr/bin/env bash
# GPU check of training: a bf16 and an fp16 few-step run, a 1-GPU NCCL torchrun run, and the
# training benchmark, on GPT-2 S with random weights; then every adapter method (DoRA, VeRA,
# FourierFT, LoRA+, PEFT's AdaLoRA) for a few bf16 steps on GPT-2 M shapes and the methods'
# benchmark at GPT-2 M shapes. Prints what each run reported.
#
#   bash bench/gpu_check.sh [OUT_DIR]          (default: $OUT, else /tmp/gpu_check)
#
# Data: data/e2e/{train,valid}.jsonl (bash scripts/create_datasets.sh e2e), else the E2E files are
# encoded from the data mirror ($NLG_DATA_MIRROR or ../shared/data) into OUT_DIR. Environment:
# PYTHON (default python), STEPS (training steps per run, default 30), BENCH=0 skips the benchmarks,
# COMPILE=1 adds a --compile run, METHODS=0 skips the methods.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"  # ROOT, the venv, PYTHONPATH, PY
cd "$ROOT"
OUT_DIR="${1:-${OUT:-/tmp/gpu_check}}"
STEPS="${STEPS:-30}"
mkdir -p "$OUT_DIR"

"$PY" - <<'PYEOF'
import torch
assert torch.cuda.is_available(), "no CUDA device visible"
p = torch.cuda.get_device_properties(0)
print(f"torch {torch.__version__} | CUDA {torch.version.cuda} | {p.name} | {p.total_memory / 2**30:.0f} GiB"
      f" | bf16 supported: {torch.cuda.is_bf16_supported()} | NCCL {torch.cuda.nccl.version()}")
PYEOF

if [[ -f data/e2e/train.jsonl && -f data/e2e/valid.jsonl ]]; then
  TRAIN=data/e2e/train.jsonl
  head -n 400 data/e2e/valid.jsonl > "$OUT_DIR/valid.jsonl"
else
  echo "data/e2e not prepared: encoding E2E from the data mirror"
  "$PY" - "$OUT_DIR" <<'PYEOF'
import json, sys
from lora_nlg.data import raw as D
from lora_nlg.data.prepare import encode_pairs
from lora_nlg.data.sources import default_mirror
from lora_nlg.data.tokenizer import GPT2Tokenizer
out = sys.argv[1]
mirror = default_mirror()
assert mirror is not None, "no data/e2e and no data mirror: run scripts/create_datasets.sh e2e or set NLG_DATA_MIRROR"
tok = GPT2Tokenizer.from_dir()
for name, csv, n in (("train", "trainset.csv.xz", 4000), ("valid", "devset.csv", 400)):
    pairs = D.read_e2e_csv(mirror / "e2e" / csv)[:n]
    with open(f"{out}/{name}.jsonl", "w") as f:
        for c, t in encode_pairs(tok, pairs)[0]:
            f.write(json.dumps({"context": c, "completion": t}) + "\n")
PYEOF
  TRAIN="$OUT_DIR/train.jsonl"
fi
VALID="$OUT_DIR/valid.jsonl"

# The paper's E2E recipe on GPT-2 S shapes (random weights), short.
COMMON=(--train_data "$TRAIN" --valid_data "$VALID" --model_card gpt2.sm --seq_len 512
        --train_batch_size 8 --valid_batch_size 16 --lr 0.0002 --weight_decay 0.01 --correct_bias
        --adam_beta2 0.999 --warmup_step 5 --max_step "$STEPS" --lora_dim 4 --lora_alpha 32
        --lora_dropout 0.1 --label_smooth 0.1 --log_interval 10 --eval_interval "$STEPS"
        --save_interval "$STEPS" --random_seed 110 --overwrite)

summary() {  # what a run wrote: its last log lines, its checkpoint's description
  local work="$1"
  "$PY" - "$work" <<'PYEOF'
import json, sys
work = sys.argv[1]
records = [json.loads(l) for l in open(f"{work}/log.jsonl")]
train = [r for r in records if r["kind"] == "train"]
valid = [r for r in records if r["kind"] == "valid"]
print(f"  train losses {[round(r['loss'], 3) for r in train]} | tokens/s {[round(r['tokens_per_s']) for r in train]}")
print(f"  ms/step {[round(r['ms_per_step'], 1) for r in train]} | grad norms {[r['grad_norm'] for r in train]}")
print(f"  valid {[(r['step'], round(r['loss'], 4)) for r in valid]}")
last = open(f"{work}/checkpoints/last").read().strip()
d = json.load(open(f"{work}/checkpoints/{last}/checkpoint.json"))
print(f"  checkpoint {last}: step {d['step']}, files {d['files']}, precision {d['config']['precision']}")
PYEOF
}

run() {  # name, command...
  local name="$1"; shift
  echo "=== $name: $*"
  local start=$SECONDS
  if "$@" > "$OUT_DIR/$name.out" 2> "$OUT_DIR/$name.err"; then
    echo "  exit 0 after $((SECONDS - start)) s"
  else
    echo "  FAILED (exit $?) after $((SECONDS - start)) s; last lines of stderr:"; tail -n 30 "$OUT_DIR/$name.err"
    return 0
  fi
  grep -E "process\(es\)|^train " "$OUT_DIR/$name.out" | sed 's/^/  /'
  summary "$OUT_DIR/$name"
}

run bf16 "$PY" src/gpt2_ft.py "${COMMON[@]}" --precision bf16 --work_dir "$OUT_DIR/bf16"
run fp16 "$PY" src/gpt2_ft.py "${COMMON[@]}" --fp16 --work_dir "$OUT_DIR/fp16"
run fp32 "$PY" src/gpt2_ft.py "${COMMON[@]}" --precision fp32 --work_dir "$OUT_DIR/fp32"
run torchrun_nccl "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 src/gpt2_ft.py \
    "${COMMON[@]}" --precision bf16 --work_dir "$OUT_DIR/torchrun_nccl"
if [[ "${COMPILE:-0}" == 1 ]]; then
  run compile "$PY" src/gpt2_ft.py "${COMMON[@]}" --precision bf16 --compile --work_dir "$OUT_DIR/compile"
fi
if [[ "${BENCH:-1}" != 0 ]]; then
  echo "=== benchmark (bf16)"
  "$PY" bench/train_bench.py --device cuda --precision bf16 --steps 30 --compile --json "$OUT_DIR/bench_bf16.json"
  echo "=== benchmark (fp32, TF32 matmuls)"
  "$PY" bench/train_bench.py --device cuda --precision fp32 --steps 30 --json "$OUT_DIR/bench_fp32.json"
fi
if [[ "${METHODS:-1}" != 0 ]]; then
  MCOMMON=("${COMMON[@]}" --model_card gpt2.md --precision bf16 --max_step 10 --eval_interval 10 --save_interval 10)
  run method_dora "$PY" src/gpt2_ft.py "${MCOMMON[@]}" --method dora --work_dir "$OUT_DIR/method_dora"
  run method_vera "$PY" src/gpt2_ft.py "${MCOMMON[@]}" --method vera --vera_r 1024 --lr 0.1 --work_dir "$OUT_DIR/method_vera"
  run method_fourierft "$PY" src/gpt2_ft.py "${MCOMMON[@]}" --method fourierft --fourierft_scaling 300 --lr 0.02 \
      --lora_dropout 0 --work_dir "$OUT_DIR/method_fourierft"
  run method_loraplus "$PY" src/gpt2_ft.py "${MCOMMON[@]}" --loraplus_lr_ratio 16 --work_dir "$OUT_DIR/method_loraplus"
  # configs/peft/adalora.json's schedule, shrunk to 10 steps
  echo '{"peft_type": "ADALORA", "target_modules": ["c_attn"], "init_r": 12, "target_r": 8, "lora_alpha": 32,
         "tinit": 2, "tfinal": 3, "deltaT": 1}' > "$OUT_DIR/adalora.json"
  run method_adalora "$PY" src/gpt2_ft.py "${MCOMMON[@]}" --method peft --peft_config "$OUT_DIR/adalora.json" \
      --work_dir "$OUT_DIR/method_adalora"
  if [[ "${BENCH:-1}" != 0 ]]; then
    echo "=== methods benchmark (bf16, GPT-2 M shapes)"
    "$PY" bench/method_bench.py --device cuda --precision bf16 --model_card gpt2.md --steps 20 --json "$OUT_DIR/method_bench.json"
  fi
fi
