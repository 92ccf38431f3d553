"""Each adapter method's training step: against our LoRA, and against PEFT's implementation of it.

    python bench/method_bench.py                      # CUDA if available, else CPU
    python bench/method_bench.py --device cpu --steps 3

GPT-2 S shapes (``--model_card``) with random weights, real E2E training batches (as ``train_bench.py``), AdamW, one
optimizer step = forward, backward and optimizer step of one batch, the loss as ``gpt2_ft.py``
takes it (ours) or transformers' own (PEFT).

- vs LoRA: each method where the papers put it (q and v: LoRA r=4, DoRA r=4, VeRA r=1024,
  FourierFT n=1000) against our LoRA r=4 on q and v.
- vs PEFT: DoRA, VeRA, FourierFT and LoRA on the same whole modules (``attn.c_proj``,
  ``mlp.c_fc``, ``mlp.c_proj``: PEFT cannot adapt slices of the fused ``c_attn``), ours on our
  ``GPT2LMModel`` against PEFT's over ``transformers.GPT2LMHeadModel``. Ours takes the LM head at
  the loss positions only, as ``gpt2_ft.py`` does; part of the difference is that, the rest the layer.
(LoRA+ changes only the optimizer's learning rates: its step is LoRA's.)

Timing: the two systems of a comparison alternate step by step (a busy machine slows both alike);
the median step is reported after ``--warmup`` untimed steps. Peak memory: on CUDA
``max_memory_allocated`` during one step; on the CPU the peak resident set of a fresh process that
runs two steps of that system alone (``train_bench.py``'s way).
"""

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from train_bench import (  # noqa: E402
    device_label,
    load_examples,
    make_batches,
    peak_rss_mib,
    time_steps,
    write_report,
)

from lora_nlg.methods import (  # noqa: E402
    DoRAConfig,
    FourierFTConfig,
    LoRAConfig,
    VeRAConfig,
    apply_adapter,
    count_trainable,
    mark_only_adapter_as_trainable,
)
from lora_nlg.model import GPT2Config, GPT2LMModel  # noqa: E402
from lora_nlg.train.loop import token_loss_sum  # noqa: E402
from lora_nlg.train.optim import build_optimizer  # noqa: E402

QV, WHOLE = ("q", "v"), ("attn.c_proj", "mlp.c_fc", "mlp.c_proj")
CONFIGS = {
    "lora": lambda t: LoRAConfig(r=4, alpha=32, targets=t),
    "dora": lambda t: DoRAConfig(r=4, alpha=32, targets=t),
    "vera": lambda t: VeRAConfig(r=1024, targets=t),
    "fourierft": lambda t: FourierFTConfig(n_frequency=1000, scaling=300.0, targets=t),
}


def peft_config(method: str):
    import peft

    modules = list(WHOLE)
    return {
        "lora": lambda: peft.LoraConfig(r=4, lora_alpha=32, target_modules=modules, fan_in_fan_out=True),
        "dora": lambda: peft.LoraConfig(r=4, lora_alpha=32, target_modules=modules, fan_in_fan_out=True, use_dora=True),
        "vera": lambda: peft.VeraConfig(r=1024, target_modules=modules, fan_in_fan_out=True, save_projection=False),
        "fourierft": lambda: peft.FourierFTConfig(
            n_frequency=1000, scaling=300.0, target_modules=modules, fan_in_fan_out=True
        ),
    }[method]()


class System:
    """``ours:METHOD:qv|whole`` or ``peft:METHOD``: a model, its optimizer and ``step()``."""

    def __init__(self, key: str, device, precision: str, batches, card: str = "gpt2.sm"):
        self.key, self.device, self.batches, self.i = key, device, batches, 0
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        kind, method, *where = key.split(":")
        torch.manual_seed(0)
        if kind == "peft":
            import peft
            import transformers

            shape = GPT2Config.from_card(card)
            hf_config = transformers.GPT2Config(
                n_layer=shape.n_layer,
                n_head=shape.n_head,
                n_embd=shape.n_embd,
                resid_pdrop=0.0,
                embd_pdrop=0.0,
                attn_pdrop=0.0,
            )
            hf = transformers.GPT2LMHeadModel(hf_config)
            self.model = peft.get_peft_model(hf, peft_config(method))
        else:
            self.model = GPT2LMModel(GPT2Config.from_card(card))
            apply_adapter(self.model, CONFIGS[method](QV if where == ["qv"] else WHOLE))
            mark_only_adapter_as_trainable(self.model)
        self.ours = kind == "ours"
        self.model.to(device).train()
        self.optimizer = build_optimizer(
            self.model, 2e-4, 0.01, (0.9, 0.999), 1e-6, True, False, fused=device.type == "cuda"
        )
        self.trainable = count_trainable(self.model)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)

    def step(self):
        batch = {k: v.to(self.device, non_blocking=True) for k, v in self.batches[self.i % len(self.batches)].items()}
        self.i += 1
        if self.ours:
            loss = token_loss_sum(self.model, batch, 0.0, self.autocast) / batch["loss_mask"].sum()
        else:
            mask = torch.cat([batch["loss_mask"][:, :1] * 0, batch["loss_mask"][:, :-1]], dim=1).bool()
            with self.autocast():
                loss = self.model(input_ids=batch["input_ids"], labels=batch["input_ids"].masked_fill(~mask, -100)).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss


def child_peak(key: str, args) -> float:
    cmd = [sys.executable, __file__, "--device", "cpu", "--precision", args.precision, "--model_card", args.model_card]
    cmd += ["--batch_size", str(args.batch_size), "--memory_child", key]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_rss_mib"]


def measure_pair(keys, args, device, batches) -> dict:
    """Median ms/step, peak MiB and trainable count of each system, the two alternating."""
    systems = [System(k, device, args.precision, batches, args.model_card) for k in keys]
    times = {s.key: [] for s in systems}
    for s in systems:
        time_steps(s, args.warmup)
    for _ in range(args.steps):
        for s in systems:
            times[s.key] += time_steps(s, 1)
    out = {}
    for s in systems:
        peak = None
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            time_steps(s, 1)
            peak = torch.cuda.max_memory_allocated(device) / 2**20
        out[s.key] = {"ms_per_step": 1000 * statistics.median(w for w, _ in times[s.key]), "peak_mib": peak}
        out[s.key]["trainable"] = s.trainable
    del systems
    if device.type == "cpu":
        for k in keys:
            out[k]["peak_mib"] = child_peak(k, args)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--precision", default=None, choices=["fp32", "bf16", "fp16"], help="default: bf16 on CUDA, fp32 on the CPU"
    )
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--model_card", default="gpt2.sm", help="the shapes (random weights): gpt2.sm, gpt2.md, ...")
    p.add_argument("--steps", type=int, default=20, help="timed steps per system")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--methods", default=",".join(CONFIGS))
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--memory_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    args.precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    examples, source = load_examples(limit=4000)
    batches, _ = make_batches(examples, args.batch_size, max(args.steps, 8), seed=110)
    if args.memory_child:
        time_steps(System(args.memory_child, device, args.precision, batches, args.model_card), 2)
        print(json.dumps({"peak_rss_mib": peak_rss_mib()}))
        return 0

    methods = args.methods.split(",")
    rows, ratios = {}, {}
    for m in methods:
        if m != "lora":
            rows.update(measure_pair(["ours:lora:qv", f"ours:{m}:qv"], args, device, batches))
            ratios[f"{m} on q,v: step time vs our LoRA on q,v"] = (
                rows[f"ours:{m}:qv"]["ms_per_step"] / rows["ours:lora:qv"]["ms_per_step"]
            )
        rows.update(measure_pair([f"ours:{m}:whole", f"peft:{m}"], args, device, batches))
        ratios[f"{m} on whole modules: speed vs PEFT over transformers (target >= 1)"] = (
            rows[f"peft:{m}"]["ms_per_step"] / rows[f"ours:{m}:whole"]["ms_per_step"]
        )
    device_name = device_label(device)
    print(
        f"device {device_name} | {args.precision} | {args.model_card} random weights | batch {args.batch_size} | data {source}"
    )
    print(f"{'system':<24} {'ms/step':>10} {'peak MiB':>10} {'trainable':>10}")
    for key, r in rows.items():
        peak = "n/a" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
        print(f"{key:<24} {r['ms_per_step']:>10.1f} {peak:>10} {r['trainable']:>10,}")
    write_report(args.json, device_name, args.precision, rows, ratios)
    return 0


if __name__ == "__main__":
    sys.exit(main())
