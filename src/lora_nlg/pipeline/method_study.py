"""The method study: every adapter method through the same runs (``scripts/method_study.sh``).

    python -m lora_nlg.pipeline.method_study flags METHOD OUT_DIR STEPS LR_SCALE   gpt2_ft.py's flags
    python -m lora_nlg.pipeline.method_study measure USAGE.json -- COMMAND...
    python -m lora_nlg.pipeline.method_study report OUT_DIR REFERENCES METHOD...

``METHODS`` is the study's one table: each method's label and the flags that differ from LoRA's
run (the learning rate of each comes from a short probe on the same backbone and data,
docs/method_study.md). ``measure`` runs a command and records its wall time and the peak resident
memory of its process (the kernel's ``ru_maxrss``: backbone, activations, optimizer state and
all). ``report`` reads each run's folder: the tensors it trained, ms per optimizer step (the median
of the training log's records), the last validation loss, and the dev BLEU of its decoding (as
``model_selection`` scores it); it writes ``results.json``, ``results.md`` and ``method_study.png``.
"""

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Tuple

import torch

from lora_nlg.atomic import atomic_write
from lora_nlg.cli import run_program
from lora_nlg.errors import InputError
from lora_nlg.jsonl import json_records
from lora_nlg.metrics.references import read_references
from lora_nlg.pipeline.model_selection import bleu_0_100, dev_bleu
from lora_nlg.weights import layout


def adalora(steps: int) -> dict:
    """AdaLoRA as PEFT runs it: ranks 8 -> a budget of 4 per module, pruned from steps/10 to steps*4/5,
    alpha 32 as LoRA's (PEFT scales its update by alpha / rank)."""
    schedule = {"tinit": steps // 10, "tfinal": steps // 5, "deltaT": max(1, steps // 40)}
    return {
        "peft_type": "ADALORA",
        "target_modules": ["c_attn"],
        "init_r": 8,
        "target_r": 4,
        "lora_alpha": 32,
        **schedule,
    }


def loha(steps: int) -> dict:
    return {"peft_type": "LOHA", "target_modules": ["c_attn"], "r": 4, "alpha": 32}


# name -> (label, learning rate, gpt2_ft.py flags after LoRA's run's); {out} is the study's folder. The
# learning rates: the best validation loss of a probe (docs/method_study.md).
# FourierFT's scaling is the paper's 300 for 1024 x 1024 matrices times (128 / 1024)^2: the same
# update per coefficient on gpt2.tiny's 128 x 128 ones (the inverse FFT divides by their size).
METHODS: Dict[str, Tuple[str, float, List[str]]] = {
    "lora": ("LoRA r=4 (q, v)", 0.008, []),
    "loraplus": ("LoRA+ r=4, B at 16x lr (q, v)", 0.002, ["--loraplus_lr_ratio", "16"]),
    "dora": ("DoRA r=4 (q, v)", 0.004, ["--method", "dora"]),
    "vera": ("VeRA r=1024 (q, v)", 0.1, ["--method", "vera", "--vera_r", "1024"]),
    "fourierft": (
        "FourierFT n=1000 (q, v)",
        0.64,
        ["--method", "fourierft", "--fourierft_n", "1000", "--fourierft_scaling", "4.6875", "--lora_dropout", "0"],
    ),
    "adalora": ("AdaLoRA r 8->4 (c_attn, PEFT)", 0.016, ["--method", "peft", "--peft_config", "{out}/adalora.json"]),
    "loha": ("LoHa r=4 (c_attn, PEFT)", 0.016, ["--method", "peft", "--peft_config", "{out}/loha.json"]),
}
PEFT_CONFIGS = {"adalora": adalora, "loha": loha}


def flags(method: str, out_dir: str, steps: int, lr_scale: float = 1.0) -> List[str]:
    """The method's flags for a run of ``steps`` at ``lr_scale`` times its learning rate; a PEFT
    method's config is written into ``out_dir`` first."""
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; the study's methods: {', '.join(METHODS)}")
    if method in PEFT_CONFIGS:
        os.makedirs(out_dir, exist_ok=True)
        with atomic_write(os.path.join(out_dir, f"{method}.json")) as f:
            json.dump(PEFT_CONFIGS[method](steps), f, indent=1)
    _, lr, extra = METHODS[method]
    return ["--lr", f"{lr * lr_scale:g}", *(a.format(out=out_dir) for a in extra)]


def measure(usage_path: str, command: List[str]) -> int:
    """Run ``command``; write its exit status, wall seconds and peak memory (MiB) to ``usage_path``."""
    start = time.perf_counter()
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    record = {"returncode": process.returncode, "seconds": time.perf_counter() - start}
    record["peak_rss_mib"] = usage.ru_maxrss / 1024  # KiB on Linux
    with atomic_write(usage_path) as f:
        json.dump(record, f)
    return process.returncode


def trained_tensors(checkpoint: str) -> int:
    """How many numbers the run trained: the adapter file's tensors, or a PEFT run's trained tensors."""
    if os.path.isdir(os.path.join(checkpoint, layout.PEFT_FOLDER)):
        state = torch.load(os.path.join(checkpoint, "trainer_state.pt"), map_location="cpu", weights_only=True)
        return sum(t.numel() for t in state["adapter_tensors"].values())
    from lora_nlg.weights.adapter import load_adapter

    return sum(t.numel() for t in load_adapter(checkpoint)[0].values())


def _config(work: str) -> dict:
    import yaml

    with open(os.path.join(work, "config.yaml"), encoding="utf-8") as f:
        return yaml.safe_load(f)


def run_row(out_dir: str, method: str, refs, references: str) -> dict:
    work = os.path.join(out_dir, method)
    records = [r for _, r in json_records(os.path.join(work, "log.jsonl"))]
    train = [r["ms_per_step"] for r in records if r.get("kind") == "train"]
    valid = [r["loss"] for r in records if r.get("kind") == "valid"]
    if not train or not valid:
        raise InputError(f"{work}/log.jsonl: no training or no validation records (did the run finish?)")
    with open(os.path.join(work, "usage.json"), encoding="utf-8") as f:
        usage = json.load(f)
    decoded = os.path.join(work, "dev.jsonl")
    score, warning = dev_bleu("e2e", decoded, refs, references) if os.path.exists(decoded) else (None, None)
    return {
        "method": method,
        "label": METHODS[method][0],
        "lr": _config(work)["lr"],
        "trainable": trained_tensors(layout.last_checkpoint(work)),
        "ms_per_step": statistics.median(train),
        "peak_rss_mib": usage["peak_rss_mib"],
        "valid_loss": valid[-1],
        "dev_bleu": None if score is None else bleu_0_100("e2e", score),
        "warning": warning,
    }


def table(rows: List[dict]) -> str:
    lora = next((r for r in rows if r["method"] == "lora"), rows[0])
    lines = [
        "| method | lr | trained parameters | ms/step (x LoRA) | peak memory MiB | valid loss | dev BLEU (0-100) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = r["ms_per_step"] / lora["ms_per_step"]
        bleu = "not decoded" if r["dev_bleu"] is None else f"{r['dev_bleu']:.2f}"
        lines.append(
            f"| {r['label']} | {r['lr']:g} | {r['trainable']:,} | {r['ms_per_step']:.1f} ({ratio:.2f}x) "
            f"| {r['peak_rss_mib']:.0f} | {r['valid_loss']:.4f} | {bleu}{' (' + r['warning'] + ')' if r['warning'] else ''} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: List[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    names = [r["method"] for r in rows]
    for ax, key, title in zip(
        axes,
        ("valid_loss", "dev_bleu", "trainable"),
        ("validation loss", "dev BLEU (0-100)", "trained parameters"),
        strict=True,
    ):
        ax.bar(names, [r[key] or 0.0 for r in rows], color="tab:blue")
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=45)
        if key == "trainable":
            ax.set_yscale("log")
        if key == "valid_loss":
            low = min(r[key] for r in rows)
            ax.set_ylim(low * 0.97, max(r[key] for r in rows) * 1.01)
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def report(out_dir: str, references: str, methods: List[str]) -> List[dict]:
    refs = read_references(references)
    rows = [run_row(out_dir, m, refs, references) for m in methods]
    with atomic_write(os.path.join(out_dir, "results.json")) as f:
        json.dump({"references": references, "rows": rows}, f, indent=1)
    with atomic_write(os.path.join(out_dir, "results.md")) as f:
        f.write(table(rows))
    plot(rows, os.path.join(out_dir, "method_study.png"))
    return rows


def _main(argv: List[str]) -> int:
    usage = (
        "flags METHOD OUT_DIR STEPS LR_SCALE | measure USAGE.json -- COMMAND... | report OUT_DIR REFERENCES METHOD..."
    )
    if argv[:1] == ["flags"] and len(argv) == 5 and argv[3].isdigit():
        print(" ".join(flags(argv[1], argv[2], int(argv[3]), float(argv[4]))))
        return 0
    if argv[:1] == ["measure"] and len(argv) > 3 and argv[2] == "--":
        return measure(argv[1], argv[3:])
    if argv[:1] == ["report"] and len(argv) > 3:
        print(table(report(argv[1], argv[2], argv[3:])), end="")
        return 0
    raise InputError(f"usage: {usage}")


def main(argv=None) -> int:
    return run_program("method_study", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
