"""Training speed: our LoRA step against transformers + PEFT and against upstream's method.

    python bench/train_bench.py                      # CUDA if available, else CPU
    python bench/train_bench.py --device cpu --steps 4 --seed_steps 1

GPT-2 S shapes with random weights, real E2E training batches (``data/e2e/train.jsonl``, or the
mirror's ``e2e/trainset.csv.xz`` encoded on the fly), r=4 on q and v, alpha 32, LoRA dropout 0.1,
AdamW; one optimizer step = forward, backward and optimizer step of one batch.

- ours: ``lora_nlg`` as ``gpt2_ft.py`` trains: batches from ``BucketBatchSampler`` padded to
  their own longest sequence, the LM head only at completion tokens (``token_loss_sum``).
- peft: ``transformers.GPT2LMHeadModel`` (dropout off) + PEFT LoRA on ``c_attn`` (PEFT cannot put
  LoRA on slices of the fused layer: q, k and v all get it), the same batches, HF's own loss
  (full-vocabulary logits at every position, labels -100 outside the completion).
- ours+compile (``--compile``): ours with the transformer body compiled (``gpt2_ft.py --compile``).
- seed: upstream's method on our model: every sequence padded to 512 tokens and full-vocabulary
  logits at every position, loss masked afterwards. (Upstream's own LoRA layer, a grouped conv1d
  that rebuilds delta-W on every call, would be slower still.)

Timing: ours and peft alternate step by step so that a busy machine slows them alike; upstream
method runs after them; the median step time is reported, after ``--warmup`` untimed steps.
Peak memory: ``torch.cuda.max_memory_allocated`` during one step on CUDA; on the CPU the peak
resident set (VmHWM) of a fresh child process running two steps of that method alone.
On the CPU the table also gives process CPU time per step: on a shared machine wall time
depends on the neighbours, CPU time on the work.
GFLOP/step: matrix-multiply and attention FLOPs of forward plus backward
(``torch.utils.flop_counter``), counted over the same first ``FLOP_BATCHES`` batches for every
method. Their ratio is the speed-up a compute-bound device (a CPU at full load) can give at most
without overhead savings; on a GPU at these small shapes per-operation overhead dominates instead.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from lora_nlg.data.batching import BucketBatchSampler, FTDataset, collate  # noqa: E402
from lora_nlg.data.files import read_encoded  # noqa: E402
from lora_nlg.methods import LoRAConfig, apply_adapter, mark_only_adapter_as_trainable  # noqa: E402
from lora_nlg.model import GPT2Config, GPT2LMModel  # noqa: E402
from lora_nlg.train.loop import token_loss_sum  # noqa: E402
from lora_nlg.train.optim import build_optimizer  # noqa: E402

SEED_PAD_TO = 512
FLOP_BATCHES = 2
METHODS = ("ours", "peft", "seed")  # and "ours+compile" with --compile


def load_examples(limit: int):
    path = REPO / "data" / "e2e" / "train.jsonl"
    if path.is_file():
        return read_encoded(path)[:limit] if limit else read_encoded(path), str(path)
    from lora_nlg.data import raw as D
    from lora_nlg.data.prepare import encode_pairs
    from lora_nlg.data.sources import default_mirror
    from lora_nlg.data.tokenizer import GPT2Tokenizer

    source = default_mirror() / "e2e" / "trainset.csv.xz"
    pairs = D.read_e2e_csv(source)
    pairs = pairs[:limit] if limit else pairs
    return encode_pairs(GPT2Tokenizer.from_dir(), pairs)[0], str(source) + " (encoded here)"


def make_batches(examples, batch_size: int, n: int, seed: int):
    dataset = FTDataset(examples, SEED_PAD_TO)
    sampler = BucketBatchSampler(dataset.lengths(), batch_size, seed=seed)
    lengths = dataset.lengths()
    batches, tokens = [], []
    for indices in sampler:
        batches.append(collate([dataset[i] for i in indices]))
        tokens.append(sum(lengths[i] for i in indices))
        if len(batches) == n:
            break
    return batches, tokens


def pad_to(batch, length: int):
    B, T = batch["input_ids"].shape
    return {k: F.pad(v, (0, length - T)) for k, v in batch.items()}


class Method:
    """A model, an optimizer and a ``step(batch)`` for one way of training."""

    def __init__(self, name: str, device: torch.device, precision: str, batches):
        self.name, self.device, self.batches = name, device, batches
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        torch.manual_seed(0)
        if name == "peft":
            self.model = self._peft_model()
        else:
            self.model = GPT2LMModel(GPT2Config.from_card("gpt2.sm"))
            apply_adapter(self.model, LoRAConfig(r=4, alpha=32, dropout=0.1, targets=("q", "v")))
            mark_only_adapter_as_trainable(self.model)
        self.model.to(device).train()
        if name == "ours+compile":  # what gpt2_ft.py --compile does
            self.model.transformer.compile(dynamic=True)
        cuda = device.type == "cuda"
        self.optimizer = build_optimizer(
            self.model,
            lr=2e-4,
            weight_decay=0.01,
            betas=(0.9, 0.999),
            eps=1e-6,
            correct_bias=True,
            no_decay_bias=False,
            fused=cuda,
        )
        self.trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.i = 0

    @staticmethod
    def _peft_model():
        import peft
        import transformers

        config = transformers.GPT2Config(
            n_layer=12, n_head=12, n_embd=768, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0
        )
        model = transformers.GPT2LMHeadModel(config)
        lora = peft.LoraConfig(
            r=4, lora_alpha=32, lora_dropout=0.1, target_modules=["c_attn"], fan_in_fan_out=True, bias="none"
        )
        return peft.get_peft_model(model, lora)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)

    def step(self):
        batch = self.batches[self.i % len(self.batches)]
        self.i += 1
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        if self.name.startswith("ours"):
            loss = token_loss_sum(self.model, batch, 0.1, self._autocast) / batch["loss_mask"].sum()
        elif self.name == "peft":
            # HF shifts labels itself: labels[t] = input[t] where input[t] is a completion token.
            mask = torch.cat([batch["loss_mask"][:, -1:] * 0, batch["loss_mask"][:, :-1]], dim=1).bool()
            labels = batch["input_ids"].masked_fill(~mask, -100)
            with self._autocast():
                loss = self.model(input_ids=batch["input_ids"], labels=labels).loss
        else:
            batch = pad_to(batch, SEED_PAD_TO)
            with self._autocast():
                logits = self.model(batch["input_ids"])  # (B, 512, V): every position
            token_loss = F.cross_entropy(
                logits.float().flatten(0, 1), batch["labels"].flatten(), label_smoothing=0.1, reduction="none"
            )
            mask = batch["loss_mask"].flatten()
            loss = (token_loss * mask).sum() / mask.sum()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(method: Method, n: int):
    """[(wall seconds, process CPU seconds)] of ``n`` steps."""
    out = []
    for _ in range(n):
        sync(method.device)
        t, c = time.perf_counter(), time.process_time()
        loss = method.step()
        loss.item()
        sync(method.device)
        out.append((time.perf_counter() - t, time.process_time() - c))
    return out


def gflop_per_step(method: Method) -> float:
    """Mean counted GFLOP of one optimizer step over the first ``FLOP_BATCHES`` batches."""
    from torch.utils.flop_counter import FlopCounterMode

    method.i, total = 0, 0
    for _ in range(FLOP_BATCHES):
        with FlopCounterMode(display=False) as counter:
            method.step()
        total += counter.get_total_flops()
    return total / FLOP_BATCHES / 1e9


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM: unlike ru_maxrss, not inherited across exec)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_peak_rss(method: str, args) -> float:
    """Peak RSS (MiB) of a fresh process that runs two steps of ``method`` on the CPU."""
    cmd = [
        sys.executable,
        __file__,
        "--device",
        "cpu",
        "--precision",
        args.precision,
        "--batch_size",
        str(args.batch_size),
        "--memory_child",
        method,
        "--warmup",
        "0",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_rss_mib"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--precision",
        default=None,
        choices=["fp32", "bf16", "fp16"],
        help="autocast precision (default: bf16 on CUDA, fp32 on the CPU)",
    )
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--steps", type=int, default=30, help="timed steps per method (ours, peft)")
    p.add_argument("--seed_steps", type=int, default=None, help="timed steps of upstream's method (default: --steps)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument(
        "--compile",
        action="store_true",
        help="add ours+compile: the transformer body through torch.compile (gpt2_ft.py --compile)",
    )
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--memory_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    args.precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True

    n_batches = max(args.steps, 8)
    examples, source = load_examples(limit=4000)
    batches, batch_tokens = make_batches(examples, args.batch_size, n_batches, seed=110)

    if args.memory_child:
        m = Method(args.memory_child, device, args.precision, batches)
        time_steps(m, 2)
        print(json.dumps({"peak_rss_mib": peak_rss_mib()}))
        return 0

    names = args.methods.split(",") + (["ours+compile"] if args.compile else [])
    methods = [Method(name, device, args.precision, batches) for name in names]
    steps = {m.name: (args.seed_steps or args.steps) if m.name == "seed" else args.steps for m in methods}
    times = {m.name: [] for m in methods}
    peak = {}
    # ours and peft alternate step by step (a busy machine slows both alike); upstream's method,
    # whose 512-token batches take several times the memory, runs on its own afterwards.
    paired = [m for m in methods if m.name != "seed"]
    for m in methods:
        time_steps(m, args.warmup)
    for _ in range(args.steps):
        for m in paired:
            times[m.name] += time_steps(m, 1)
    for m in methods:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            time_steps(m, 1)
            peak[m.name] = torch.cuda.max_memory_allocated(device) / 2**20
    for m in methods:
        if m.name == "seed":
            times[m.name] += time_steps(m, steps[m.name])
    if device.type == "cpu":
        peak = {m.name: child_peak_rss(m.name, args) for m in methods}
    gflop = {m.name: gflop_per_step(m) for m in methods}

    # Real (non-padding) tokens and examples per batch are the same for every method.
    real_tokens = statistics.mean(batch_tokens)
    lengths = [len(c) + len(t) for c, t in examples]
    rows = {}
    for m in methods:
        t = statistics.median(w for w, _ in times[m.name])
        cpu = statistics.median(c for _, c in times[m.name])
        rows[m.name] = dict(
            ms_per_step=1000 * t,
            cpu_ms_per_step=1000 * cpu,
            tokens_per_s=real_tokens / t,
            examples_per_s=args.batch_size / t,
            peak_mib=peak.get(m.name),
            gflop_per_step=gflop[m.name],
            trainable=m.trainable,
            steps=len(times[m.name]),
        )
    device_name = device_label(device)
    print(
        f"device {device_name} | {args.precision} | GPT-2 S random weights | batch {args.batch_size} | "
        f"data {source} (mean length {statistics.mean(lengths):.1f} tokens) | torch {torch.__version__}"
    )
    print(
        f"{'method':<12} {'ms/step':>10} {'CPU ms/step':>11} {'tokens/s':>10} {'examples/s':>11} {'peak MiB':>10} "
        f"{'GFLOP/step':>10} {'trainable':>10} {'steps':>6}"
    )
    for name, r in rows.items():
        peak_s = f"{r['peak_mib']:.0f}" if r["peak_mib"] is not None else "n/a"
        print(
            f"{name:<12} {r['ms_per_step']:>10.1f} {r['cpu_ms_per_step']:>11.1f} {r['tokens_per_s']:>10.0f} "
            f"{r['examples_per_s']:>11.1f} {peak_s:>10} {r['gflop_per_step']:>10.1f} {r['trainable']:>10,} "
            f"{r['steps']:>6}"
        )
    ratios = {}
    if "ours+compile" in rows and "peft" in rows:
        ratios["ours+compile speed vs transformers+PEFT (per step)"] = (
            rows["peft"]["ms_per_step"] / rows["ours+compile"]["ms_per_step"]
        )
    if "ours" in rows and "peft" in rows:
        ratios["speed vs transformers+PEFT (per step, target >= 1.3)"] = (
            rows["peft"]["ms_per_step"] / rows["ours"]["ms_per_step"]
        )
        if device.type == "cpu":  # a busy machine skews wall time; CPU time counts the work done
            ratios["CPU time vs transformers+PEFT (per step)"] = (
                rows["peft"]["cpu_ms_per_step"] / rows["ours"]["cpu_ms_per_step"]
            )
        ratios["FLOPs of transformers+PEFT / ours (compute-bound ceiling)"] = (
            rows["peft"]["gflop_per_step"] / rows["ours"]["gflop_per_step"]
        )
    if "ours" in rows and "seed" in rows:
        ratios["examples/s vs seed method (target >= 4)"] = (
            rows["ours"]["examples_per_s"] / rows["seed"]["examples_per_s"]
        )
    write_report(args.json, device_name, args.precision, rows, ratios)
    return 0


def device_label(device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"


def write_report(path, device_name: str, precision: str, rows: dict, ratios: dict) -> None:
    """Print the ratios; with ``path``, write the report run_all.sh's table reads."""
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}x")
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"device": device_name, "precision": precision, "rows": rows, "ratios": ratios}, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
